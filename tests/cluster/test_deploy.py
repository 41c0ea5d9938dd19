"""`make deploy` on the real node: every object applied, every pod of the project running for
real on kubelet + containerd, the topic Job complete, and KEDA taking the ScaledObject."""
from __future__ import annotations

import requests
import yaml
from clusterlib import (
    CONSUMER,
    KAFKA_PODS,
    NAMESPACE,
    NODE_OVERLAY,
    POLL_S,
    pod_timeline,
    record_timeline,
    wait_until,
)

from cluster import knative, node
from tools import kustomize


def manifest_objects() -> list[tuple[str, str, str | None]]:
    """What `make deploy OVERLAY=node` applies: every object of the node overlay."""
    objects = []
    for doc in yaml.safe_load_all(kustomize.build(NODE_OVERLAY)):
        if doc:
            kind = f"{doc['kind'].lower()}.{doc['apiVersion'].split('/')[0]}" if "/" in doc["apiVersion"] \
                else doc["kind"].lower()
            objects.append((kind, doc["metadata"]["name"], doc["metadata"].get("namespace")))
    return objects


def test_the_node_is_ready_and_runs_on_the_bridge_address(kube):
    nodes = kube.run("get", "nodes", "-o", "json")
    import json
    items = json.loads(nodes.stdout)["items"]
    assert [n["metadata"]["name"] for n in items] == [node.NODE_NAME]
    addresses = {a["type"]: a["address"] for a in items[0]["status"]["addresses"]}
    assert addresses["InternalIP"] == node.NODE_IP
    assert kube.condition(items[0], "Ready") == "True"
    info = items[0]["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.37.2" and info["containerRuntimeVersion"].startswith("containerd://")


def test_make_deploy_applies_every_object(deployed, kube):
    missing = [(kind, name, ns) for kind, name, ns in manifest_objects() if kube.get(kind, name, ns) is None]
    assert not missing, f"applied by make deploy but not in the API server: {missing}"
    # The consumer starts at zero: KEDA, not the manifest, decides when it runs.
    assert kube.replicas() == 0


def test_three_kafka_pods_and_mongodb_run_as_real_pods_and_the_topic_job_completes(deployed, kube, capsys):
    timings = {}
    for name in (*KAFKA_PODS, "mongodb-0"):
        pod = kube.get("pod", name)
        assert pod["status"]["phase"] == "Running" and kube.condition(pod, "Ready") == "True", pod["status"]
        assert pod["spec"]["nodeName"] == node.NODE_NAME
        assert pod["status"]["podIP"].startswith(node.NODE_IP.rsplit(".", 1)[0] + ".")
        timings[name] = pod_timeline(pod)
    # The volumes are the node's: the claims are Bound.
    claims = kube.items("pvc")
    assert {c["metadata"]["name"] for c in claims} >= {*(f"data-{p}" for p in KAFKA_PODS), "data-mongodb-0"}
    assert all(c["status"]["phase"] == "Bound" for c in claims)
    job = kube.get("job.batch", "kafka-create-topics")
    assert kube.condition(job, "Complete") == "True", job["status"]
    log = kube.run("logs", f"--namespace={NAMESPACE}", "job/kafka-create-topics").stdout
    assert "topic purchases: 6 partitions wanted" in log, log
    # Replicated on the three brokers and checked by the Job itself (k8s/kafka/create-topics-job.yaml).
    for topic in ("purchases", "purchases.dlq"):
        assert f"topic {topic}: " in log and "replication factor 3, min.insync.replicas 2, all in sync" in log, log
    # node.id is each pod's ordinal (the downward API; the image's start script checks it).
    for index, name in enumerate(KAFKA_PODS):
        start = kube.run("logs", f"--namespace={NAMESPACE}", name).stdout
        assert f"kafka-start: {name} is node.id {index};" in start, start[:2000]
    record_timeline("infra-pods", timings)
    with capsys.disabled():
        print(f"\n[node] infra pods, seconds after creation: {timings}")


def test_functions_run_as_knative_revisions_non_root_with_a_read_only_root(stack, kube, capsys):
    timings = {}
    for function, revision in (("buy", stack.buy_revision), ("history", stack.history_revision)):
        pods = wait_until(lambda r=revision: [p for p in r.pods(kube) if kube.condition(p, "Ready") == "True"], 120,
                          POLL_S, f"a Ready pod of {revision.name}")
        pod = pods[0]
        name = pod["metadata"]["name"]
        # The function container plus Knative's queue-proxy, both ready (probes through queue-proxy).
        statuses = {s["name"]: s for s in pod["status"]["containerStatuses"]}
        assert set(statuses) == {function, "queue-proxy"}, statuses
        assert all(s["ready"] and s["restartCount"] == 0 for s in statuses.values()), statuses
        identity = kube.run("exec", f"--namespace={NAMESPACE}", name, "-c", function, "--", "id", "-u").stdout.strip()
        assert identity == "10001"
        write = kube.run("exec", f"--namespace={NAMESPACE}", name, "-c", function, "--", "sh", "-c", "touch /app/x",
                         check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr, write
        log = kube.run("logs", f"--namespace={NAMESPACE}", name, "-c", function).stdout
        assert "Control server error" not in log and "Read-only file system" not in log, log[-2000:]
        timings[revision.name] = pod_timeline(pod)
    record_timeline("function-pods", timings)
    with capsys.disabled():
        print(f"\n[node] Revision pods, seconds after creation: {timings}")


def test_keda_takes_the_scaledobject_ready_with_the_in_cluster_broker(stack, kube):
    scaled = stack.scaled_object()
    # The shipped bootstrap list (every broker by its headless name, resolved by CoreDNS): nothing patched.
    assert scaled["spec"]["triggers"][0]["metadata"]["bootstrapServers"] == ",".join(
        f"{name}.kafka-headless.purchase.svc.cluster.local:9092" for name in KAFKA_PODS)
    assert kube.condition(scaled, "Ready") == "True"
    assert scaled["status"]["scaleTargetKind"] == "apps/v1.Deployment"
    hpa = wait_until(lambda: kube.get("horizontalpodautoscaler.autoscaling", scaled["status"]["hpaName"]), 60,
                     POLL_S, "KEDA's HPA")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": CONSUMER}
    assert hpa["spec"]["minReplicas"] == 1 and hpa["spec"]["maxReplicas"] == scaled["spec"]["maxReplicaCount"]
    assert hpa["metadata"]["ownerReferences"][0]["kind"] == "ScaledObject"


def test_knative_services_are_ready_with_their_routes_served_by_the_ingress(stack, kube):
    for name in ("buy", "history"):
        ksvc = kube.get("service.serving.knative.dev", name)
        assert ksvc["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f"/{name}:dev")
        for condition in ("ConfigurationsReady", "RoutesReady", "Ready"):
            assert kube.condition(ksvc, condition) == "True", (name, condition, ksvc["status"])
        assert ksvc["status"]["url"] == f"http://{name}.{NAMESPACE}.svc.cluster.local"
        # Knative's KIngress, claimed and marked Ready by Traefik's knative provider, which names
        # its internal Service as the cluster-local load balancer (the Route's Service points there).
        kingress = kube.get("ingress.networking.internal.knative.dev", name)
        assert kingress["metadata"]["annotations"]["networking.knative.dev/ingress.class"] == knative.INGRESS_CLASS
        assert kube.condition(kingress, "Ready") == "True", kingress["status"]
        private = kingress["status"]["privateLoadBalancer"]["ingress"][0]["domainInternal"]
        assert private == "traefik-internal.traefik.svc.cluster.local"
        route_service = kube.get("service", name)
        assert route_service["spec"]["type"] == "ExternalName" and route_service["spec"]["externalName"] == private
        # The purchase.local Ingress, served by Traefik's kubernetesIngress provider (status: the node).
        ingress = kube.get("ingress.networking.k8s.io", name)
        assert ingress["spec"]["ingressClassName"] == "traefik"
        assert ingress["status"]["loadBalancer"]["ingress"] == [{"ip": node.NODE_IP}]


def test_the_readme_routes_answer_through_the_ingress(stack):
    """The README's curl lines, against the node's ingress: POST /api/buy, the user's history and
    the original system's two routes, all with Host: purchase.local."""
    user = "readme" + __import__("uuid").uuid4().hex[:8]
    ids = stack.buy(2, user=user)
    wait_until(lambda: sorted(stack.stored_ids(user)) == sorted(ids), 120, POLL_S, "2 purchases stored")
    front = stack.history_revision
    answers = {path: requests.get(f"{front.url}{path}", headers=front.headers, timeout=35)
               for path in (f"/api/user/{user}/purchases", f"/api/purchases?userId={user}",
                            f"/api/getAllUserBuys/{user}")}
    for path, response in answers.items():
        assert response.status_code == 200, (path, response.status_code, response.text)
        assert [p["id"] for p in response.json()] == ids[::-1], path
    # Prefix per path element, and only for the purchase.local host.
    assert requests.post(f"{front.url}/api/buyer", headers=front.headers, json={}, timeout=10).status_code == 404
    assert requests.get(f"{front.url}/api/user/{user}/purchases", headers={"Host": "other.local"},
                        timeout=10).status_code == 404


def test_a_purchase_goes_through_the_pods_end_to_end(stack, kube):
    """ingress -> buy Revision -> Kafka pod -> persist-purchase pods (KEDA) -> MongoDB pod -> ingress ->
    history Revision."""
    user = "e2e" + __import__("uuid").uuid4().hex[:8]
    ids = stack.buy(3, user=user)
    wait_until(lambda: sorted(stack.stored_ids(user)) == sorted(ids), 120, POLL_S, "3 purchases stored")
    answered = stack.history(user)
    assert sorted(p["id"] for p in answered) == sorted(ids)
    assert [p["price"] for p in answered] == [3, 2, 1]  # newest first
