"""Issue 6, tests 2 and 3: the real KEDA operator wakes persist-purchase from zero and puts it back.

Purchases go through the local gateway -> buy -> Kafka; KEDA (out-of-cluster, real operator)
polls the consumer group's lag and sets the Deployment's replicas; the stand-in node runs
that many consumers; every purchase must land in MongoDB exactly once; after cooldownPeriod
without lag KEDA sets replicas back to 0 and the stand-in stops the consumer.
"""
from __future__ import annotations

import time

from clusterlib import COOLDOWN_S, MARGIN_S, POLLING_INTERVAL_S, overlay, record_timeline, wait_for


def first_event(standin, what: str, after: float, **match) -> dict | None:
    for event in list(standin.events):
        if event["what"] == what and event["mono"] >= after and all(
                (v(event.get(k)) if callable(v) else event.get(k) == v) for k, v in match.items()):
            return event
    return None


def apply_overlay_and_wait_ready(p, kube) -> float:
    """Apply the test overlay; return the monotonic time just before it was applied."""
    t_applied = time.monotonic()
    kube.apply(overlay(p.namespace, p.env["KAFKA_BOOTSTRAP_SERVERS"], p.names["topic"], p.names["group"]))
    wait_for(lambda: kube.condition(p.scaled_object(), "Ready") == "True", 90, "ScaledObject Ready=True")
    return t_applied


def scale_cycle(p, kube, count: int, label: str, sent_before: list[str] | None = None,
                lag_since: float | None = None) -> dict:
    """Send `count` purchases (or count the ones already waiting) and follow one 0 -> N -> 0 cycle."""
    standin = p.standin
    if sent_before is None:
        assert standin.desired == 0 and standin.running == 0, (standin.desired, standin.running)
    already = set(p.stored_event_ids())
    t_first = time.monotonic() if lag_since is None else lag_since
    ids = sent_before if sent_before is not None else p.buy(count)
    t_sent = time.monotonic()

    # 0 -> 1: within one pollingInterval of lag appearing, plus slack.
    up_budget = POLLING_INTERVAL_S + MARGIN_S
    standin.wait_for(lambda s: (s.desired or 0) >= 1, up_budget + (t_sent - t_first) + 1, f"{label}: replicas >= 1")
    up = first_event(standin, "desired", t_first, replicas=lambda r: (r or 0) >= 1)
    started = standin.wait_for(lambda s: s.running >= 1, 60, f"{label}: consumer running") and \
        first_event(standin, "started", t_first)

    # Every purchase lands exactly once.
    def all_stored():
        stored = [e for e in p.stored_event_ids() if e not in already]
        return stored if set(stored) >= set(ids) else None
    wait_for(all_stored, 120, f"{label}: all {len(ids)} purchases in MongoDB")
    t_stored = time.monotonic()
    wait_for(lambda: p.consumer_group_lag() == 0, 60, f"{label}: consumer group lag 0")

    # N -> 0: KEDA waits cooldownPeriod after the last active poll, then sets replicas to 0.
    down_budget = COOLDOWN_S + 2 * POLLING_INTERVAL_S + MARGIN_S
    standin.wait_for(lambda s: s.desired == 0, down_budget, f"{label}: replicas back to 0")
    down = first_event(standin, "desired", up["mono"], replicas=0)
    standin.wait_for(lambda s: s.running == 0 and first_event(s, "stopped", down["mono"]), 45,
                     f"{label}: consumer stopped")
    stopped = first_event(standin, "stopped", down["mono"])

    stored = [e for e in p.stored_event_ids() if e not in already]
    assert sorted(stored) == sorted(ids), "each purchase must be stored exactly once"
    peak = max((e["replicas"] or 0) for e in standin.events if e["what"] == "desired" and e["mono"] >= t_first)
    timeline = {
        "purchases": len(ids),
        "polling_interval_s": POLLING_INTERVAL_S,
        "cooldown_period_s": COOLDOWN_S,
        "first_lag_to_replicas_1_s": round(up["mono"] - t_first, 2),
        "last_send_to_replicas_1_s": round(up["mono"] - t_sent, 2) if sent_before is None else None,
        "replicas_1_to_consumer_started_s": round(started["mono"] - up["mono"], 2),
        "first_lag_to_all_stored_s": round(t_stored - t_first, 2),
        "all_stored_to_replicas_0_s": round(down["mono"] - t_stored, 2),
        "replicas_0_to_consumer_stopped_s": round(stopped["mono"] - down["mono"], 2),
        "peak_replicas": peak,
    }
    assert timeline["first_lag_to_replicas_1_s"] <= up_budget, timeline
    # lastActiveTime is the last poll that still saw lag, up to one interval before the drain ended.
    assert timeline["all_stored_to_replicas_0_s"] >= COOLDOWN_S - POLLING_INTERVAL_S - 1, \
        f"scaled to zero before cooldownPeriod: {timeline}"
    return timeline


def test_scale_from_zero_and_back_with_the_real_keda_operator(scaled_pipeline, kube, capsys):
    p = scaled_pipeline
    apply_overlay_and_wait_ready(p, kube)
    # Idle: no lag, so KEDA keeps it at zero and the stand-in runs nothing.
    time.sleep(2 * POLLING_INTERVAL_S + 1)
    assert kube.replicas(p.namespace) == 0 and p.standin.desired == 0 and p.standin.running == 0
    so = p.scaled_object()
    activation = int(so["spec"]["triggers"][0]["metadata"]["activationLagThreshold"])
    count = activation + 20

    # Cycle 1 creates the group's committed offsets; cycle 2 is the steady case measured from them.
    first = scale_cycle(p, kube, count, "cycle 1")
    second = scale_cycle(p, kube, count, "cycle 2")
    assert p.consumer_group_lag() == 0
    hpa = kube.get("horizontalpodautoscaler.autoscaling", so["status"]["hpaName"], p.namespace)
    assert hpa is not None
    path = record_timeline("scale-from-zero", {"cycle_1_new_group": first, "cycle_2_committed_group": second})
    with capsys.disabled():
        print(f"\n[cluster] scale-from-zero timeline ({path}):\n  cycle 1: {first}\n  cycle 2: {second}")


def test_brand_new_group_with_waiting_records_wakes_and_loses_nothing(scaled_pipeline, kube, capsys):
    """The group has never committed (or even joined) when the records arrive: KEDA, with
    offsetResetPolicy earliest, must count the whole topic as lag; the consumer, with
    auto_offset_reset earliest, must start from the beginning and store every record."""
    p = scaled_pipeline
    t_first = time.monotonic()
    ids = p.buy(30)  # before any ScaledObject or consumer exists in this namespace
    assert p.consumer_group_lag() is None, "the group must have no committed offsets yet"
    so_spec = overlay(p.namespace, "x", "x", "x")[-1]["spec"]["triggers"][0]["metadata"]
    assert so_spec["offsetResetPolicy"] == "earliest"
    assert so_spec.get("scaleToZeroOnInvalidOffset", "false") == "false"
    t_applied = apply_overlay_and_wait_ready(p, kube)
    timeline = scale_cycle(p, kube, 0, "brand-new group", sent_before=ids, lag_since=t_applied)
    timeline["records_waiting_before_scaledobject_s"] = round(t_applied - t_first, 2)
    path = record_timeline("brand-new-group", timeline)
    with capsys.disabled():
        print(f"\n[cluster] brand-new group timeline ({path}): {timeline}")
