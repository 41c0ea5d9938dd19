"""Helpers of the node tests (importable by the test modules, unlike conftest.py).

Everything here talks to the real cluster: kubectl against the API server, HTTP through the
node's ingress (Traefik's NodePort on the node's bridge address), pymongo and kafka-python to the
in-cluster Services by their cluster DNS names (`make test-cluster` runs pytest with CoreDNS as its
resolver: `python -m cluster run`).
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml
from support import wait_until

from cluster import control, node
from cluster.observe import CONSUMER, NAMESPACE, Kube, Revision, parse_time, revision_ready
from devstack.servers import describe_partitions
from tools.common import ROOT

# What the node tests import from here as well (one place for the cluster's names).
__all__ = ["CONSUMER", "NAMESPACE", "ROOT", "Kube", "Revision", "revision_ready", "wait_until"]

NODE_OVERLAY = ROOT / "k8s" / "overlays" / "node"
# KEDA's timings as the node overlay deploys them (its scaledobject-timings.yaml says why).
_TIMINGS = yaml.safe_load((NODE_OVERLAY / "scaledobject-timings.yaml").read_text())["spec"]
POLLING_INTERVAL_S = _TIMINGS["pollingInterval"]
COOLDOWN_S = _TIMINGS["cooldownPeriod"]
# Slack on top of KEDA's own periods for a loaded 2-core machine (API round trips, pod start).
MARGIN_S = float(os.environ.get("CLUSTER_TEST_MARGIN", "10"))
HPA_SYNC_S = 15  # kube-controller-manager's --horizontal-pod-autoscaler-sync-period (cluster default)
RESULTS = ROOT / ".run" / "cluster" / "results"
POLL_S = 0.5  # how often a node test re-reads the cluster while it waits (each read is a kubectl call)


def load_manifest(path: Path) -> dict:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(documents) == 1, f"{path} should hold one object"
    return documents[0]


def pod_timeline(pod: dict) -> dict:
    """created -> scheduled -> container started -> ready, in seconds after creation."""
    created = parse_time(pod["metadata"]["creationTimestamp"])
    conditions = {c["type"]: parse_time(c.get("lastTransitionTime")) for c in pod["status"].get("conditions", [])}
    started = None
    for status in pod["status"].get("containerStatuses", []):
        started = parse_time(((status.get("state") or {}).get("running") or {}).get("startedAt")) or started

    def since(t):
        return None if t is None else round((t - created).total_seconds(), 1)
    return {"scheduled_s": since(conditions.get("PodScheduled")), "started_s": since(started),
            "ready_s": since(conditions.get("Ready") if pod["status"].get("phase") == "Running" else None)}


# The Kafka pods as the base deploys them (k8s/kafka/kafka-statefulset.yaml): node.id = ordinal.
_KAFKA_SET = load_manifest(ROOT / "k8s" / "kafka" / "kafka-statefulset.yaml")
KAFKA_PODS = tuple(f"{_KAFKA_SET['metadata']['name']}-{i}" for i in range(_KAFKA_SET["spec"]["replicas"]))


def partition_leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> node.id of its leader, from the cluster's metadata (-1: none elected)."""
    return {p["partition_index"]: p["leader_id"] for p in describe_partitions(bootstrap, [topic])[topic]}


def partition_of(user: str, partitions: int) -> int:
    """The partition buy writes a user's purchases to: Java's murmur2 of the key (buy's
    librdkafka runs `murmur2_random`, lib/purchase_common/purchase_common/producer.py)."""
    from kafka.partitioner.default import murmur2
    return (murmur2(user.encode()) & 0x7FFFFFFF) % partitions


@dataclass
class NodeStack:
    """The deployed system on the node: buy and history through the ingress, MongoDB and Kafka by
    their Service names, and KEDA's objects in the `purchase` namespace."""
    kube: Kube
    buy_revision: Revision
    history_revision: Revision
    mongodb_uri: str
    bootstrap: str
    names: dict = field(default_factory=dict)

    def buy(self, count: int, user: str | None = None, retry_s: float = 0.0) -> list[str]:
        """POST `count` purchases for one user, each with its own Idempotency-Key, so an answer
        that confirms nothing (503 from buy, 502/504 from the platform, no answer) retried
        for up to retry_s stays one purchase."""
        user = user or "u" + uuid.uuid4().hex[:10]
        with requests.Session() as session:
            return [post_purchase(session, self.buy_revision,
                                  {"username": f"node {index}", "userId": user, "price": 1 + index}, retry_s)[0]
                    for index in range(count)]

    def stored_ids(self, user: str) -> list[str]:
        """Event ids stored for one user, duplicates kept (the unique index should make none)."""
        from purchase_common import config, storage
        client = storage.connect(self.mongodb_uri)
        try:
            docs = client[config.DATABASE_NAME][config.COLLECTION_NAME].find({"userId": user}, {"eventId": 1})
            return [d["eventId"] for d in docs]
        finally:
            client.close()

    def history(self, user: str) -> list[dict]:
        response = requests.get(f"{self.history_revision.url}/api/user/{user}/purchases?limit=500", timeout=35,
                                headers=self.history_revision.headers)
        assert response.status_code == 200, response.text
        return response.json()

    def group_lag(self) -> int | None:
        """Total lag of the consumer group on the topic as Kafka reports it (None: never committed)."""
        from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
        from purchase_common import config
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            committed = admin.list_group_offsets({config.CONSUMER_GROUP: None}).get(config.CONSUMER_GROUP, {})
            parts = [TopicPartition(config.PURCHASES_TOPIC, p)
                     for p in consumer.partitions_for_topic(config.PURCHASES_TOPIC)]
            ends = consumer.end_offsets(parts)
            if not committed:
                return None
            return sum(ends[p] - (committed[p].offset if p in committed else 0) for p in parts)
        finally:
            consumer.close()
            admin.close()

    def scaled_object(self) -> dict | None:
        return self.kube.get("scaledobject.keda.sh", CONSUMER)

    def wait_idle_at_zero(self, timeout_s: float) -> None:
        """No lag, replicas 0 and no consumer pod left: the start state of every scaling test."""
        wait_until(lambda: self.kube.replicas() == 0 and not self.kube.consumer_pods(), timeout_s, POLL_S,
                   "persist-purchase idle at 0 replicas with no pod")


