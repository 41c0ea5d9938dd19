"""Kafka as a cluster (issue 26): three KRaft nodes, RF 3, min ISR 2. Under steady load with
every purchase retried under its own Idempotency-Key (the soak's clients), a broker is SIGKILLed,
two are taken down, all three are restarted in turn; each test counts exactly what MongoDB holds
against what buy answered 202, asserts the invariants (nothing acknowledged lost, nothing stored
twice, no 202 without two replicas) and prints its figures (failover window, 503s)."""
from __future__ import annotations

import collections
import os
import subprocess
import time
import uuid
from dataclasses import dataclass

import pytest
import yaml
from kafka import KafkaProducer
from support import wait_until

from devstack.servers import describe_partitions, ensure_topics
from load import loadgen
from load.soak.clients import NO_ANSWER, Clients, Purchase, make_purchases
from tools.common import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RATE = 40            # purchases offered per second
CLIENT_THREADS = 64
SETTLE_S = 180


@dataclass
class Load:
    """The soak's clients offering RATE purchases a second to one buy, on a clock of their own."""
    clients: Clients
    purchases: list[Purchase]
    t0: float

    @classmethod
    def start(cls, buy_url: str, seconds: float) -> Load:
        purchases = make_purchases(RATE, seconds, uuid.uuid4().hex[:8], users="cluster", user_count=60)
        t0 = time.monotonic()
        clients = Clients(loadgen.Target(buy_url), purchases, CLIENT_THREADS, lambda: time.monotonic() - t0)
        clients.start()
        return cls(clients, purchases, t0)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def finish(self, timeout_s: float = 240) -> None:
        """Every purchase answered 202 or abandoned (retries included)."""
        assert self.clients.done.wait(timeout_s), "the clients did not finish"
        self.clients.join(10)

    def statuses(self) -> collections.Counter:
        return collections.Counter(status for _, _, status, _ in self.clients.attempts)

    def accepted(self) -> set[str]:
        return {p.event_id for p in self.purchases if p.accepted_at is not None}

    def first_202_after(self, at: float) -> float | None:
        """Seconds from `at` to the first 202 of an attempt sent after it."""
        answered = [a for s, a, status, _ in self.clients.attempts if status == 202 and s >= at]
        return round(min(answered) - at, 2) if answered else None

    def longest_without_202(self, after: float) -> float:
        """The longest stretch after `after` in which no attempt was answered 202."""
        times = sorted(a for _, a, status, _ in self.clients.attempts if status == 202 and a >= after)
        edges = [after, *times]
        return round(max((b - a for a, b in zip(edges, edges[1:], strict=False)), default=0.0), 2)

    def between(self, sent_from: float, answered_by: float) -> collections.Counter:
        """Statuses of the attempts sent and answered within [sent_from, answered_by]."""
        return collections.Counter(status for s, a, status, _ in self.clients.attempts
                                   if s >= sent_from and a <= answered_by)


def verdict(scenario, load: Load) -> dict:
    """Exact counts: every purchase answered 202 stored once, nothing stored that was never
    offered, nothing stored twice."""
    accepted = load.accepted()
    offered = {p.event_id for p in load.purchases}
    # Every purchase is retried under its key until a 202, so one stored though answered 503
    # is one of the offered ones: `unconfirmed` covers them all, never_offered checks the rest.
    counts, duplicated = scenario.assert_exactly_once(accepted, SETTLE_S, unconfirmed=len(offered))
    statuses = load.statuses()
    figures = {"offered": len(offered), "accepted": len(accepted), "stored": len(counts),
               "lost": len(accepted - set(counts)), "duplicated": duplicated,
               "never_offered": len(set(counts) - offered), "answered_503": statuses.get(503, 0),
               "no_answer": statuses.get(NO_ANSWER, 0),
               "abandoned": sum(p.abandoned for p in load.purchases)}
    assert figures["lost"] == 0 and duplicated == 0 and figures["never_offered"] == 0, figures
    assert set(statuses) <= {202, 503, NO_ANSWER}, statuses
    return figures


