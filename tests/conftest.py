"""Shared fixtures: the real Kafka and MongoDB-wire servers, started once per session.

With KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI set, the suite uses those servers instead
(e.g. a real mongod or Kafka cluster); otherwise it starts Apache Kafka and FerretDB
through the same code as `make run`, on free ports, with data in a temporary folder.
Each session uses its own topic, group and database, so it never sees other data.
"""
from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack import stack as devstack  # noqa: E402
from devstack.servers import free_port  # noqa: E402
from support import wait_until  # noqa: E402,F401  (re-exported for test modules)


@dataclass
class Pipeline:
    """One isolated instance of the three functions and the gateway on the session's servers."""
    stack: devstack.Stack
    env: dict
    topic: str
    dead_letter_topic: str
    group: str
    database: str
    log_dir: Path
    ports: dict = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def buy(self) -> str:
        return f"http://127.0.0.1:{self.ports['buy']}"

    @property
    def history(self) -> str:
        return f"http://127.0.0.1:{self.ports['history']}"

    def collection(self):
        from purchase_common import storage
        client = storage.connect(self.stack.mongodb_uri)
        return client[self.database]["purchases"]


def make_isolated_env(stack: devstack.Stack, tag: str) -> tuple[dict, dict]:
    run = uuid.uuid4().hex[:8]
    names = {
        "topic": f"purchases-{tag}-{run}",
        "dead_letter_topic": f"purchases-{tag}-{run}.dlq",
        "group": f"persist-{tag}-{run}",
        "database": f"purchases_{tag}_{run}",
    }
    env = devstack.function_env(
        stack,
        PURCHASES_TOPIC=names["topic"], DEAD_LETTER_TOPIC=names["dead_letter_topic"],
        CONSUMER_GROUP=names["group"], MONGODB_DATABASE=names["database"],
        LOG_LEVEL=os.environ.get("TEST_FUNCTION_LOG_LEVEL", "INFO"),
    )
    return env, names


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("stack")
    stack = devstack.start_servers(data_dir, preferred_ports=False)
    stack.data_dir = data_dir
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def pipeline(servers, tmp_path_factory):
    env, names = make_isolated_env(servers, "e2e")
    from devstack.servers import ensure_topics
    from purchase_common import config
    ensure_topics(servers.kafka_bootstrap, {names["topic"]: config.TOPIC_PARTITIONS, names["dead_letter_topic"]: 1})
    log_dir = tmp_path_factory.mktemp("logs")
    ports = {name: free_port() for name in ("buy", "history", "persist-purchase", "gateway")}
    processes = [
        devstack.start_buy(env, ports["buy"], log_dir),
        devstack.start_history(env, ports["history"], log_dir),
        devstack.start_consumer(env, ports["persist-purchase"], log_dir),
        devstack.start_gateway(ports["gateway"], ports["buy"], ports["history"], log_dir),
    ]
    yield Pipeline(servers, env, log_dir=log_dir, ports=ports, **names)
    for process in reversed(processes):
        process.stop()
