"""load/scale.sh against the real local pipeline writes its timeline as a PNG chart and says where."""
from __future__ import annotations

import json
import os
import struct
import subprocess

import pytest

from devstack.servers import ROOT

pytestmark = pytest.mark.integration
SCALE_SH = ROOT / "load" / "scale.sh"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which the PNG format puts first."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_scale_sh_draws_the_timeline(pipeline, tmp_path):
    chart, report = tmp_path / "timeline.png", tmp_path / "scale.json"
    # No kubeconfig: the chart must say that replica counts need a cluster, whatever this machine has.
    env = dict(os.environ, KUBECONFIG=str(tmp_path / "no-kubeconfig"))
    argv = ["bash", str(SCALE_SH), "--url", pipeline.gateway, "--tool", "python", "-n", "400", "-c", "4",
            "-d", "30", "--users", "40", "--bootstrap", pipeline.stack.kafka_bootstrap, "--topic", pipeline.topic,
            "--group", pipeline.group, "--drain-timeout", "60", "--zero-timeout", "0",
            "--chart", str(chart), "--json", str(report)]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"scale.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.stdout.rstrip().splitlines()[-1] == f"chart written to {chart}"

    summary = json.loads(report.read_text())["summary"]
    assert summary["chart"] == str(chart)
    assert summary["accepted"] == 400 and summary["cluster"] is False
    assert summary["drain_after_load_s"] is not None

    assert 20_000 < chart.stat().st_size < 400_000, chart.stat().st_size
    assert png_size(chart) == (1000, 900)
    image = pytest.importorskip("PIL.Image")
    with image.open(chart) as opened:
        assert opened.format == "PNG" and opened.size == (1000, 900)
        opened.verify()


def test_no_chart_keeps_the_summary_key(pipeline, tmp_path):
    report = tmp_path / "scale.json"
    argv = ["bash", str(SCALE_SH), "--url", pipeline.gateway, "--tool", "python", "-n", "20", "-c", "2",
            "--bootstrap", pipeline.stack.kafka_bootstrap, "--topic", pipeline.topic, "--group", pipeline.group,
            "--drain-timeout", "30", "--zero-timeout", "0", "--no-chart", "--json", str(report), "-q"]
    env = dict(os.environ, KUBECONFIG=str(tmp_path / "no-kubeconfig"))
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(report.read_text())["summary"]["chart"] is None
    assert "chart written" not in result.stdout
