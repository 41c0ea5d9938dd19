"""Helpers of the loopback-cluster tests (importable by the test modules, unlike conftest.py)."""
from __future__ import annotations

import json
import os
import sys
import uuid
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cluster import control  # noqa: E402
from cluster.kubelet_standin import StandIn  # noqa: E402
from support import wait_until  # noqa: E402

K8S = ROOT / "k8s"
DEPLOYMENT_FILE = K8S / "keda" / "persist-purchase-deployment.yaml"
SCALEDOBJECT_FILE = K8S / "keda" / "persist-purchase-scaledobject.yaml"
# KEDA resolves the scale target's container env (for *FromEnv trigger parameters), so the
# ConfigMap and Secret the Deployment names must exist or the ScaledObject is not Ready.
ENV_SOURCE_FILES = (K8S / "config" / "purchase-config.yaml", K8S / "mongodb" / "mongodb-secret.yaml")
# The test overlay: short enough for a test, long enough that KEDA's own loop is what is measured.
POLLING_INTERVAL_S = int(os.environ.get("CLUSTER_TEST_POLLING_INTERVAL", "3"))
COOLDOWN_S = int(os.environ.get("CLUSTER_TEST_COOLDOWN", "15"))
# Slack on top of KEDA's own periods for a loaded 2-core machine (API round trips, process start).
MARGIN_S = float(os.environ.get("CLUSTER_TEST_MARGIN", "5"))
RESULTS = ROOT / ".run" / "cluster" / "results"


class Kube:
    """kubectl against the loopback cluster, plus the few reads the tests repeat."""

    def __init__(self, state: dict):
        self.state = state
        self.kubeconfig = Path(state["kubeconfig"])
        self.kubectl_path = Path(state["kubectl"])

    def run(self, *args: str, input_text: str | None = None, check: bool = True, timeout_s: float = 120):
        return control.kubectl(*args, input_text=input_text, check=check, timeout_s=timeout_s,
                               kubeconfig=self.kubeconfig)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        args = ["get", kind, name, "-o", "json"] + ([f"--namespace={namespace}"] if namespace else [])
        result = self.run(*args, check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise RuntimeError(result.stderr)
        return json.loads(result.stdout)

    def apply(self, documents: list[dict]) -> str:
        text = yaml.safe_dump_all(documents, sort_keys=False)
        return self.run("apply", "-f", "-", input_text=text).stdout

    def condition(self, obj: dict | None, kind: str) -> str | None:
        for cond in (obj or {}).get("status", {}).get("conditions", []) or []:
            if cond.get("type") == kind:
                return cond.get("status")
        return None

    def replicas(self, namespace: str, name: str = "persist-purchase") -> int | None:
        obj = self.get("deployment", name, namespace)
        return None if obj is None else int(obj["spec"].get("replicas", 1))


def load_manifest(path: Path) -> dict:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(documents) == 1, f"{path} should hold one object"
    return documents[0]


def overlay(namespace: str, bootstrap: str, topic: str, group: str, polling_s: int = POLLING_INTERVAL_S,
            cooldown_s: int = COOLDOWN_S) -> list[dict]:
    """The real Deployment and ScaledObject (and the ConfigMap/Secret the Deployment's env names),
    moved to `namespace`, with test timings and local names.

    Changed: namespace; pollingInterval/cooldownPeriod; the trigger's bootstrapServers (the
    in-cluster DNS name does not resolve here), topic and consumerGroup (per-test isolation).
    Everything else - thresholds, offsetResetPolicy, min/max replicas, HPA behaviour - is as
    in k8s/keda/.
    """
    env_sources = [deepcopy(load_manifest(path)) for path in ENV_SOURCE_FILES]
    deployment = deepcopy(load_manifest(DEPLOYMENT_FILE))
    scaled = deepcopy(load_manifest(SCALEDOBJECT_FILE))
    for obj in (*env_sources, deployment, scaled):
        obj["metadata"]["namespace"] = namespace
    scaled["spec"]["pollingInterval"] = polling_s
    scaled["spec"]["cooldownPeriod"] = cooldown_s
    kafka = [t for t in scaled["spec"]["triggers"] if t["type"] == "kafka"]
    assert len(kafka) == 1, "the ScaledObject should have exactly one kafka trigger"
    kafka[0]["metadata"].update(bootstrapServers=bootstrap, topic=topic, consumerGroup=group)
    return [*env_sources, deployment, scaled]


@dataclass
class ScaledPipeline:
    """buy + history + gateway on local processes; persist-purchase only through KEDA and the stand-in."""
    kube: Kube
    namespace: str
    names: dict
    env: dict
    gateway: str
    standin: StandIn
    mongodb_uri: str
    log_dir: Path
    processes: list = field(default_factory=list)

    def scaled_object(self) -> dict | None:
        return self.kube.get("scaledobject", "persist-purchase", self.namespace)

    def buy(self, count: int, user: str | None = None) -> list[str]:
        user = user or "u" + uuid.uuid4().hex[:10]
        ids = []
        with requests.Session() as session:
            for index in range(count):
                response = session.post(f"{self.gateway}/api/buy", timeout=10, headers={"Host": "purchase.local"},
                                        json={"username": f"cluster {index}", "userId": user, "price": 1 + index})
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
        return ids

    def stored_event_ids(self) -> list[str]:
        from purchase_common import storage
        client = storage.connect(self.mongodb_uri)
        try:
            return [d["eventId"] for d in client[self.names["database"]]["purchases"].find({}, {"eventId": 1})]
        finally:
            client.close()

    def consumer_group_lag(self) -> int | None:
        """Total lag of the group on the topic, as Kafka reports it (None: no committed offsets)."""
        from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
        admin = KafkaAdminClient(bootstrap_servers=self.env["KAFKA_BOOTSTRAP_SERVERS"])
        consumer = KafkaConsumer(bootstrap_servers=self.env["KAFKA_BOOTSTRAP_SERVERS"], enable_auto_commit=False)
        try:
            committed = admin.list_group_offsets({self.names["group"]: None}).get(self.names["group"], {})
            parts = [TopicPartition(self.names["topic"], p) for p in consumer.partitions_for_topic(self.names["topic"])]
            ends = consumer.end_offsets(parts)
            if not committed:
                return None
            return sum(ends[p] - (committed[p].offset if p in committed else 0) for p in parts)
        finally:
            consumer.close()
            admin.close()


def record_timeline(name: str, timeline: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(timeline, indent=2))
    return path


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    return wait_until(predicate, timeout_s, interval_s, what)
