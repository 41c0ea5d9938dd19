"""Faults on real pods: nothing acknowledged is lost, nothing is stored twice.

- a persist-purchase pod deleted mid-drain (graceful stop: SIGTERM, batch committed, group left);
- its container killed with SIGKILL through containerd (kubelet restarts it; the batch in
  flight is redelivered and absorbed by the unique event id);
- the broker leading the partitions buy writes to deleted under steady load: the two replicas
  left in sync take over (replication 3, min ISR 2), buying goes on while the StatefulSet brings
  the pod back; clients retry any 503 with their Idempotency-Key.
"""
from __future__ import annotations

import threading
import time
import uuid

from clusterlib import (
    COOLDOWN_S,
    KAFKA_PODS,
    POLL_S,
    POLLING_INTERVAL_S,
    SteadyBuyers,
    assert_exactly_once,
    kill_container,
    partition_leaders,
    partition_of,
    record_timeline,
    wait_until,
)
from purchase_common import config


def _purchases_in_background(stack, users: list[str], per_user: int, retry_s: float) -> tuple[dict, list]:
    sent, errors = {}, []

    def one(user):
        try:
            sent[user] = stack.buy(per_user, user=user, retry_s=retry_s)
        except BaseException as exc:  # reported by the test, not swallowed
            errors.append(f"{user}: {exc!r}")
    threads = [threading.Thread(target=one, args=(u,), daemon=True) for u in users]
    for thread in threads:
        thread.start()
    return sent, [threads, errors]


def _join(handle, timeout_s: float) -> None:
    threads, errors = handle
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "purchase senders did not finish"
    assert not errors, errors


def test_consumer_pod_deleted_mid_drain_and_killed_with_sigkill(stack, kube, capsys):
    stack.wait_idle_at_zero(COOLDOWN_S + 4 * POLLING_INTERVAL_S + 60)
    users = [f"f{uuid.uuid4().hex[:8]}" for _ in range(4)]
    sent, handle = _purchases_in_background(stack, users, 250, retry_s=0)
    pod = wait_until(lambda: next(iter(kube.running_consumers()), None), 90, POLL_S, "a running consumer pod")
    time.sleep(1.0)  # mid-drain: records are flowing in and being written
    kube.run("delete", "pod", pod["metadata"]["name"], "--namespace=purchase", "--wait=false")
    t_deleted = time.monotonic()
    replacement = wait_until(lambda: next((p for p in kube.running_consumers()
                                           if p["metadata"]["name"] != pod["metadata"]["name"]
                                           and kube.condition(p, "Ready") == "True"), None),
                             120, POLL_S, "a replacement consumer pod Ready")
    t_replaced = time.monotonic()
    killed = kill_container(replacement)
    wait_until(lambda: (lambda p: p and p["status"]["containerStatuses"][0]["restartCount"] >= 1
                        and p["status"]["containerStatuses"][0]["ready"])(
                            kube.get("pod", replacement["metadata"]["name"])), 120,
               POLL_S, "kubelet restarted the SIGKILLed container")
    t_restarted = time.monotonic()
    _join(handle, 300)
    stored = assert_exactly_once(stack, sent)
    timeline = {"purchases": stored, "graceful_delete_to_replacement_ready_s": round(t_replaced - t_deleted, 1),
                "sigkill_to_restarted_ready_s": round(t_restarted - t_replaced, 1), "killed_container": killed[:12]}
    record_timeline("fault-consumer-pods", timeline)
    with capsys.disabled():
        print(f"\n[node] consumer pod faults: {timeline}")


def _users_led_by(leaders: dict[int, int], victim: int, count: int, prefix: str) -> list[str]:
    """`count` fresh users whose purchases land on partitions `victim` leads."""
    users = []
    while len(users) < count:
        user = f"{prefix}{uuid.uuid4().hex[:8]}"
        if leaders[partition_of(user, len(leaders))] == victim:
            users.append(user)
    return users


def test_broker_leading_buys_partitions_deleted_under_steady_load(stack, kube, capsys):
    """Replication 3, min ISR 2: deleting the broker that leads every partition buy is writing
    loses nothing, duplicates nothing, and buying goes on before the pod is back."""
    leaders = partition_leaders(stack.bootstrap, config.PURCHASES_TOPIC)
    # The broker leading the most partitions; the clients' users all write to partitions it leads.
    victim = max(sorted(set(leaders.values())), key=list(leaders.values()).count)
    pod_name = KAFKA_PODS[victim]
    users = _users_led_by(leaders, victim, 4, "k")
    old_uid = kube.get("pod", pod_name)["metadata"]["uid"]
    with SteadyBuyers(stack, users) as buyers:
        time.sleep(8.0)  # steady state first
        t_deleted = time.monotonic()
        kube.run("delete", "pod", pod_name, "--namespace=purchase", "--wait=false")
        wait_until(lambda: (lambda p: p and p["metadata"]["uid"] != old_uid and kube.condition(p, "Ready") == "True")(
            kube.get("pod", pod_name)), 240, POLL_S, f"{pod_name} back and Ready")
        t_back = time.monotonic()
        time.sleep(8.0)  # and steady again with the broker back
    assert not buyers.errors, buyers.errors
    sent = {u: ids for u, ids in buyers.sent.items()}
    stored = assert_exactly_once(stack, sent, timeout_s=240)
    seen = buyers.around(t_deleted, t_back)
    new_leaders = partition_leaders(stack.bootstrap, config.PURCHASES_TOPIC)
    timeline = {"purchases": stored, "victim": pod_name, "partitions_it_led": sorted(
                    p for p, leader in leaders.items() if leader == victim),
                **{k: seen[k] for k in ("answers_503", "answers_502_504", "no_answer", "longest_gap_between_202s_s")},
                "delete_to_first_202_s": seen["fault_to_first_202_s"],
                "accepted_while_broker_away": seen["accepted_during_fault"],
                "delete_to_pod_ready_s": round(t_back - t_deleted, 1), "leaders_after": new_leaders}
    record_timeline("fault-kafka-leader-pod", timeline)
    with capsys.disabled():
        print(f"\n[node] broker leading buy's partitions deleted under steady load: {timeline}")
    # Two replicas stayed in sync: buying went on before the pod was back.
    assert timeline["accepted_while_broker_away"] > 0, timeline
    assert all(leader >= 0 for leader in new_leaders.values()), "every partition has a leader again"