def report(name: str, **figures) -> None:
    print(f"\n[fault] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def busiest_leader(servers, topic: str) -> int:
    """The node leading most of the topic's partitions (buy writes to all of them); of nodes
    leading as many, the active controller (the worst case: a quorum election comes first)."""
    leaders = collections.Counter(servers.kafka.leaders(topic).values())
    most = max(leaders.values())
    tied = sorted(node for node, count in leaders.items() if count == most)
    controller = servers.kafka.active_controller()
    return controller if controller in tied else tied[0]


def start_functions(scenario) -> str:
    buy = scenario.start_buy()
    scenario.start_consumer()
    return buy


def test_sigkill_of_the_leading_broker_loses_nothing_and_buying_resumes(cluster_scenario, kafka_cluster):
    buy = start_functions(cluster_scenario)
    load = Load.start(buy, seconds=30)
    time.sleep(10)
    victim = busiest_leader(kafka_cluster, cluster_scenario.names["topic"])
    led = sorted(p for p, leader in kafka_cluster.kafka.leaders(cluster_scenario.names["topic"]).items()
                 if leader == victim)
    was_controller = victim == kafka_cluster.kafka.active_controller()
    killed_at = load.now()
    kafka_cluster.kafka.kill_node(victim)
    load.finish()
    figures = verdict(cluster_scenario, load)
    window = load.first_202_after(killed_at)
    assert window is not None, "no 202 after the kill: two replicas were left to acknowledge"
    report("SIGKILL of the leading broker", node=victim, partitions_led=led, was_controller=was_controller, **figures,
           kill_to_first_202_s=window, longest_without_202_s=load.longest_without_202(killed_at),
           overrides=kafka_cluster.kafka.overrides or "none")


def test_two_brokers_down_never_acknowledge_and_one_back_resumes(cluster_scenario, kafka_cluster):
    buy = start_functions(cluster_scenario)
    load = Load.start(buy, seconds=40)
    time.sleep(8)
    first = busiest_leader(kafka_cluster, cluster_scenario.names["topic"])
    second = next(n for n in kafka_cluster.kafka.running() if n != first)
    kafka_cluster.kafka.kill_node(first)
    time.sleep(3)
    kafka_cluster.kafka.kill_node(second)
    two_down_at = load.now()
    time.sleep(12)
    back_at = load.now()
    kafka_cluster.kafka.start_node(second)
    returned_at = load.now()
    load.finish()
    while_down = load.between(two_down_at, back_at)
    figures = verdict(cluster_scenario, load)
    # One replica cannot satisfy min.insync.replicas=2: no attempt sent after the second broker
    # went and answered before one returned may be a 202.
    assert while_down.get(202, 0) == 0, while_down
    assert while_down.get(503, 0) > 0, while_down
    resumed = load.first_202_after(back_at)
    assert resumed is not None, "no 202 after a broker returned"
    report("two of three brokers down", nodes=[first, second], **figures,
           attempts_while_two_down=dict(while_down), node_restart_s=round(returned_at - back_at, 1),
           restart_to_first_202_s=resumed)


def test_rolling_restart_of_all_brokers_loses_and_duplicates_nothing(cluster_scenario, kafka_cluster):
    buy = start_functions(cluster_scenario)
    load = Load.start(buy, seconds=120)
    time.sleep(5)
    restarts = []
    for node_id in list(kafka_cluster.kafka.running()):
        # What an upgrade does: one node at a time, the next only when every replica is back in sync.
        started = load.now()
        kafka_cluster.kafka.stop_node(node_id)
        kafka_cluster.kafka.start_node(node_id)
        kafka_cluster.kafka.wait_in_sync()
        restarts.append((node_id, round(load.now() - started, 1)))
    ended = load.now()
    load.finish()
    figures = verdict(cluster_scenario, load)
    assert figures["accepted"] > 0
    report("rolling restart of three brokers", restarts_s=restarts, restarts_within_load=ended < 120, **figures,
           longest_without_202_s=load.longest_without_202(5.0))


def statefulset_readiness_script() -> str:
    """The kafka StatefulSet's readiness probe (k8s/kafka), run here as kubelet runs it in a pod."""
    statefulset = yaml.safe_load((ROOT / "k8s" / "kafka" / "kafka-statefulset.yaml").read_text())
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return container["readinessProbe"]["exec"]["command"][-1]


def test_the_statefulsets_readiness_holds_a_broker_until_it_is_back_in_sync(kafka_cluster):
    """What keeps the node's rolling restart from taking a second broker while the first is
    behind: the probe (asked of any broker, for any node id) fails while that node is out of
    some ISR, and passes on a restarted node once it has caught up."""
    kafka = kafka_cluster.kafka
    kafka_cluster.start_kafka()
    topic = "ready-" + uuid.uuid4().hex[:8]
    ensure_topics(kafka_cluster.bootstrap, {topic: 6})
    script = statefulset_readiness_script()

    def probe(node_id: int, asked: int) -> subprocess.CompletedProcess:
        env = dict(os.environ, PROBE_PORT=str(kafka.node(asked).port), KAFKA_NODE_ID=str(node_id))
        return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=15)

    assert [probe(n, n).returncode for n in kafka.running()] == [0] * len(kafka.nodes)
    live, victim = kafka.running()[0], kafka.running()[-1]
    kafka.kill_node(victim)
    try:
        # Writes the victim misses: its partitions' ISRs shrink once the controller fences it.
        producer = KafkaProducer(bootstrap_servers=kafka_cluster.bootstrap, acks="all")
        try:
            for i in range(60):
                producer.send(topic, key=f"r{i}".encode(), value=b"{}")
            producer.flush(30)
        finally:
            producer.close(5)
        behind = wait_until(lambda: (lambda r: r if r.returncode == 1 else None)(probe(victim, live)), 30, 0.5,
                            f"node {victim} out of sync, as node {live} sees it")
        assert f"node {victim} is not in sync on" in behind.stdout, behind.stdout + behind.stderr
        assert probe(live, live).returncode == 0, "a node in every ISR stays Ready"
    finally:
        kafka.start_node(victim)
    wait_until(lambda: probe(victim, victim).returncode == 0, 60, 0.2, f"node {victim} Ready again")
    described = describe_partitions(kafka_cluster.bootstrap, None)
    assert all(victim in p["isr_nodes"] for partitions in described.values() for p in partitions
               if victim in p["replica_nodes"]), "Ready only once back in every ISR"
