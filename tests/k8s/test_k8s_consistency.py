"""The objects each overlay renders (the `docs` fixture, once per h.VARIANTS entry) agree with
each other, with the code (lib/purchase_common/config.py, batch_consumer.py,
devstack/gateway/routes.json) and with what `make build-*` produces."""
from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import k8s_helpers as h
import pytest
import yaml
from http_cases import ROUTED_PATHS
from purchase_common import config

from devstack import gateway, servers

# Every trigger metadata key KEDA's kafka scaler reads (kedacore/keda v2.20,
# pkg/scalers/kafka_scaler.go: parseKafkaMetadata, parseKafkaAuthParams, parseTLS,
# parseSaslOAuthParams, parseSaslOAuthAWSMSKIAMParams). A key outside this list is ignored
# by KEDA without a word, so a typo would silently change scaling.
KEDA_KAFKA_METADATA_KEYS = {
    "bootstrapServers", "bootstrapServersFromEnv", "consumerGroup", "consumerGroupFromEnv",
    "topic", "topicFromEnv", "partitionLimitation", "offsetResetPolicy", "lagThreshold",
    "activationLagThreshold", "allowIdleConsumers", "excludePersistentLag",
    "scaleToZeroOnInvalidOffset", "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions",
    "version", "tls", "unsafeSsl", "sasl", "saslTokenProvider", "awsRegion",
}

# Per-revision annotations Knative Serving's autoscaler reads (knative.dev docs,
# serving/autoscaling); anything else under autoscaling.knative.dev/ is a typo.
KNATIVE_AUTOSCALING_ANNOTATIONS = {
    "class", "metric", "target", "target-utilization-percentage", "min-scale", "max-scale",
    "initial-scale", "scale-down-delay", "window", "panic-window-percentage",
    "panic-threshold-percentage", "activation-scale", "scale-to-zero-pod-retention-period",
    "target-burst-capacity", "metric-aggregation-algorithm",
}

CLUSTER_DOMAIN = "svc.cluster.local"


def configmap(docs) -> dict:
    return h.find(docs, "ConfigMap", "purchase-config").obj["data"]


def scaledobject(docs) -> dict:
    return h.find(docs, "ScaledObject", "persist-purchase").obj


def kafka_trigger(docs) -> dict:
    triggers = scaledobject(docs)["spec"]["triggers"]
    assert len(triggers) == 1 and triggers[0]["type"] == "kafka", triggers
    return triggers[0]["metadata"]


def topic_job_env(docs) -> dict:
    job = h.find(docs, "Job", "kafka-create-topics")
    (container,) = h.containers(job)
    return {e["name"]: e["value"] for e in container["env"]}


def kafka_set(docs) -> dict:
    return h.find(docs, "StatefulSet", "kafka").obj


def broker_env(docs) -> dict:
    """The broker's env: plain values as strings, downward-API ones as their valueFrom."""
    (container,) = h.containers(h.find(docs, "StatefulSet", "kafka"))
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def broker_names(docs) -> list[str]:
    """Each Kafka pod's stable DNS name under the headless Service, by ordinal."""
    sts = kafka_set(docs)
    return [f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}.{h.NAMESPACE}.{CLUSTER_DOMAIN}"
            for i in range(sts["spec"]["replicas"])]


def bootstrap_list(docs) -> str:
    (container,) = h.containers(h.find(docs, "StatefulSet", "kafka"))
    client = next(p["containerPort"] for p in container["ports"] if p["name"] == "client")
    return ",".join(f"{name}:{client}" for name in broker_names(docs))


def service_for_host(docs, host: str, port: int) -> h.Doc:
    """The Service a cluster DNS name <svc>.<ns>.svc.cluster.local:<port> reaches."""
    assert host.endswith(f".{CLUSTER_DOMAIN}"), host
    name, namespace = host[: -len(CLUSTER_DOMAIN) - 1].split(".")[-2:]
    assert namespace == h.NAMESPACE, host
    svc = h.find(docs, "Service", name, group="")
    assert port in [p["port"] for p in svc.obj["spec"]["ports"]], f"{svc} has no port {port}"
    return svc


