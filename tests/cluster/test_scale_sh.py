"""load/scale.sh against the node prints the real timeline: replicas and pod phases of the
persist-purchase pods that KEDA starts, lag from the in-cluster broker, back to zero."""
from __future__ import annotations

import json
import os
import subprocess

import yaml
from clusterlib import CONSUMER, COOLDOWN_S, NAMESPACE, POLLING_INTERVAL_S, ROOT, record_timeline

SCALE_SH = ROOT / "load" / "scale.sh"
USERS = 50


def test_scale_sh_prints_the_real_timeline(stack, kube, tmp_path, capsys):
    stack.wait_idle_at_zero(COOLDOWN_S + 4 * POLLING_INTERVAL_S + 60)
    manifest = tmp_path / "scaledobject.yaml"
    manifest.write_text(yaml.safe_dump(stack.scaled_object(), sort_keys=False))
    already = {u: len(stack.stored_ids(f"load-{u}")) for u in range(USERS)}
    out = tmp_path / "scale.json"
    env = dict(os.environ, KUBECONFIG=str(kube.kubeconfig),
               PATH=f"{kube.kubectl_path.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # The ingress's address is the node's, on this machine: --allow-remote only lifts scale.sh's
    # loopback-only guard for it.
    revision = stack.buy_revision
    argv = ["bash", str(SCALE_SH), "--url", revision.url, "--host", revision.host, "--tool", "python", "--allow-remote",
            "--header", f"Authorization: {revision.headers['Authorization']}",
            "-n", "1500", "-c", "8", "-d", "60", "--users", str(USERS),
            "--namespace", NAMESPACE, "--deployment", CONSUMER, "--knative-service", "buy",
            "--bootstrap", stack.bootstrap,
            "--manifest", str(manifest), "--drain-timeout", "120",
            "--zero-timeout", str(COOLDOWN_S + 4 * POLLING_INTERVAL_S + 60), "--json", str(out)]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert result.returncode == 0, f"scale.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert summary["cluster"], summary["cluster_note"]
    assert summary["initial_replicas"] == 0
    assert summary["first_pod_after_load_start_s"] is not None, "scale.sh saw no pod"
    assert summary["peak_replicas"] >= 1
    assert summary["peak_knative_pods"]["buy"] >= 1, "buy served the load from at least one pod"
    assert summary["drain_after_load_s"] is not None, "lag never drained"
    assert summary["zero_after_drain_s"] is not None, "never back to zero replicas"
    stored = sum(len(stack.stored_ids(f"load-{u}")) - already[u] for u in range(USERS))
    assert stored == summary["accepted"], "every accepted purchase stored once"
    timeline = {key: summary[key] for key in ("accepted", "first_pod_after_load_start_s", "peak_replicas",
                                              "drain_after_load_s", "zero_after_drain_s", "lag_peak")}
    path = record_timeline("scale-sh", {"summary": summary})
    tail = result.stdout[result.stdout.rfind("timeline (seconds since start)"):]
    with capsys.disabled():
        print(f"\n[node] load/scale.sh against the node ({path}): {timeline}\n{tail}")
