"""1 -> N: KEDA's HPA, fed by KEDA's real metrics adapter, scales the real pods out on lag.

The node is cordoned first, so the pods KEDA and the HPA ask for stay Pending and the lag
stays put while the HPA controller reads it through external.metrics.k8s.io and scales out;
then the node is uncordoned: the scheduler places every pending pod, the consumers share the
partitions, drain the topic exactly once across the rebalances, and KEDA returns to zero.
"""
from __future__ import annotations

import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from clusterlib import COOLDOWN_S, HPA_SYNC_S, MARGIN_S, POLL_S, POLLING_INTERVAL_S, record_timeline, wait_until

from cluster import control, node


def test_hpa_scales_real_pods_out_on_kafka_lag(stack, kube, capsys):
    if not control.adapter_enabled():
        pytest.skip("CLUSTER_METRICS_ADAPTER=0: the cluster runs without KEDA's metrics adapter")
    stack.wait_idle_at_zero(COOLDOWN_S + 4 * POLLING_INTERVAL_S + 60)
    scaled = stack.scaled_object()
    lag_threshold = int(scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"])
    max_replicas = int(scaled["spec"]["maxReplicaCount"])
    count = lag_threshold * 4 + lag_threshold // 2
    expected = min(max_replicas, math.ceil(count / lag_threshold))
    users = [f"h{uuid.uuid4().hex[:8]}" for _ in range(8)]

    kube.run("cordon", node.NODE_NAME)
    try:
        t_first = time.monotonic()
        with ThreadPoolExecutor(len(users)) as pool:
            sent = dict(zip(users, pool.map(lambda u: stack.buy(count // len(users), user=u), users), strict=True))
        ids = [i for chunk in sent.values() for i in chunk]
        wait_until(lambda: (kube.replicas() or 0) >= 1, POLLING_INTERVAL_S + MARGIN_S + time.monotonic() - t_first,
                   POLL_S, "KEDA activation (replicas >= 1)")
        t_one = time.monotonic()
        wait_until(lambda: (kube.replicas() or 0) >= expected, 3 * HPA_SYNC_S + MARGIN_S, POLL_S,
                   f"HPA scale-out to {expected}")
        t_peak = time.monotonic()
        pending = [p for p in kube.consumer_pods() if p["status"].get("phase") == "Pending"]
        assert len(pending) >= expected, "a cordoned node runs no new pod"
        hpa = kube.get("horizontalpodautoscaler.autoscaling", scaled["status"]["hpaName"])
        current = hpa["status"].get("currentMetrics") or []
        assert current and current[0]["type"] == "External", hpa["status"]
    finally:
        kube.run("uncordon", node.NODE_NAME)

    wait_until(lambda: len(kube.running_consumers()) >= expected, 120, POLL_S, f"{expected} consumer pods running")
    t_running = time.monotonic()
    wait_until(lambda: all(sorted(stack.stored_ids(u)) == sorted(v) for u, v in sent.items()) or None, 180,
               POLL_S, f"all {len(ids)} purchases stored")
    t_drained = time.monotonic()
    stored = [i for u in users for i in stack.stored_ids(u)]
    assert sorted(stored) == sorted(ids), "each purchase stored exactly once across rebalances"
    wait_until(lambda: kube.replicas() == 0, COOLDOWN_S + 3 * POLLING_INTERVAL_S + HPA_SYNC_S + MARGIN_S,
               POLL_S, "KEDA back to zero")
    t_zero = time.monotonic()
    timeline = {
        "purchases": len(ids), "lag_threshold": lag_threshold, "expected_replicas": expected,
        "first_purchase_to_replicas_1_s": round(t_one - t_first, 1),
        "replicas_1_to_peak_s": round(t_peak - t_one, 1),
        "uncordon_to_all_running_s": round(t_running - t_peak, 1),
        "running_to_drained_s": round(t_drained - t_running, 1),
        "drained_to_zero_s": round(t_zero - t_drained, 1),
    }
    path = record_timeline("hpa-scale-out", timeline)
    with capsys.disabled():
        print(f"\n[node] HPA 1 -> N timeline ({path}): {timeline}")

