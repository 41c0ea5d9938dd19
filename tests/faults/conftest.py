"""Fault-injection fixtures: servers of their own that the tests stop, kill and restart."""
from __future__ import annotations

import collections
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from purchase_common import storage
from support import isolated_env, wait_until

from devstack import stack as devstack
from devstack.servers import Process, free_port


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory):
    stack = devstack.RestartableServers(tmp_path_factory.mktemp("faults"))
    try:
        stack.start_kafka()
        stack.start_ferretdb()
        yield stack
    finally:
        stack.stop()


@dataclass
class Scenario:
    """One isolated topic/group/database on the fault stack, with helpers to run the functions."""
    stack: devstack.RestartableServers
    env: dict
    names: dict
    log_dir: Path
    processes: list = field(default_factory=list)

    def start_buy(self) -> str:
        port = free_port()
        self.processes.append(devstack.start_buy(self.env, port, self.log_dir))
        return f"http://127.0.0.1:{port}"

    def start_history(self) -> str:
        port = free_port()
        self.processes.append(devstack.start_history(self.env, port, self.log_dir))
        return f"http://127.0.0.1:{port}"

    def start_consumer(self, **env) -> Process:
        port = free_port()
        process = devstack.start_consumer(dict(self.env, **env), port, self.log_dir,
                                          name=f"consumer-{len(self.processes)}")
        self.processes.append(process)
        return process

    def collection(self):
        client = storage.connect(self.stack.mongodb_uri)
        return client[self.names["database"]]["purchases"]

    def stored_ids(self) -> list[str]:
        return [doc["eventId"] for doc in self.collection().find({}, {"eventId": 1})]

    def assert_exactly_once(self, accepted, timeout_s: float = 150, unconfirmed: int = 0):
        """Every accepted id stored once; at most `unconfirmed` other ids (sends answered 503 whose
        record reached the broker anyway) and nothing else. Returns (stored counts, duplicates)."""
        expected = set(accepted)
        def settled():
            ids = self.stored_ids()
            return ids if expected <= set(ids) else None
        try:
            ids = wait_until(settled, timeout_s, 0.5, f"all {len(expected)} accepted purchases stored")
        except AssertionError as exc:
            missing = len(expected - set(self.stored_ids()))
            raise AssertionError(f"{exc}; {missing} missing\n{self.log_tails()}") from None
        counts = collections.Counter(ids)
        duplicates = sum(n - 1 for n in counts.values() if n > 1)
        extra = set(counts) - expected
        assert duplicates == 0, f"{duplicates} duplicated event ids"
        assert len(extra) <= unconfirmed, f"{len(extra)} stored purchases were never sent"
        return counts, duplicates

    def log_tails(self, lines: int = 25) -> str:
        """The end of each function's log, for a failure message."""
        parts = []
        for process in self.processes:
            text = process.log.read_text(errors="replace").splitlines() if process.log.exists() else []
            parts.append(f"--- {process.name} (exit {process.proc.poll()}) ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def stop(self):
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def scenario(fault_stack, tmp_path):
    base = devstack.Stack(kafka_bootstrap=fault_stack.bootstrap, mongodb_uri=fault_stack.mongodb_uri)
    env, names = isolated_env(
        base, "faults-" + uuid.uuid4().hex[:8], LOG_LEVEL="WARNING",
        # The broker's minimum: a SIGKILLed consumer's partitions move on after 6 s.
        CONSUMER_SESSION_TIMEOUT_MS="6000", CONSUMER_BATCH_MAX="100",
    )
    current = Scenario(fault_stack, env, names, tmp_path)
    yield current
    current.stop()




# The broker faults' cluster (test_broker_faults.py): three KRaft nodes, RF 3, min ISR 2.
CLUSTER_BROKERS = 3


def broker_overrides() -> dict[str, str]:
    """FAULTS_BROKER_OVERRIDES="broker.session.timeout.ms=9000,..." re-measures the failover with
    other broker settings (Kafka's defaults give the before figure in bench/README.md)."""
    raw = os.environ.get("FAULTS_BROKER_OVERRIDES", "")
    return dict(item.split("=", 1) for item in raw.split(",") if item.strip())


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory):
    """A three-node cluster and a FerretDB of their own, started once, for the broker faults only."""
    servers = devstack.RestartableServers(tmp_path_factory.mktemp("cluster"), brokers=CLUSTER_BROKERS)
    servers.kafka.overrides = broker_overrides()
    try:
        servers.start_kafka()
        servers.start_ferretdb()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def cluster_scenario(kafka_cluster, tmp_path):
    # Whatever the last test left down comes back first, every replica in sync.
    kafka_cluster.start_kafka()
    kafka_cluster.kafka.wait_in_sync()
    base = devstack.Stack(kafka_bootstrap=kafka_cluster.bootstrap, mongodb_uri=kafka_cluster.mongodb_uri)
    env, names = isolated_env(base, "cluster-" + uuid.uuid4().hex[:8], LOG_LEVEL="WARNING",
                              CONSUMER_SESSION_TIMEOUT_MS="6000",
                              IDEMPOTENCY_STORE_PATH=str(tmp_path / "idempotency.sqlite3"))
    current = Scenario(kafka_cluster, env, names, tmp_path)
    yield current
    current.stop()
