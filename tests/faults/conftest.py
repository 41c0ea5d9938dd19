"""Fault-injection fixtures: servers of their own that the tests stop, kill and restart."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from purchase_common import storage
from support import isolated_env

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


