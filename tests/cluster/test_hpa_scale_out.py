"""The 1 -> N path: KEDA's HPA, fed by KEDA's real metrics adapter through the aggregation layer.

The stand-in first plays a node with no room (replicas are set, no consumer starts: pods
Pending), so the lag stays put while KEDA activates the Deployment and the HPA controller
reads the lag through external.metrics.k8s.io and scales out. Then the node "gets room": the
consumers start, drain the topic exactly once, and KEDA takes the Deployment back to zero.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from clusterlib import COOLDOWN_S, MARGIN_S, POLLING_INTERVAL_S, overlay, record_timeline, wait_for
from cluster import control

HPA_SYNC_S = 15  # kube-controller-manager's default --horizontal-pod-autoscaler-sync-period


def test_hpa_scales_out_on_kafka_lag_through_kedas_metrics_adapter(scaled_pipeline, kube, capsys):
    if not control.adapter_enabled():
        pytest.skip("CLUSTER_METRICS_ADAPTER=0: the cluster runs without KEDA's metrics adapter")
    apiservice = kube.get("apiservice", control.METRICS_APISERVICE)
    assert kube.condition(apiservice, "Available") == "True", apiservice and apiservice.get("status")
    p = scaled_pipeline
    standin = p.standin
    standin.max_replicas = 0  # a node with no room: replicas are set, nothing starts yet
    documents = overlay(p.namespace, p.env["KAFKA_BOOTSTRAP_SERVERS"], p.names["topic"], p.names["group"])
    scaled = documents[-1]
    lag_threshold = int(scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"])
    max_replicas = int(scaled["spec"]["maxReplicaCount"])
    kube.apply(documents)
    wait_for(lambda: kube.condition(p.scaled_object(), "Ready") == "True", 90, "ScaledObject Ready=True")

    # Enough lag for several replicas but fewer than the cap: ceil(count / lagThreshold).
    count = lag_threshold * 4 + lag_threshold // 2
    expected = min(max_replicas, math.ceil(count / lag_threshold))
    t_first = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        ids = [i for chunk in pool.map(p.buy, [count // 8] * 7 + [count - 7 * (count // 8)]) for i in chunk]
    assert len(ids) == count

    standin.wait_for(lambda s: (s.desired or 0) >= 1, POLLING_INTERVAL_S + MARGIN_S + (time.monotonic() - t_first),
                     "KEDA activation (replicas >= 1)")
    t_one = time.monotonic()
    standin.wait_for(lambda s: (s.desired or 0) >= expected, 3 * HPA_SYNC_S + MARGIN_S, f"HPA scale-out to {expected}")
    t_peak = time.monotonic()
    hpa = kube.get("horizontalpodautoscaler.autoscaling", p.scaled_object()["status"]["hpaName"], p.namespace)
    current = hpa["status"].get("currentMetrics") or []
    assert current and current[0]["type"] == "External", hpa["status"]
    assert int(float(current[0]["external"]["current"]["averageValue"].rstrip("m") or 0)) > 0, current

    standin.max_replicas = max_replicas  # room on the node: the consumers start and drain
    standin.wait_for(lambda s: s.running >= expected, 60, f"{expected} consumers running")
    wait_for(lambda: set(p.stored_event_ids()) >= set(ids), 180, f"all {count} purchases in MongoDB")
    t_drained = time.monotonic()
    stored = p.stored_event_ids()
    assert sorted(stored) == sorted(ids), "each purchase must be stored exactly once across rebalances"

    standin.wait_for(lambda s: s.desired == 0, COOLDOWN_S + 2 * POLLING_INTERVAL_S + HPA_SYNC_S + MARGIN_S,
                     "KEDA back to zero")
    t_zero = time.monotonic()
    standin.wait_for(lambda s: s.running == 0, 60, "every consumer stopped")
    peak = max((e["replicas"] or 0) for e in standin.events if e["what"] == "desired")
    timeline = {
        "purchases": count, "lag_threshold": lag_threshold, "expected_replicas": expected, "peak_replicas": peak,
        "hpa_sync_period_s": HPA_SYNC_S, "polling_interval_s": POLLING_INTERVAL_S, "cooldown_period_s": COOLDOWN_S,
        "first_lag_to_replicas_1_s": round(t_one - t_first, 2),
        "replicas_1_to_peak_s": round(t_peak - t_one, 2),
        "release_to_drained_s": round(t_drained - t_peak, 2),
        "drained_to_zero_s": round(t_zero - t_drained, 2),
    }
    assert peak >= expected
    path = record_timeline("hpa-scale-out", timeline)
    with capsys.disabled():
        print(f"\n[cluster] HPA 1 -> N timeline ({path}): {timeline}")
