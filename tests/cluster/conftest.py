"""Fixtures for the tests on the real node (cluster/README.md).

They run only through `make test-cluster` (PURCHASE_CLUSTER_TESTS=1, after `make cluster-up`);
anywhere else every test here is skipped, and under `make test-cluster` a cluster that is not
up is a failure, not a skip. The whole system is deployed once per session with the real
`make deploy OVERLAY=node` (k8s/overlays/node: substitute images for Kafka and MongoDB, KEDA's
short test timings); every test then works with its own users, so counts are exact per test.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from clusterlib import POLL_S, ROOT, Kube, NodeStack, revision_ready, wait_until

from cluster import control
from cluster.observe import node_report

HERE = Path(__file__).resolve().parent

ENABLED = os.environ.get("PURCHASE_CLUSTER_TESTS") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs the cluster in a box (make cluster-up; make test-cluster)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)
            if not ENABLED:
                item.add_marker(pytest.mark.skip(reason="needs the cluster: make cluster-up && make test-cluster"))


@pytest.fixture(scope="session")
def kube() -> Kube:
    if not control.is_up():
        pytest.fail("the cluster is not up: run `make cluster-up` before `make test-cluster`")
    return Kube(control.read_state())


def make_deploy(kube: Kube) -> subprocess.CompletedProcess:
    """The real `make deploy`, as a minikube user runs it, with the node's overlay: the
    substitutes (cluster-up built and loaded them) for the two upstream images that cannot be
    pulled here, and KEDA's test timings."""
    env = dict(os.environ, KUBECONFIG=str(kube.kubeconfig))
    argv = ["make", "--no-print-directory", "deploy", f"KUBECTL={kube.kubectl_path}", "WAIT_TIMEOUT=300s",
            "OVERLAY=node"]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="session")
def deployed(kube) -> subprocess.CompletedProcess:
    result = make_deploy(kube)
    assert result.returncode == 0, f"make deploy failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="session")
def stack(kube, deployed) -> NodeStack:
    """The deployed system: buy and history as Knative Services whose Routes are Ready, reached
    through the node's ingress (Traefik) with Host: purchase.local, as a client reaches them."""
    revisions = {name: wait_until(lambda n=name: revision_ready(kube, n), 180, POLL_S, f"{name}'s Revision Ready")
                 for name in ("buy", "history")}
    mongodb_uri = kube.secret_value("mongodb-credentials", "MONGODB_ADMIN_URI")
    bootstrap = kube.get("configmap", "purchase-config")["data"]["KAFKA_BOOTSTRAP_SERVERS"]
    result = NodeStack(kube, revisions["buy"], revisions["history"], mongodb_uri, bootstrap)
    wait_until(lambda: kube.condition(result.scaled_object(), "Ready") == "True", 120, POLL_S,
               "ScaledObject Ready=True")
    return result


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed node test carries the node's state at that moment (pods not Ready and why, the
    latest Warning events), also written to .run/cluster/results/failed-<test>.txt: a failure in
    a CI run is read afterwards, when the cluster is gone."""
    outcome = yield
    report = outcome.get_result()
    if not (ENABLED and report.when == "call" and report.failed and control.is_up()):
        return
    text = node_report(Kube(control.read_state()))
    kubelet_log = control.LOGS / "kubelet.log"
    if kubelet_log.exists():  # klog's error lines start with E and the date
        errors = [line for line in kubelet_log.read_text(errors="replace").splitlines() if line.startswith("E")]
        text += "\n--- kubelet's last errors ---\n" + "\n".join(line[:400] for line in errors[-30:])
    report.sections.append(("node state at the failure", text))
    results = ROOT / ".run" / "cluster" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"failed-{item.name}.txt").write_text(text + "\n")