def consumer_calls() -> tuple[ast.Call, ast.Call]:
    """The consumer's KafkaConsumer(...) and its subscribe(...), each made in one place."""
    tree = ast.parse((h.ROOT / "lib/purchase_common/purchase_common/batch_consumer.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    created = [n for n in calls if getattr(n.func, "id", None) == "KafkaConsumer"]
    subscribed = [n for n in calls if getattr(n.func, "attr", None) == "subscribe"]
    assert len(created) == 1, "the consumer should create its KafkaConsumer in one place"
    assert len(subscribed) == 1, "the consumer should subscribe in one place"
    return created[0], subscribed[0]


# --- config.py, consumer.py, ConfigMap, ScaledObject, topic Job --------------------------

def test_configmap_matches_config_constants(docs):
    data = configmap(docs)
    assert data["PURCHASES_TOPIC"] == config.PURCHASES_TOPIC
    assert data["DEAD_LETTER_TOPIC"] == config.DEAD_LETTER_TOPIC
    assert data["CONSUMER_GROUP"] == config.CONSUMER_GROUP
    assert data["MONGODB_DATABASE"] == config.DATABASE_NAME
    assert data["KAFKA_BOOTSTRAP_SERVERS"] == bootstrap_list(docs)


def test_consumer_code_uses_the_config_constants():
    created, subscribed = consumer_calls()
    keywords = {k.arg: ast.unparse(k.value) for k in created.keywords if k.arg}
    assert keywords["group_id"] == "settings.consumer_group"
    assert keywords["auto_offset_reset"] == "config.AUTO_OFFSET_RESET"
    assert ast.unparse(subscribed.args[0]) == "[settings.purchases_topic]"


def test_scaledobject_matches_consumer_and_config(docs):
    meta = kafka_trigger(docs)
    assert meta["consumerGroup"] == config.CONSUMER_GROUP == configmap(docs)["CONSUMER_GROUP"]
    assert meta["topic"] == config.PURCHASES_TOPIC == configmap(docs)["PURCHASES_TOPIC"]
    assert meta["offsetResetPolicy"] == config.AUTO_OFFSET_RESET == "earliest"
    assert meta["bootstrapServers"] == configmap(docs)["KAFKA_BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) > 0
    assert int(meta["activationLagThreshold"]) == 0, "a single waiting purchase must wake the consumer"
    assert meta.get("allowIdleConsumers", "false") == "false"
    assert meta.get("scaleToZeroOnInvalidOffset", "false") == "false", \
        "a new group (no committed offset) must still wake up"


def test_scaledobject_replicas_fit_the_topic(docs):
    spec = scaledobject(docs)["spec"]
    partitions = int(topic_job_env(docs)["PURCHASES_PARTITIONS"])
    assert partitions == config.TOPIC_PARTITIONS
    assert spec["minReplicaCount"] == 0
    assert 1 <= spec["maxReplicaCount"] <= partitions
    assert spec["pollingInterval"] > 0 and spec["cooldownPeriod"] > 0
    target = spec["scaleTargetRef"]
    deployment = h.find(docs, target.get("kind", "Deployment"), target["name"])
    assert deployment.obj["spec"]["replicas"] == 0


def test_kafka_trigger_metadata_keys_known(docs):
    unknown = set(kafka_trigger(docs)) - KEDA_KAFKA_METADATA_KEYS
    assert not unknown, f"KEDA's kafka scaler does not read {sorted(unknown)}"


def test_topic_job_creates_the_topics_the_code_uses(docs):
    env = topic_job_env(docs)
    assert env["PURCHASES_TOPIC"] == config.PURCHASES_TOPIC
    assert env["DEAD_LETTER_TOPIC"] == config.DEAD_LETTER_TOPIC
    assert int(env["DEAD_LETTER_PARTITIONS"]) >= 1
    assert env["BOOTSTRAP"] == configmap(docs)["KAFKA_BOOTSTRAP_SERVERS"]
    (container,) = h.containers(h.find(docs, "Job", "kafka-create-topics"))
    script = container["args"][0]
    assert 'ensure_topic "$PURCHASES_TOPIC" "$PURCHASES_PARTITIONS"' in script
    assert 'ensure_topic "$DEAD_LETTER_TOPIC" "$DEAD_LETTER_PARTITIONS"' in script
    assert '--partitions "$2"' in script and "--if-not-exists" in script and "--alter" in script
    # With auto-creation off, no client can create `purchases` with another partition count.
    kafka_env = {e["name"]: e.get("value") for e in h.containers(h.find(docs, "StatefulSet", "kafka"))[0]["env"]}
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


FAKE_KAFKA_TOPICS = r"""#!/usr/bin/env python3
# Stands in for kafka-topics.sh: topics live as files holding "partitions replication min-isr".
import os, sys
args, state = sys.argv[1:], os.environ["TOPICS_STATE"]
with open(os.path.join(state, "calls.log"), "a") as log:
    log.write(" ".join(args) + "\n")
topic = args[args.index("--topic") + 1]
path = os.path.join(state, topic)
if "--create" in args and not os.path.exists(path):
    isr = [a.split("=")[1] for a in args if a.startswith("min.insync.replicas=")][0]
    rf = args[args.index("--replication-factor") + 1]
    open(path, "w").write(f"{args[args.index('--partitions') + 1]} {rf} {isr}")
elif "--alter" in args:
    _, rf, isr = open(path).read().split()
    open(path, "w").write(f"{args[args.index('--partitions') + 1]} {rf} {isr}")
elif "--describe" in args:
    count, rf, isr = (int(x) for x in open(path).read().split())
    print(f"Topic: {topic}\tTopicId: x\tPartitionCount: {count}\tReplicationFactor: {rf}"
          f"\tConfigs: min.insync.replicas={isr}")
    replicas = ",".join(str(b) for b in range(rf))
    for i in range(count):
        print(f"\tTopic: {topic}\tPartition: {i}\tLeader: 0\tReplicas: {replicas}\tIsr: {replicas}"
              "\tElr: \tLastKnownElr: ")
"""

# Stands in for kafka-broker-api-versions.sh: one block per registered broker, as the tool prints.
FAKE_BROKER_API_VERSIONS = r"""#!/bin/sh
i=0
while [ "$i" -lt "${FAKE_BROKERS:-3}" ]; do
  echo "kafka-$i.kafka-headless.purchase.svc.cluster.local:9092 (id: $i rack: null isFenced: false) -> ("
  i=$((i + 1))
done
"""


def run_topic_job(docs, tmp_path, existing: dict[str, str]) -> tuple[subprocess.CompletedProcess, Path]:
    (container,) = h.containers(h.find(docs, "Job", "kafka-create-topics"))
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "kafka-topics.sh").write_text(FAKE_KAFKA_TOPICS)
    (bin_dir / "kafka-broker-api-versions.sh").write_text(FAKE_BROKER_API_VERSIONS)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    for topic, described in existing.items():
        (state / topic).write_text(described)
    env = {"PATH": os.environ["PATH"], "KAFKA_BIN": str(bin_dir), "TOPICS_STATE": str(state), **topic_job_env(docs)}
    # The check's retries sleep: a broken topic stays broken here, so let sleep return at once.
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sleep").chmod(0o755)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = subprocess.run(container["command"] + container["args"], env=env, capture_output=True, text=True,
                            timeout=60)
    return result, state


@pytest.mark.parametrize("existing", [{}, {"purchases": "3 3 2"}], ids=["fresh", "grows-an-older-topic"])
def test_topic_job_script_creates_grows_and_checks_topics(docs, existing, tmp_path):
    env = topic_job_env(docs)
    result, state = run_topic_job(docs, tmp_path, existing)
    assert result.returncode == 0, result.stdout + result.stderr
    rf, isr = env["REPLICATION_FACTOR"], env["MIN_INSYNC_REPLICAS"]
    assert (state / config.PURCHASES_TOPIC).read_text() == f"{config.TOPIC_PARTITIONS} {rf} {isr}"
    assert (state / config.DEAD_LETTER_TOPIC).read_text() == f"1 {rf} {isr}"
    altered = [line for line in (state / "calls.log").read_text().splitlines() if "--alter" in line]
    assert len(altered) == (1 if existing else 0)
    for topic in (config.PURCHASES_TOPIC, config.DEAD_LETTER_TOPIC):
        assert f"topic {topic}: " in result.stdout and f"replication factor {rf}, min.insync.replicas {isr}, " \
            "all in sync" in result.stdout


@pytest.mark.parametrize("described", ["6 1 1", "6 3 1"], ids=["one-broker-topic", "min-isr-1"])
def test_topic_job_fails_on_a_topic_replicated_otherwise(docs, described, tmp_path):
    """A topic left from the one-broker deployment is not kept as it is: the Job fails, saying why."""
    result, _ = run_topic_job(docs, tmp_path, {config.PURCHASES_TOPIC: described})
    assert result.returncode != 0
    assert f"{config.PURCHASES_TOPIC}: not " in result.stdout, result.stdout


# --- Kafka as a cluster: pods, quorum, replication, disruption budget, clients' bootstrap list ---

def test_clients_bootstrap_from_every_broker_by_its_headless_name(docs):
    """The functions, KEDA and the topic Job are given the same list: every broker's own name."""
    expected = bootstrap_list(docs)
    assert configmap(docs)["KAFKA_BOOTSTRAP_SERVERS"] == expected
    assert kafka_trigger(docs)["bootstrapServers"] == expected
    assert topic_job_env(docs)["BOOTSTRAP"] == expected
    headless = h.find(docs, "Service", kafka_set(docs)["spec"]["serviceName"], group="")
    assert headless.obj["spec"]["clusterIP"] == "None"
    assert headless.obj["spec"]["publishNotReadyAddresses"] is True, "names resolve while the quorum forms"
    for server in expected.split(","):
        host, port = server.rsplit(":", 1)
        assert service_for_host(docs, host.split(".", 1)[1], int(port)) == headless


def test_kafka_quorum_is_one_voter_per_pod_and_node_id_is_the_ordinal(docs):
    sts, env = kafka_set(docs), broker_env(docs)
    (container,) = h.containers(h.find(docs, "StatefulSet", "kafka"))
    controller = next(p["containerPort"] for p in container["ports"] if p["name"] == "controller")
    voters = [v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")]
    assert [(int(i), hp) for i, hp in voters] == [(i, f"{name}:{controller}")
                                                  for i, name in enumerate(broker_names(docs))]
    assert env["KAFKA_NODE_ID"] == {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert sts["spec"]["replicas"] % 2 == 1, "an even quorum tolerates no more losses than one voter fewer"
    # A pod is Ready only with a quorum, so the pods must not wait for each other's readiness.
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    # No required anti-affinity: the one-node clusters (minikube, the node) must schedule them all.
    affinity = sts["spec"]["template"]["spec"]["affinity"]
    assert set(affinity) == {"podAntiAffinity"}
    assert set(affinity["podAntiAffinity"]) == {"preferredDuringSchedulingIgnoredDuringExecution"}
    (term,) = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]


def test_replication_min_isr_quorum_and_disruption_budget_agree(docs):
    """One broker may be away (deleted, restarted, drained) and nothing stops or is lost: the
    replication factor is the broker count, min ISR leaves room for exactly the brokers the
    quorum may lose, and the disruption budget allows no more than that at once."""
    sts, env, job = kafka_set(docs), broker_env(docs), topic_job_env(docs)
    brokers, rf, isr = sts["spec"]["replicas"], int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]), \
        int(env["KAFKA_MIN_INSYNC_REPLICAS"])
    assert rf == brokers == int(job["REPLICATION_FACTOR"])
    assert isr == int(job["MIN_INSYNC_REPLICAS"])
    quorum_may_lose = brokers - (brokers // 2 + 1)
    assert rf - isr == quorum_may_lose
    if brokers >= 3:
        assert 2 <= isr < rf, "an acks=all write must be on two disks, and one broker may be away"
    for internal in ("OFFSETS_TOPIC", "TRANSACTION_STATE_LOG", "SHARE_COORDINATOR_STATE_TOPIC"):
        assert int(env[f"KAFKA_{internal}_REPLICATION_FACTOR"]) == rf, internal
    for internal in ("TRANSACTION_STATE_LOG", "SHARE_COORDINATOR_STATE_TOPIC"):
        assert int(env[f"KAFKA_{internal}_MIN_ISR"]) == isr, internal
    assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
    pdb = h.find(docs, "PodDisruptionBudget", "kafka", group="policy").obj["spec"]
    assert pdb["selector"] == sts["spec"]["selector"]
    assert pdb == {"maxUnavailable": rf - isr, "selector": pdb["selector"]}


def test_kafka_fails_over_as_the_local_stack_does(docs):
    """The brokers on Kubernetes fence a dead broker and replace a dead controller as fast as the
    local cluster the fault tests measure, so those figures describe what ships."""
    env = broker_env(docs)
    assert int(env["KAFKA_BROKER_SESSION_TIMEOUT_MS"]) == servers.BROKER_SESSION_TIMEOUT_MS
    assert int(env["KAFKA_BROKER_HEARTBEAT_INTERVAL_MS"]) == servers.BROKER_HEARTBEAT_INTERVAL_MS
    assert int(env["KAFKA_CONTROLLER_QUORUM_FETCH_TIMEOUT_MS"]) == servers.CONTROLLER_QUORUM_FETCH_TIMEOUT_MS
    assert int(env["KAFKA_CONTROLLER_QUORUM_ELECTION_TIMEOUT_MS"]) == servers.CONTROLLER_QUORUM_ELECTION_TIMEOUT_MS
    assert servers.BROKER_HEARTBEAT_INTERVAL_MS * 3 <= servers.BROKER_SESSION_TIMEOUT_MS


def test_fewer_brokers_are_stated_in_the_k8s_readme(docs):
    """An overlay that runs fewer than three brokers says so, and what it gives up, in k8s/README.md."""
    brokers = kafka_set(docs)["spec"]["replicas"]
    overlay = docs[0].path.name
    if brokers < 3:
        readme = (h.K8S / "README.md").read_text()
        assert re.search(rf"`overlays/{re.escape(overlay)}/`[^\n]*{brokers} broker", readme), overlay


def test_kafka_ready_means_it_serves(docs):
    (container,) = h.containers(h.find(docs, "StatefulSet", "kafka"))
    readiness = container["readinessProbe"]
    assert "exec" in readiness, "an open port is not a broker that serves"
    script = readiness["exec"]["command"][-1]
    # A Metadata request (API key 3, v4) to the broker's own client port, and every partition
    # this node replicates checked for it in the ISR (tests/faults runs the script for real).
    assert "/dev/tcp/${PROBE_HOST:-127.0.0.1}/${PROBE_PORT:-9092}" in script
    assert r"\x00\x03\x00\x04" in script and "replica && !insync" in script
    # Liveness does not depend on the quorum: restarting a broker would not bring it back.
    assert "tcpSocket" in container["livenessProbe"]
    heap = re.search(r"-Xmx(\d+)m", broker_env(docs)["KAFKA_HEAP_OPTS"]).group(1)
    request = re.fullmatch(r"(\d+)Mi", container["resources"]["requests"]["memory"]).group(1)
    assert int(heap) < int(request), "the heap fits in the memory requested, with room beside it"


def test_kafka_advertises_its_headless_name(docs):
    sts = kafka_set(docs)
    env = broker_env(docs)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    listener = urlsplit(env["KAFKA_ADVERTISED_LISTENERS"].replace("PLAINTEXT://", "tcp://"))
    assert listener.hostname == f"$(pod_name).{sts['spec']['serviceName']}.{h.NAMESPACE}.{CLUSTER_DOMAIN}"
    (container,) = h.containers(h.find(docs, "StatefulSet", "kafka"))
    names = [e["name"] for e in container["env"]]
    assert names.index("POD_NAME") < names.index("KAFKA_ADVERTISED_LISTENERS"), \
        "$(POD_NAME) expands only if defined before"
    headless = h.find(docs, "Service", sts["spec"]["serviceName"], group="")
    assert listener.port in [p["port"] for p in headless.obj["spec"]["ports"]]
    assert sts["spec"]["template"]["spec"]["enableServiceLinks"] is False, \
        "the image would turn KAFKA_* service-link variables into broker settings"


def test_mongodb_admin_uri_matches_the_root_credentials_and_service(docs):
    secret = h.find(docs, "Secret", "mongodb-credentials").obj["stringData"]
    assert "MONGODB_URI" not in secret, "the root login must not look like the functions' setting"
    uri = urlsplit(secret["MONGODB_ADMIN_URI"])
    assert uri.scheme == "mongodb"
    assert uri.username == secret["MONGO_INITDB_ROOT_USERNAME"]
    assert uri.password == secret["MONGO_INITDB_ROOT_PASSWORD"]
    assert "authSource=admin" in uri.query, "the root user lives in the admin database"
    assert service_for_host(docs, uri.hostname, uri.port).name == "mongodb"


def test_the_app_uri_is_the_app_user_of_the_purchases_database(docs):
    secret = h.find(docs, "Secret", "mongodb-app-credentials").obj["stringData"]
    uri = urlsplit(secret["MONGODB_URI"])
    assert (uri.scheme, uri.username, uri.password) == \
        ("mongodb", secret["MONGODB_APP_USERNAME"], secret["MONGODB_APP_PASSWORD"])
    assert uri.path == f"/{config.DATABASE_NAME}"
    assert f"authSource={config.DATABASE_NAME}" in uri.query, "app_user creates the user in the purchases database"
    assert service_for_host(docs, uri.hostname, uri.port).name == "mongodb"
    root = h.find(docs, "Secret", "mongodb-credentials").obj["stringData"]
    assert secret["MONGODB_APP_PASSWORD"] != root["MONGO_INITDB_ROOT_PASSWORD"]


def _secret_refs(container: dict) -> set[tuple[str, str]]:
    refs = {(e["valueFrom"]["secretKeyRef"]["name"], e["name"]) for e in container.get("env", []) or []
            if "secretKeyRef" in (e.get("valueFrom") or {})}
    refs |= {(src["secretRef"]["name"], "*") for src in container.get("envFrom", []) or [] if "secretRef" in src}
    return refs


def test_only_mongodb_and_the_app_user_job_see_the_root_login(docs):
    readers = {d.name for d in docs for c in h.containers(d)
               if any(name == "mongodb-credentials" for name, _ in _secret_refs(c))}
    assert readers == {"mongodb", "mongodb-app-user"}
    job = h.find(docs, "Job", "mongodb-app-user")
    (container,) = h.containers(job)
    assert container["command"] == ["python", "-m", "purchase_common.app_user"]
    assert _secret_refs(container) == {("mongodb-credentials", "MONGODB_ADMIN_URI"),
                                       ("mongodb-app-credentials", "MONGODB_APP_USERNAME"),
                                       ("mongodb-app-credentials", "MONGODB_APP_PASSWORD")}
    consumer = h.find(docs, "Deployment", "persist-purchase")
    assert container["image"] == h.containers(consumer)[0]["image"], "the Job runs the consumer's image"


# --- NetworkPolicies ----------------------------------------------------------------------

def _policies(docs) -> dict[str, dict]:
    return {d.name: d.obj for d in docs if d.kind == "NetworkPolicy"}


def _matches(selector: dict, labels: dict) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        present, value = expr["key"] in labels, labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and present and value in expr["values"]:
            return False
        if expr["operator"] == "Exists" and not present:
            return False
        if expr["operator"] == "DoesNotExist" and present:
            return False
    return True


def _workloads(docs) -> dict[str, dict]:
    """Pod-making objects of the namespace by name -> their pod template's labels."""
    return {d.name: h.pod_template(d)["metadata"]["labels"] for d in docs if h.pod_template(d)}


def _allowed_from(policy: dict, docs) -> set[str]:
    names = set()
    for rule in policy["spec"].get("ingress") or []:
        for peer in rule.get("from") or []:
            if "podSelector" in peer and "namespaceSelector" not in peer:
                names |= {n for n, labels in _workloads(docs).items() if _matches(peer["podSelector"], labels)}
            elif "namespaceSelector" in peer:
                names.add("namespace:" + peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
    return names


def _selected(policy: dict, docs) -> set[str]:
    return {n for n, labels in _workloads(docs).items() if _matches(policy["spec"]["podSelector"], labels)}


def test_the_namespace_denies_ingress_by_default(docs):
    policy = _policies(docs)["default-deny-ingress"]
    assert policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_only_the_functions_kafka_needs_reach_kafka(docs):
    policy = _policies(docs)["kafka-clients-only"]
    assert _selected(policy, docs) == {"kafka"}
    # Exactly the pods that are given the bootstrap address (buy, the consumer, the topic Job),
    # the brokers themselves and KEDA's operator, which reads the group's lag.
    talkers = {d.name for d in docs for c in h.containers(d)
               if any(e.get("name") in ("BOOTSTRAP", "KAFKA_BOOTSTRAP_SERVERS") for e in c.get("env", []) or [])
               or any((src.get("configMapRef") or {}).get("name") == "purchase-config"
                      for src in c.get("envFrom", []) or [])}
    talkers -= {"history"}  # history gets the shared ConfigMap but never opens a Kafka client
    assert _allowed_from(policy, docs) == talkers | {"kafka", "namespace:keda"}
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    named = {p["name"] for c in h.containers(h.find(docs, "StatefulSet", "kafka")) for p in c["ports"]}
    assert ports <= named, "a named port the broker does not declare matches nothing"


def test_only_the_database_users_reach_mongodb(docs):
    policy = _policies(docs)["mongodb-clients-only"]
    assert _selected(policy, docs) == {"mongodb"}
    users = {d.name for d in docs for c in h.containers(d) if any(
        ref[0] in ("mongodb-app-credentials", "mongodb-credentials") for ref in _secret_refs(c))} - {"mongodb"}
    assert users == {"history", "persist-purchase", "mongodb-app-user"}
    assert _allowed_from(policy, docs) == users
    named = {p["name"] for c in h.containers(h.find(docs, "StatefulSet", "mongodb")) for p in c["ports"]}
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} <= named


@pytest.mark.parametrize("function", ["buy", "history"])
def test_buy_and_history_take_traffic_only_from_knative(docs, function):
    policy = _policies(docs)[f"{function}-from-knative"]
    assert _selected(policy, docs) == {function}
    ingress = h.ingress_layer(docs[0].path.name)
    assert _allowed_from(policy, docs) == {"namespace:knative-serving", f"namespace:{ingress.namespace}"}


def test_the_consumer_takes_no_traffic(docs):
    policy = _policies(docs)["persist-purchase-no-ingress"]
    assert _selected(policy, docs) == {"persist-purchase"}
    assert policy["spec"]["policyTypes"] == ["Ingress"] and not policy["spec"].get("ingress")


# --- images ---------------------------------------------------------------------------

# The registry and tag an overlay names the function images with, where not the defaults.
OVERLAY_IMAGES = {"registry-example": ("REGISTRY=ghcr.io/example/purchase", "TAG=1.0.0")}


def test_images_match_make_build(docs):
    overlay = docs[0].path.name.partition("+")[0]
    built = h.make_image_names(*OVERLAY_IMAGES.get(overlay, ()))
    assert set(built) == {folder for folder, _, _ in h.FUNCTIONS.values()}
    for function, (folder, image_name, owned) in h.FUNCTIONS.items():
        assert built[folder].rsplit("/", 1)[-1].split(":")[0] == image_name
        workloads = [h.find(docs, kind, name, group) for kind, group, name in owned if kind != "Ingress"]
        workloads = [d for d in workloads if h.pod_template(d)]
        assert workloads, function
        for doc in workloads:
            images = [c["image"] for c in h.containers(doc)]
            assert images == [built[folder]], f"{doc} runs {images}, `make build` makes {built[folder]}"


def test_function_images_come_from_local_names_knative_does_not_resolve():
    # Knative resolves image tags to digests through the registry, except for registries in
    # config-deployment's registries-skipping-tag-resolving (default kind.local,ko.local,dev.local).
    for image in h.make_image_names().values():
        assert image.startswith("dev.local/"), image
        assert not image.endswith(":latest"), "a :latest tag makes Kubernetes always pull"


# --- ingress --------------------------------------------------------------------------

def upstream_host(doc: h.Doc, docs, ingress: h.IngressLayer) -> str:
    """The Host an Ingress sends on to the Knative layer: nginx's upstream-vhost, or the Host
    that the Traefik headers middleware it names sets (the node overlay's traefik-dynamic)."""
    annotations = doc.obj["metadata"].get("annotations", {})
    if ingress.ingress_class == "nginx":
        return annotations["nginx.ingress.kubernetes.io/upstream-vhost"]
    assert not any(key.startswith("nginx.") for key in annotations), f"{doc}: an nginx annotation Traefik ignores"
    middleware = annotations["traefik.ingress.kubernetes.io/router.middlewares"]
    config = yaml.safe_load(h.find(docs, "ConfigMap", "traefik-dynamic", group="").obj["data"]["middlewares.yaml"])
    headers = config["http"]["middlewares"][middleware.removesuffix("@file")]["headers"]
    return headers["customRequestHeaders"]["Host"]


def ingress_routes(docs) -> dict[str, str]:
    """path prefix -> Knative Service name, from the Ingress objects for purchase.local."""
    routes = {}
    ingress = h.ingress_layer(docs[0].path.name)
    for doc in (d for d in docs if d.kind == "Ingress"):
        annotations = doc.obj["metadata"].get("annotations", {})
        assert not any("rewrite-target" in key for key in annotations), \
            f"{doc}: rewrite-target would strip the paths the functions route on"
        vhost = upstream_host(doc, docs, ingress)
        backend_name = vhost.removesuffix(f".{h.NAMESPACE}.{CLUSTER_DOMAIN}")
        assert h.find(docs, "Service", backend_name, group="serving.knative.dev")
        assert doc.obj["spec"]["ingressClassName"] == ingress.ingress_class
        for rule in doc.obj["spec"]["rules"]:
            assert rule["host"] == "purchase.local"
            for path in rule["http"]["paths"]:
                assert path["pathType"] == "Prefix"
                assert path["path"] not in routes, f"{path['path']} routed twice"
                routes[path["path"]] = backend_name
                backend = path["backend"]["service"]
                gateway_svc = h.find(docs, "Service", backend["name"], group="").obj
                assert gateway_svc["spec"]["type"] == "ExternalName"
                assert gateway_svc["spec"]["externalName"] == ingress.gateway
                ports = gateway_svc["spec"]["ports"]
                assert backend["port"]["number"] in [p["port"] for p in ports]
                # ingress-nginx dials an ExternalName backend on its numeric targetPort.
                assert all(isinstance(p["targetPort"], int) for p in ports)
    return routes


def test_ingress_paths_are_exactly_the_gateway_routes(docs):
    assert ingress_routes(docs) == dict(gateway.ROUTES)


@pytest.mark.parametrize("target,backend", ROUTED_PATHS)
def test_ingress_prefix_matching_routes_each_path_as_the_local_gateway_does(docs, target, backend):
    """tests/integration/test_gateway.py sends the same paths through the local gateway (Envoy)."""
    routes = ingress_routes(docs)
    path = target.split("?")[0]
    # Kubernetes pathType Prefix matches whole path elements; the longest prefix wins.
    matches = [p for p in routes if path == p or path.startswith(p.rstrip("/") + "/")]
    by_ingress = routes[max(matches, key=len)] if matches else None
    assert by_ingress == backend


def test_ingress_hosts_are_cluster_local_knative_services(docs):
    for doc in (d for d in docs if d.kind == "Service" and d.group == "serving.knative.dev"):
        # The Ingress sends the cluster-local hostname, which kourier-internal serves for every
        # Knative Service; the label keeps the Service off Kourier's public gateway.
        assert doc.obj["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"


# --- selectors, references ------------------------------------------------------------

def workloads(docs) -> list[h.Doc]:
    return [d for d in docs if d.kind in ("Deployment", "StatefulSet")]


def test_workload_selectors_match_their_templates(docs):
    for doc in workloads(docs):
        selector = doc.obj["spec"]["selector"]["matchLabels"]
        labels = doc.obj["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), doc
    for doc in docs:
        template = h.pod_template(doc)
        if template:
            labels = template["metadata"]["labels"]
            assert labels.get("app.kubernetes.io/part-of") == h.PART_OF, doc
            assert labels.get("app.kubernetes.io/name") == doc.obj["metadata"]["labels"]["app.kubernetes.io/name"], doc
        for claim in doc.obj.get("spec", {}).get("volumeClaimTemplates", []):
            assert claim["metadata"]["labels"].get("app.kubernetes.io/part-of") == h.PART_OF, doc


def test_service_selectors_match_pods(docs):
    for svc in (d for d in docs if d.kind == "Service" and d.group == ""):
        spec = svc.obj["spec"]
        if spec.get("type") == "ExternalName":
            assert "selector" not in spec
            continue
        selector = spec["selector"]
        targets = [w for w in workloads(docs)
                   if selector.items() <= w.obj["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, f"{svc} selects {[str(t) for t in targets]}"
        ports = [p for c in h.containers(targets[0]) for p in c.get("ports", [])]
        for port in spec["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(target in (p.get("name"), p["containerPort"]) for p in ports), \
                f"{svc}: no container port {target}"


def test_statefulsets_have_headless_governing_services(docs):
    for doc in (d for d in workloads(docs) if d.kind == "StatefulSet"):
        headless = h.find(docs, "Service", doc.obj["spec"]["serviceName"], group="").obj
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["selector"].items() <= doc.obj["spec"]["template"]["metadata"]["labels"].items()


def test_config_and_secret_references_resolve(docs):
    objects = {(d.kind, d.name): d.obj for d in docs if d.kind in ("ConfigMap", "Secret")}

    def keys(kind, name):
        obj = objects.get((kind, name))
        return None if obj is None else set(obj.get("data", {})) | set(obj.get("stringData", {}))

    for doc in docs:
        for container in h.containers(doc):
            for source in container.get("envFrom", []):
                for ref_kind, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if ref_kind in source and not source[ref_kind].get("optional"):
                        assert keys(kind, source[ref_kind]["name"]) is not None, f"{doc}: no {kind}"
            for env in container.get("env", []):
                for ref_kind, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                    ref = env.get("valueFrom", {}).get(ref_kind)
                    if ref:
                        assert ref["key"] in (keys(kind, ref["name"]) or set()), f"{doc}: {ref} does not resolve"


def test_optional_kafka_auth_reads_keys_of_its_secret():
    secret = yaml.safe_load(h.KAFKA_CLIENT_SECRET.read_text())["stringData"]
    with_auth = h.rendered("minikube+kafka-auth")
    auth = h.find(with_auth, "TriggerAuthentication", "kafka-client-auth").obj
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == "purchase-kafka-client" and ref["key"] in secret
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} <= {"sasl", "username", "password", "tls", "ca",
                                                                          "cert", "key", "keyPassword"}
    # The functions read the same user: the keys config.Settings reads for kafka_client_options().
    client_keys = {"KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}
    assert client_keys <= set(secret)
    # The component points every trigger at it; off by default, no overlay references it.
    triggers = scaledobject(with_auth)["spec"]["triggers"]
    assert [t["authenticationRef"] for t in triggers] == [{"name": auth["metadata"]["name"]}]
    for overlay in h.OVERLAYS:
        assert all("authenticationRef" not in t for t in scaledobject(h.rendered(overlay))["spec"]["triggers"])


# --- containers: probes, ports, security --------------------------------------------------

def our_containers(docs):
    for function, (folder, _, owned) in h.FUNCTIONS.items():
        for kind, group, name in owned:
            doc = h.find(docs, kind, name, group)
            for container in h.containers(doc):
                yield function, folder, doc, container


def test_function_containers_are_locked_down(docs):
    for function, _, doc, container in our_containers(docs):
        ctx = container["securityContext"]
        pod_ctx = h.pod_template(doc)["spec"].get("securityContext", {})
        assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, doc
        assert ctx["allowPrivilegeEscalation"] is False, doc
        assert ctx["readOnlyRootFilesystem"] is True, doc
        assert ctx["capabilities"]["drop"] == ["ALL"], doc
        uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
        final_stage = h.function_image(function).final
        user = [i.args for i in final_stage if i.op == "USER"][-1]
        assert str(uid) == user.split(":")[0], f"{doc}: runAsUser {uid} but the image runs as {user}"
        # A read-only root needs a writable /tmp (gunicorn's worker heartbeat file).
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, doc
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], doc


def test_all_containers_drop_privileges(docs):
    for doc in docs:
        template = h.pod_template(doc)
        if not template:
            continue
        pod_ctx = template["spec"].get("securityContext", {})
        for container in template["spec"]["containers"]:
            ctx = container.get("securityContext", {})
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, doc
            assert ctx.get("allowPrivilegeEscalation") is False, doc
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], doc
            assert ctx.get("seccompProfile", pod_ctx.get("seccompProfile")) == {"type": "RuntimeDefault"}, doc
            assert container.get("resources", {}).get("limits", {}).get("memory"), f"{doc}: no memory limit"


def test_knative_services(docs):
    for function in ("buy", "history"):
        doc = h.find(docs, "Service", function, group="serving.knative.dev")
        spec = doc.obj["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        # Knative owns PORT (it sets 8080) and only allows probes on the serving port.
        assert "PORT" not in {e["name"] for e in container.get("env", [])}
        assert container["ports"] == [{"name": "http1", "containerPort": 8080}]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("readinessProbe", "livenessProbe"):
            assert "port" not in container[probe]["httpGet"], f"{doc}: Knative picks the probe port"
        # Pod-level securityContext is behind a Knative feature flag that is off by default.
        assert "securityContext" not in spec
        assert [s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s] == ["purchase-config"]
    # history (WSGI) serves one request per gunicorn thread; buy (ASGI) waits on Kafka without one.
    history = h.find(docs, "Service", "history", group="serving.knative.dev").obj["spec"]["template"]["spec"]
    assert int(history["containerConcurrency"]) == int(
        next(e["value"] for e in history["containers"][0]["env"] if e["name"] == "THREADS")), \
        "history's containerConcurrency is gunicorn's thread count: one request per thread"
    buy = h.find(docs, "Service", "buy", group="serving.knative.dev").obj["spec"]["template"]["spec"]
    assert "THREADS" not in {e["name"] for e in buy["containers"][0].get("env", [])}, "buy has no request threads"


# Rules of Knative's admission webhook that the CRD schema does not carry
# (knative/serving pkg/apis/serving/k8s_validation.go): checked here because no webhook runs.
KNATIVE_RESERVED_MOUNT_PATHS = {"/", "/dev", "/dev/log"}
KNATIVE_RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
KNATIVE_RESERVED_PORTS = {8012, 8013, 8022, 9090, 9091, 8008}  # queue-proxy, metrics, profiling


def test_knative_webhook_rules(docs):
    for function in ("buy", "history"):
        doc = h.find(docs, "Service", function, group="serving.knative.dev")
        spec = doc.obj["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["name"] != "queue-proxy"
        (port,) = container["ports"]
        assert port.get("name", "") in ("", "http1", "h2c") and port["containerPort"] not in KNATIVE_RESERVED_PORTS
        assert not KNATIVE_RESERVED_ENV & {e["name"] for e in container.get("env", [])}
        readiness = container["readinessProbe"]
        if not readiness.get("periodSeconds"):
            # periodSeconds 0 selects Knative's aggressive start-up probing, which takes no
            # timeoutSeconds or failureThreshold.
            assert "timeoutSeconds" not in readiness and "failureThreshold" not in readiness, doc
        for probe in (readiness, container["livenessProbe"]):
            handler = probe.get("httpGet") or probe.get("tcpSocket") or {}
            assert handler.get("port", port.get("name")) in (port.get("name"), port["containerPort"])
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = container.get("volumeMounts", [])
        assert {m["name"] for m in mounts} == set(volumes), "every volume mounted, every mount a volume"
        for mount in mounts:
            assert mount["mountPath"].startswith("/") and mount["mountPath"] not in KNATIVE_RESERVED_MOUNT_PATHS
            volume = volumes[mount["name"]]
            assert "emptyDir" in volume or mount.get("readOnly"), "only emptyDir/PVC mounts may be writable"
            assert volume.get("emptyDir", {}).get("medium", "") in ("", "Memory")


def test_knative_autoscaling_annotations(docs):
    for function in ("buy", "history"):
        doc = h.find(docs, "Service", function, group="serving.knative.dev")
        template = doc.obj["spec"]["template"]
        annotations = {k.split("/", 1)[1]: v for k, v in template["metadata"]["annotations"].items()
                       if k.startswith("autoscaling.knative.dev/")}
        assert not set(annotations) - KNATIVE_AUTOSCALING_ANNOTATIONS, f"{doc}: unknown annotation"
        assert all(isinstance(v, str) for v in annotations.values()), "annotation values are strings"
        assert annotations["class"] == "kpa.autoscaling.knative.dev", "only the KPA scales to zero"
        assert annotations["metric"] == "concurrency"
        assert int(annotations["min-scale"]) == 0, "scale to zero"
        assert 1 <= int(annotations["initial-scale"]) <= int(annotations["max-scale"]), \
            "initial-scale 0 needs allow-zero-initial-scale in the cluster config"
        target = float(annotations["target"]) * int(annotations["target-utilization-percentage"]) / 100
        assert 0 < target < int(template["spec"]["containerConcurrency"])
        for key in ("scale-down-delay", "window"):
            seconds = int(re.fullmatch(r"(\d+)s", annotations[key]).group(1))
            assert seconds <= 3600
        assert 6 <= int(annotations["window"][:-1])


def test_persist_purchase_deployment(docs):
    doc = h.find(docs, "Deployment", "persist-purchase")
    spec = doc.obj["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    (health,) = [p for p in container["ports"] if p["name"] == "health"]
    assert int(env["HEALTH_PORT"]) == health["containerPort"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    # The consumer finishes its batch and leaves the group on SIGTERM.
    assert spec["terminationGracePeriodSeconds"] >= 30
    assert "PURCHASES_TOPIC" not in env and "CONSUMER_GROUP" not in env, \
        "the group and topic come from the ConfigMap, the same values the ScaledObject names"


# --- every scaling value says why -------------------------------------------------------

def commented(path, keys):
    lines = path.read_text().splitlines()
    for key in keys:
        index = next((i for i, line in enumerate(lines) if re.match(rf"^\s*{re.escape(key)}:", line)), None)
        assert index is not None, f"{path.name}: no {key}"
        previous = next(line for line in reversed(lines[:index]) if line.strip())
        assert "#" in lines[index] or previous.strip().startswith("#"), f"{path.name}: {key} has no comment"


def test_scaling_values_are_commented():
    commented(h.K8S / "keda/persist-purchase-scaledobject.yaml",
              ["pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount", "bootstrapServers",
               "consumerGroup", "topic", "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
               "stabilizationWindowSeconds"])
    for function in ("buy", "history"):
        path = h.K8S / f"knative/{function}.yaml"
        keys = list(yaml.safe_load(path.read_text())["spec"]["template"]["metadata"]["annotations"])
        commented(path, keys + ["containerConcurrency", "timeoutSeconds"])
    # What the node overlay changes says why, too.
    commented(h.K8S / "overlays/node/scaledobject-timings.yaml", ["pollingInterval", "cooldownPeriod"])