UNCONFIRMED = (502, 503, 504)  # nothing confirmed: retry with the same Idempotency-Key


def post_purchase(session: requests.Session, revision: Revision, body: dict, retry_s: float) -> tuple[str, int]:
    """One purchase under one Idempotency-Key: its event id and how many retries it took."""
    response, retries = accepted_purchase(session, revision, body, retry_s)
    return response.json()["id"], retries


def accepted_purchase(session: requests.Session, revision: Revision, body: dict,
                      retry_s: float) -> tuple[requests.Response, int]:
    """One purchase under one Idempotency-Key: buy's 202 answer and how many retries it took."""
    key, retries = uuid.uuid4().hex, 0
    deadline = time.monotonic() + retry_s
    while True:
        try:
            response = session.post(f"{revision.url}/api/buy", json=body, timeout=35,
                                    headers={"Idempotency-Key": key, **revision.headers})
        except requests.RequestException:
            if time.monotonic() >= deadline:
                raise
        else:
            if response.status_code not in UNCONFIRMED or time.monotonic() >= deadline:
                assert response.status_code == 202, (response.status_code, response.text)
                return response, retries
        retries += 1
        time.sleep(0.5)


def assert_exactly_once(stack, sent: dict, timeout_s: float = 180) -> int:
    """Every acknowledged purchase stored, each once (waiting up to timeout_s for the consumer)."""
    wait_until(lambda: all(sorted(stack.stored_ids(u)) == sorted(ids) for u, ids in sent.items()) or None, timeout_s,
               POLL_S, "every acknowledged purchase stored")
    stored = [i for u in sent for i in stack.stored_ids(u)]
    expected = [i for ids in sent.values() for i in ids]
    assert sorted(stored) == sorted(expected), "0 lost, 0 duplicated"
    return len(stored)


class SteadyBuyers:
    """One client per user, buying one purchase after another through the ingress until stopped;
    an answer that confirms nothing is retried under the same Idempotency-Key. Every answer is
    kept as (sent, answered, status) on one clock, for the 503s and the gap the fault makes."""

    def __init__(self, stack, users: list[str]):
        self.stack, self.users = stack, users
        self.sent: dict[str, list[str]] = {u: [] for u in users}
        self.answers: list[tuple[float, float, int]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._buy, args=(u,), daemon=True) for u in users]

    def _buy(self, user: str) -> None:
        revision = self.stack.buy_revision
        with requests.Session() as session:
            index = 0
            while not self.stop.is_set():
                key, body = uuid.uuid4().hex, {"username": f"steady {index}", "userId": user, "price": 1 + index}
                while True:  # until this purchase is confirmed, however long the fault lasts
                    sent = time.monotonic()
                    try:
                        response = session.post(f"{revision.url}/api/buy", json=body, timeout=35,
                                                headers={"Idempotency-Key": key, **revision.headers})
                        status = response.status_code
                    except requests.RequestException:
                        status = 0
                    with self.lock:
                        self.answers.append((sent, time.monotonic(), status))
                    if status == 202:
                        self.sent[user].append(response.json()["id"])
                        break
                    if status not in (*UNCONFIRMED, 0):
                        self.errors.append(f"{user}: {status} {response.text[:200]}")
                        return
                    time.sleep(0.2)
                index += 1

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(120)
        assert not any(t.is_alive() for t in self.threads), "purchase senders did not finish"

    def around(self, fault_at: float, over_at: float) -> dict:
        """What clients saw of a fault from fault_at until over_at (monotonic): the answers that
        confirmed nothing, the first 202 after it began, and the longest stretch without a 202."""
        after = sorted((answered, status) for _, answered, status in self.answers if answered >= fault_at)
        first_202 = next((answered for answered, status in after if status == 202), None)
        accepted = sorted(answered for _, answered, status in self.answers if status == 202)
        gaps = [b - a for a, b in zip(accepted, accepted[1:], strict=False) if b >= fault_at and a <= over_at]
        return {"answers_503": sum(1 for _, _, s in self.answers if s == 503),
                "answers_502_504": sum(1 for _, _, s in self.answers if s in (502, 504)),
                "no_answer": sum(1 for _, _, s in self.answers if s == 0),
                "fault_to_first_202_s": round(first_202 - fault_at, 2) if first_202 else None,
                "longest_gap_between_202s_s": round(max(gaps), 2) if gaps else None,
                "accepted_during_fault": sum(1 for a in accepted if fault_at <= a < over_at)}


def kill_container(pod: dict, signal_name: str = "SIGKILL") -> str:
    """Signal a pod's container through the node's runtime (containerd), as an OOM kill or a
    crash would: kubelet sees the exit and restarts it."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    node.Node(control.RUN).ctr("tasks", "kill", f"--signal={signal_name}", container_id)
    return container_id


def record_timeline(name: str, timeline: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(timeline, indent=2, default=str))
    return path
