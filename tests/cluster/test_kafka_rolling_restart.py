"""A rolling restart of the Kafka brokers under steady load, as an upgrade or a config change does
it: `kubectl rollout restart statefulset/kafka`. The StatefulSet controller replaces one pod at a
time (highest ordinal first) and the next only once the last is Ready, so at most one broker is
away, the bound the PodDisruptionBudget sets for evictions. Each broker leaves by controlled
shutdown (its leaderships move first) and the two replicas left keep min ISR 2. Clients retry
anything unconfirmed under the same Idempotency-Key; nothing acknowledged may be lost or stored
twice, and buy's 503s are reported.
"""
from __future__ import annotations

import time
import uuid

from clusterlib import KAFKA_PODS, POLL_S, SteadyBuyers, assert_exactly_once, record_timeline, wait_until

ROLLOUT_BUDGET_S = 900  # three JVM restarts on a shared 2-core node, each waiting for the last to be Ready


def test_brokers_restarted_one_at_a_time_under_steady_load_lose_nothing_and_store_nothing_twice(stack, kube, capsys):
    before = {name: kube.get("pod", name)["metadata"]["uid"] for name in KAFKA_PODS}
    users = [f"r{uuid.uuid4().hex[:8]}" for _ in range(6)]
    replaced: dict[str, float] = {}
    fewest_ready = len(KAFKA_PODS)

    def rolled() -> bool:
        nonlocal fewest_ready
        pods = {name: kube.get("pod", name) for name in KAFKA_PODS}
        ready = [name for name, pod in pods.items() if pod and not pod["metadata"].get("deletionTimestamp")
                 and kube.condition(pod, "Ready") == "True"]
        fewest_ready = min(fewest_ready, len(ready))
        for name in ready:
            if name not in replaced and pods[name]["metadata"]["uid"] != before[name]:
                replaced[name] = round(time.monotonic() - t_restart, 1)
        return len(replaced) == len(KAFKA_PODS)

    with SteadyBuyers(stack, users) as buyers:
        time.sleep(8.0)  # steady state first
        t_restart = time.monotonic()
        kube.run("rollout", "restart", "statefulset/kafka", "--namespace=purchase")
        wait_until(rolled, ROLLOUT_BUDGET_S, POLL_S, "every broker replaced and Ready")
        kube.run("rollout", "status", "statefulset/kafka", "--namespace=purchase", "--timeout=100s")
        t_done = time.monotonic()
        time.sleep(8.0)  # and steady again
    assert not buyers.errors, buyers.errors
    stored = assert_exactly_once(stack, dict(buyers.sent), timeout_s=300)
    seen = buyers.around(t_restart, t_done)
    timeline = {"purchases": stored, "restart_to_ready_s": replaced, "rollout_s": round(t_done - t_restart, 1),
                "fewest_brokers_ready": fewest_ready, **seen}
    record_timeline("fault-kafka-rolling-restart", timeline)
    with capsys.disabled():
        print(f"\n[node] Kafka brokers restarted one at a time under steady load: {timeline}")
    # One broker away at a time, and buying went on through the whole roll.
    assert fewest_ready >= len(KAFKA_PODS) - 1, timeline
    assert seen["accepted_during_fault"] > 0, timeline
