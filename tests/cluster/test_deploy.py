"""Issue 6, test 1: `make deploy` against the loopback API server; the real KEDA operator takes the ScaledObject."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from clusterlib import K8S, ROOT, wait_for

NAMESPACE = "purchase"
# What `make deploy` applies (mk/deploy.mk): everything under k8s/ except the optional SASL/TLS objects.
DEPLOYED_FILES = sorted(
    [K8S / "namespace.yaml"]
    + [p for d in ("config", "mongodb", "kafka", "ingress", "knative") for p in (K8S / d).glob("*.yaml")]
    + list((K8S / "keda").glob("*.yaml"))
)


def manifest_objects() -> list[tuple[str, str, str | None]]:
    objects = []
    for path in DEPLOYED_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kind = f"{doc['kind'].lower()}.{doc['apiVersion'].split('/')[0]}" if "/" in doc["apiVersion"] \
                    else doc["kind"].lower()
                objects.append((kind, doc["metadata"]["name"], doc["metadata"].get("namespace")))
    return objects


@pytest.fixture(scope="module")
def deployed(kube):
    """Run the real `make deploy` once, with KUBECONFIG and KUBECTL naming the loopback cluster.

    DEPLOY_WAIT= skips deploy-infra's waits for the Kafka/MongoDB StatefulSets and the topic
    Job: their pods never run here (no kubelet), so those waits could only time out.
    """
    env = dict(os.environ, KUBECONFIG=str(kube.kubeconfig))
    argv = ["make", "--no-print-directory", "deploy", f"KUBECTL={kube.kubectl_path}", "DEPLOY_WAIT=",
            "WAIT_TIMEOUT=5s", f"PYTHON={sys.executable}"]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return result


def test_make_deploy_applies_every_object(deployed, kube):
    assert deployed.returncode == 0, f"make deploy failed:\n{deployed.stdout[-4000:]}\n{deployed.stderr[-4000:]}"
    objects = manifest_objects()
    kinds = {kind for kind, _, _ in objects}
    assert {"namespace", "configmap", "secret", "statefulset.apps", "job.batch", "service", "ingress.networking.k8s.io",
            "service.serving.knative.dev", "deployment.apps", "scaledobject.keda.sh"} <= kinds, kinds
    missing = [(kind, name, ns) for kind, name, ns in objects if kube.get(kind, name, ns) is None]
    assert not missing, f"applied by make deploy but not in the API server: {missing}"
    # The consumer starts at zero: KEDA, not the manifest, decides when it runs.
    assert kube.replicas(NAMESPACE) == 0


def test_knative_services_are_stored_with_the_real_crd(deployed, kube):
    assert deployed.returncode == 0
    for name in ("buy", "history"):
        ksvc = kube.get("service.serving.knative.dev", name, NAMESPACE)
        assert ksvc["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f"/{name}:dev")


def test_keda_takes_the_scaledobject_ready_and_creates_its_hpa(deployed, kube, servers):
    assert deployed.returncode == 0
    # The real operator reconciles the object as deployed: it writes status conditions.
    wait_for(lambda: kube.condition(kube.get("scaledobject.keda.sh", "persist-purchase", NAMESPACE), "Ready"),
             60, "KEDA status conditions on the deployed ScaledObject")
    # kafka.purchase.svc.cluster.local has no DNS here (no cluster networking): point the one
    # field at the session's local broker, as a cluster's DNS would, and KEDA must go Ready.
    kube.run("patch", "scaledobject.keda.sh", "persist-purchase", f"--namespace={NAMESPACE}", "--type=json", "-p",
             '[{"op": "replace", "path": "/spec/triggers/0/metadata/bootstrapServers", '
             f'"value": "{servers.kafka_bootstrap}"}}]')
    scaled = wait_for(
        lambda: (lambda so: so if kube.condition(so, "Ready") == "True" else None)(
            kube.get("scaledobject.keda.sh", "persist-purchase", NAMESPACE)), 90, "ScaledObject Ready=True")
    assert kube.condition(scaled, "Active") != "True"  # nothing waits in the topic (Unknown until the first poll)
    assert scaled["status"]["scaleTargetKind"] == "apps/v1.Deployment"
    hpa_name = scaled["status"]["hpaName"]
    hpa = wait_for(lambda: kube.get("horizontalpodautoscaler.autoscaling", hpa_name, NAMESPACE), 60, "KEDA's HPA")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "persist-purchase"}
    assert hpa["spec"]["minReplicas"] == 1 and hpa["spec"]["maxReplicas"] == scaled["spec"]["maxReplicaCount"]
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["External"]
    assert hpa["metadata"]["ownerReferences"][0]["kind"] == "ScaledObject"
    # What a person would look at: `kubectl get scaledobject` shows READY True.
    table = kube.run("get", "scaledobject", f"--namespace={NAMESPACE}").stdout
    header, row = table.splitlines()[:2]
    columns = dict(zip(header.split(), row.split()))
    assert columns["READY"] == "True", table
    assert kube.replicas(NAMESPACE) == 0
