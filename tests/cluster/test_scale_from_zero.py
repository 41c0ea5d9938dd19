"""The real KEDA operator scales the real persist-purchase pods 0 -> 1 -> 0 on the node.

Purchases go through the buy pod into the Kafka pod; KEDA polls the group's lag (through
CoreDNS and kube-proxy, as it would in a pod) and sets the Deployment's replicas; the
scheduler places the pod, kubelet starts it in containerd; every purchase lands in the
MongoDB pod exactly once; after cooldownPeriod without lag the pod is gone again.
"""
from __future__ import annotations

import time
import uuid

from clusterlib import COOLDOWN_S, MARGIN_S, POLL_S, POLLING_INTERVAL_S, pod_timeline, record_timeline, wait_until


def scale_cycle(stack, kube, count: int, label: str) -> dict:
    stack.wait_idle_at_zero(COOLDOWN_S + 4 * POLLING_INTERVAL_S + 60)
    user = "z" + uuid.uuid4().hex[:10]
    t_first = time.monotonic()
    ids = stack.buy(count, user=user)
    t_sent = time.monotonic()

    # One loop observes all three, so each time is when it first became true (the consumer
    # stores before its readiness probe has even passed).
    seen: dict[str, float] = {}
    checks = {"replicas_1": lambda: (kube.replicas() or 0) >= 1,
              "pod_ready": lambda: any(kube.condition(p, "Ready") == "True" for p in kube.consumer_pods()),
              "all_stored": lambda: sorted(stack.stored_ids(user)) == sorted(ids)}

    def observe():
        for name, check in checks.items():
            if name not in seen and check():
                seen[name] = time.monotonic()
        return len(seen) == len(checks)
    wait_until(observe, POLLING_INTERVAL_S + MARGIN_S + 120, POLL_S,
               f"{label}: replicas 1, pod Ready, all {count} stored (seen so far: {seen})")
    assert seen["replicas_1"] - t_first <= POLLING_INTERVAL_S + MARGIN_S + (t_sent - t_first), seen
    pod = next(p for p in kube.consumer_pods() if kube.condition(p, "Ready") == "True")
    t_replicas, t_ready, t_stored = seen["replicas_1"], seen["pod_ready"], seen["all_stored"]
    wait_until(lambda: stack.group_lag() == 0, 60, POLL_S, f"{label}: consumer group lag 0")

    wait_until(lambda: kube.replicas() == 0, COOLDOWN_S + 3 * POLLING_INTERVAL_S + MARGIN_S,
               POLL_S, f"{label}: KEDA back to 0 replicas")
    t_zero = time.monotonic()
    wait_until(lambda: not kube.consumer_pods(), 90, POLL_S, f"{label}: the pod is gone")
    t_gone = time.monotonic()

    stored = stack.stored_ids(user)
    assert sorted(stored) == sorted(ids), "each purchase must be stored exactly once"
    timeline = {
        "purchases": count,
        "first_purchase_to_replicas_1_s": round(t_replicas - t_first, 1),
        "replicas_1_to_pod_ready_s": round(t_ready - t_replicas, 1),
        "pod": pod_timeline(pod),
        "first_purchase_to_all_stored_s": round(t_stored - t_first, 1),
        "all_stored_to_replicas_0_s": round(t_zero - t_stored, 1),
        "replicas_0_to_pod_gone_s": round(t_gone - t_zero, 1),
    }
    # KEDA keeps the pod for cooldownPeriod after the last poll that saw lag.
    assert timeline["all_stored_to_replicas_0_s"] >= COOLDOWN_S - POLLING_INTERVAL_S - 1, timeline
    return timeline


def test_keda_scales_real_pods_from_zero_and_back(stack, kube, capsys):
    activation = int(stack.scaled_object()["spec"]["triggers"][0]["metadata"]["activationLagThreshold"])
    first = scale_cycle(stack, kube, activation + 20, "cycle 1")
    second = scale_cycle(stack, kube, activation + 20, "cycle 2")
    path = record_timeline("scale-from-zero", {"cycle_1": first, "cycle_2": second})
    with capsys.disabled():
        print(f"\n[node] scale-from-zero timeline ({path}):\n  cycle 1: {first}\n  cycle 2: {second}")
