"""Issue 6, test 4: load/scale.sh pointed at the loopback cluster prints the real timeline.

kubectl on PATH and KUBECONFIG name this cluster, so scale.sh samples the Deployment that
the real KEDA operator (and HPA) scale; the load goes through the local gateway to the
test's own topic, and the stand-in runs the consumers.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from clusterlib import COOLDOWN_S, POLLING_INTERVAL_S, ROOT, overlay, record_timeline, wait_for

SCALE_SH = ROOT / "load" / "scale.sh"


def test_scale_sh_prints_the_real_timeline(scaled_pipeline, kube, capsys):
    if not SCALE_SH.exists():
        pytest.fail("load/scale.sh is missing")
    p = scaled_pipeline
    documents = overlay(p.namespace, p.env["KAFKA_BOOTSTRAP_SERVERS"], p.names["topic"], p.names["group"])
    manifest = p.log_dir / "scaledobject-overlay.yaml"
    manifest.write_text(yaml.safe_dump(documents[-1], sort_keys=False))
    kube.apply(documents)
    wait_for(lambda: kube.condition(p.scaled_object(), "Ready") == "True", 90, "ScaledObject Ready=True")

    out = p.log_dir / "scale.json"
    env = dict(os.environ, KUBECONFIG=str(kube.kubeconfig),
               PATH=f"{kube.kubectl_path.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    argv = ["bash", str(SCALE_SH), "--url", p.gateway, "--host", "purchase.local", "--tool", "python",
            "-n", "600", "-c", "8", "-d", "60", "--users", "50",
            "--namespace", p.namespace, "--bootstrap", p.env["KAFKA_BOOTSTRAP_SERVERS"],
            "--topic", p.names["topic"], "--group", p.names["group"], "--manifest", str(manifest),
            "--drain-timeout", "120", "--zero-timeout", str(COOLDOWN_S + 4 * POLLING_INTERVAL_S + 60),
            "--json", str(out)]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert result.returncode == 0, f"scale.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    summary = json.loads(out.read_text())["summary"]
    assert summary["cluster"], summary["cluster_note"]
    assert summary["initial_replicas"] == 0
    assert summary["first_pod_after_load_start_s"] is not None, "scale.sh saw no replica"
    assert summary["peak_replicas"] >= 1
    assert summary["drain_after_load_s"] is not None, "lag never drained"
    assert summary["zero_after_drain_s"] is not None, "never back to zero replicas"
    stored = p.stored_event_ids()
    assert len(stored) == len(set(stored)) == summary["accepted"], "every accepted purchase stored once"
    timeline = {key: summary[key] for key in ("accepted", "first_pod_after_load_start_s", "peak_replicas",
                                              "drain_after_load_s", "zero_after_drain_s", "lag_peak")}
    path = record_timeline("scale-sh", {"summary": summary})
    tail = result.stdout[result.stdout.rfind("timeline (seconds since start)"):]
    with capsys.disabled():
        print(f"\n[cluster] load/scale.sh against the loopback cluster ({path}): {timeline}\n{tail}")
