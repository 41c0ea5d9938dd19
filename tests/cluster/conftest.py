"""Fixtures for the tests against the loopback cluster (cluster/README.md).

They run only through `make test-cluster` (PURCHASE_CLUSTER_TESTS=1, after `make cluster-up`);
anywhere else every test here is skipped, and under `make test-cluster` a cluster that is not
up is a failure, not a skip. Kafka and FerretDB are the session's own (the `servers` fixture
of tests/conftest.py); each scaling test gets its own namespace, topic, group and database.
"""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from clusterlib import Kube, ScaledPipeline  # noqa: E402
from support import isolated_env  # noqa: E402
from cluster import control  # noqa: E402
from cluster.kubelet_standin import StandIn  # noqa: E402
from devstack import stack as devstack  # noqa: E402
from devstack.servers import free_port  # noqa: E402

ENABLED = os.environ.get("PURCHASE_CLUSTER_TESTS") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers",
                            "cluster: needs the loopback cluster (make cluster-up; run by make test-cluster)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)
            if not ENABLED:
                item.add_marker(pytest.mark.skip(
                    reason="needs the loopback cluster: make cluster-up && make test-cluster"))


@pytest.fixture(scope="session")
def kube() -> Kube:
    if not control.is_up():
        pytest.fail("the loopback cluster is not up: run `make cluster-up` before `make test-cluster`")
    return Kube(control.read_state())


@pytest.fixture
def scaled_pipeline(kube, servers, tmp_path_factory, request):
    """A namespace with the overlay applied, the stand-in playing its node, and the HTTP functions."""
    tag = "cl" + uuid.uuid4().hex[:6]
    env, names = isolated_env(servers, tag)
    log_dir = tmp_path_factory.mktemp(f"cluster-{tag}")
    namespace = f"purchase-{tag}"
    kube.run("create", "namespace", namespace)
    processes = []
    standin = None
    try:
        ports = {name: free_port() for name in ("buy", "history", "gateway")}
        processes.append(devstack.start_buy(env, ports["buy"], log_dir))
        processes.append(devstack.start_history(env, ports["history"], log_dir))
        processes.append(devstack.start_gateway(ports["gateway"], ports["buy"], ports["history"], log_dir))
        standin = StandIn(namespace, "persist-purchase", env, log_dir, api=None, max_replicas=6,
                          events_file=log_dir / "standin-events.jsonl").start()
        pipeline = ScaledPipeline(kube, namespace, names, env, f"http://127.0.0.1:{ports['gateway']}", standin,
                                  servers.mongodb_uri, log_dir, processes)
        yield pipeline
    finally:
        if standin is not None:
            standin.stop()
        for process in reversed(processes):
            process.stop()
        kube.run("delete", "namespace", namespace, "--wait=false", check=False)


