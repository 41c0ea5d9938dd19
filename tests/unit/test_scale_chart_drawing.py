"""The scale.sh chart drawn from a cluster-shaped timeline (pods Pending -> Running -> gone), without
a cluster: every panel and event mark is drawn and the file is a PNG of the expected size."""
from __future__ import annotations

import struct

import pytest

from load import chart, loadgen
from load.sampler import Sample
from load.scale import per_sample_load

pytest.importorskip("matplotlib")


def cluster_cycle():
    """40 one-second samples: load 1-11 s, a pod from 4 s (ready at 6 s), drained at 16 s, gone at 30 s."""
    samples = []
    for t in range(40):
        lag = max(0, min(t - 1, 11 - 1) * 60 - max(0, t - 6) * 90) if t >= 2 else 0
        replicas = 0 if t < 4 or t >= 30 else (2 if 8 <= t < 14 else 1)
        phases = {} if replicas == 0 else {"Running": replicas} if t >= 6 else {"Pending": replicas}
        if 28 <= t < 30:
            phases = {"Terminating": 1}
        samples.append(Sample(t=float(t), phase="load" if t <= 11 else "drain", lag_total=lag,
                              lag_by_partition={0: lag}, keda_lag=lag, keda_active=lag > 0,
                              keda_desired=min(2, -(-lag // 100)) if lag else 0, replicas=replicas,
                              ready_replicas=replicas if t >= 6 else 0, pod_phases=phases))
    records = [(i / 100, 0.02 + (i % 7) / 100, 202 if i % 50 else 503) for i in range(1000)]
    return samples, loadgen.LoadResult("python", 0.0, wall_s=10.0, records=records)


def test_cluster_timeline_chart_is_a_png(tmp_path):
    samples, result = cluster_cycle()
    load_rows = per_sample_load(samples, result.records, 1.0)
    summary = {"cluster": True, "load_started_t": 1.0, "load_wall_s": 10.0, "first_pod_t": 4.0,
               "first_ready_t": 6.0, "lag_peak_t": 6.0, "lag_drained_t": 16.0, "zero_replicas_t": 30.0}
    path = chart.write_chart(tmp_path / "cycle.png", samples, load_rows, result, 1.0, summary, "a synthetic cycle")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1000, 900)
    assert 20_000 < len(data) < 400_000
    labels = [label for _, label, _ in chart.events(summary)]
    assert labels == ["load start", "load end", "first pod", "first ready", "lag peak", "drained", "back to 0"]


def test_latency_buckets_follow_the_samples():
    samples, result = cluster_cycle()
    rows = chart.bucket_latencies(samples, result.records, 1.0)
    assert len(rows) == len(samples)
    assert rows[0] == {"p50": None, "p95": None}  # before the load started
    assert all(row["p50"] is not None for row in rows[2:11])
    assert all(row["p95"] >= row["p50"] for row in rows if row["p50"] is not None)
