"""Traces on the node (k8s/overlays/node/zipkin/): the functions' exporter settings point at the
Zipkin Deployment's Service, only the exporting pods and the node reach it, the base overlays
export nothing; and the substitute image, run under podman as the Deployment runs it, serves
Zipkin's API (a span posted is read back) with a read-only root as uid 1000."""
from __future__ import annotations

import shutil
import time
import uuid

import k8s_helpers as h
import pytest
import requests
from support import wait_until
from test_k8s_consistency import _allowed_from, _matches, _policies, _workloads

from devstack import zipkin
from images import build as images_build
from tools.common import free_port

EXPORTER_KEYS = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_ZIPKIN_ENDPOINT")
NODE_IP_BLOCK = "10.244.0.1/32"  # the node's address on the pod bridge (cluster/README.md)


@pytest.fixture(scope="module")
def node() -> list[h.Doc]:
    return h.rendered("node")


def zipkin_container(node) -> dict:
    (container,) = h.containers(h.find(node, "Deployment", "zipkin"))
    return container


def test_the_functions_export_to_the_zipkin_service_on_the_node_and_nowhere_elsewhere(node):
    data = h.find(node, "ConfigMap", "purchase-config").obj["data"]
    service = h.find(node, "Service", "zipkin", group="").obj
    base_url = f"http://{service['metadata']['name']}.{h.TRACE_BACKEND_NAMESPACE}.svc.cluster.local:" \
               f"{service['spec']['ports'][0]['port']}"
    assert {key: data[key] for key in EXPORTER_KEYS} == zipkin.trace_env(base_url), "the local stack's settings"
    for overlay in set(h.OVERLAYS) - {"node"}:
        config = h.find(h.rendered(overlay), "ConfigMap", "purchase-config").obj["data"]
        assert not [key for key in config if key.startswith("OTEL_")], f"{overlay}: the base exports no spans"


def test_zipkin_runs_the_substitute_in_memory_non_root_read_only_with_stated_resources(node):
    deployment = h.find(node, "Deployment", "zipkin")
    pod = deployment.obj["spec"]["template"]["spec"]
    container = zipkin_container(node)
    assert container["image"] == images_build.ZIPKIN_IMAGE
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STORAGE_TYPE"] == "mem" and int(env["MEM_MAX_SPANS"]) > 0
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}, kind
    port = container["ports"][0]
    assert (port["name"], port["containerPort"]) == ("http", int(env["QUERY_PORT"]))
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    # One in-memory store: a rolling update would split the spans between two.
    assert deployment.obj["spec"]["replicas"] == 1 and deployment.obj["spec"]["strategy"]["type"] == "Recreate"


def test_only_the_exporting_functions_and_the_node_reach_zipkin(node):
    policy = _policies(node)["zipkin-clients-only"]
    namespaced = [d for d in node if d.obj["metadata"].get("namespace") == h.TRACE_BACKEND_NAMESPACE]
    assert {name for name, labels in _workloads(namespaced).items()
            if _matches(policy["spec"]["podSelector"], labels)} == {"zipkin"}
    exporters = {d.name for d in node for c in h.containers(d)
                 if any((src.get("configMapRef") or {}).get("name") == "purchase-config"
                        for src in c.get("envFrom", []) or [])}
    assert exporters == {"buy", "history", "persist-purchase"}
    (rule,) = policy["spec"]["ingress"]
    pods_peer, node_peer = rule["from"]
    assert pods_peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": h.NAMESPACE}
    purchase = [d for d in node if d.obj["metadata"].get("namespace") == h.NAMESPACE]
    assert _allowed_from({"spec": {"ingress": [{"from": [{"podSelector": pods_peer["podSelector"]}]}]}},
                         purchase) == exporters
    assert node_peer == {"ipBlock": {"cidr": NODE_IP_BLOCK}}
    assert rule["ports"] == [{"port": zipkin_container(node)["ports"][0]["containerPort"]}]


def test_deploy_infra_on_the_node_applies_zipkin_and_waits_for_it(tmp_path):
    result, calls = h.run_make(tmp_path / "bin", "deploy-infra", "OVERLAY=node")
    assert result.returncode == 0, result.stdout + result.stderr
    assert h.TRACE_BACKEND <= {d.key for d in h.applied_docs(calls)}
    waits = [c["argv"] for c in calls if c["tool"] == "kubectl" and "apply" not in c["argv"]]
    assert ["-n", h.TRACE_BACKEND_NAMESPACE, "rollout", "status", "deployment/zipkin", "--timeout=300s"] in waits


# --- the substitute image under podman, as the Deployment runs it ------------------------------

@pytest.mark.podman
@pytest.mark.skipif(shutil.which("podman") is None or shutil.which("mmdebstrap") is None,
                    reason="needs podman and mmdebstrap (images/build.py)")
def test_the_zipkin_image_serves_a_posted_span_read_only_as_1000(node, capsys):
    container = zipkin_container(node)
    image = images_build.build_zipkin_substitute()
    env = [arg for e in container["env"] for arg in ("--env", f"{e['name']}={e['value']}")]
    port, name = free_port(), f"purchase-test-{uuid.uuid4().hex[:8]}"
    images_build.podman("run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp", "--user", "1000:1000",
                        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                        "--publish", f"127.0.0.1:{port}:{container['ports'][0]['containerPort']}", *env, image)
    started = time.monotonic()
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            try:
                return requests.get(f"{base}/health", timeout=2).status_code == 200
            except requests.RequestException:  # podman's port forwarder holds a connection until the JVM listens
                return False
        wait_until(healthy, zipkin.START_TIMEOUT_S, 0.3, "Zipkin's /health")
        ready_s = time.monotonic() - started
        trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        span = {"traceId": trace_id, "id": span_id, "name": "send purchases", "kind": "PRODUCER",
                "timestamp": int(time.time() * 1e6), "duration": 1500,
                "localEndpoint": {"serviceName": "buy"}, "tags": {"messaging.message.id": "e-1"}}
        assert requests.post(f"{base}/api/v2/spans", json=[span], timeout=10).status_code == 202

        def read_back() -> list[dict] | None:
            answer = requests.get(f"{base}/api/v2/trace/{trace_id}", timeout=10)
            return answer.json() if answer.status_code == 200 else None  # 404 until the collector stored it
        stored = wait_until(read_back, 30, 0.3, "the span read back")
        assert [(s["id"], s["kind"], s["tags"]) for s in stored] == [(span_id, "PRODUCER", span["tags"])]
        user = images_build.podman("exec", name, "id", "-u").stdout.strip()
        assert user == "1000"
        rss_kib = int(next(line.split()[1] for line in images_build.podman(
            "exec", name, "cat", "/proc/1/status").stdout.splitlines() if line.startswith("VmRSS:")))
        limit = container["resources"]["limits"]["memory"]
        assert limit.endswith("Mi") and rss_kib < int(limit[:-2]) * 1024, (rss_kib, limit)
        size = images_build.podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()
        with capsys.disabled():
            print(f"\n[zipkin image] {image}: {int(size) / 1e6:.0f} MB, /health after {ready_s:.1f} s, "
                  f"RSS {rss_kib / 1024:.0f} MiB with one span (limit {limit})")
    finally:
        images_build.podman("rm", "--force", "--time", "5", name, check=False)
