"""Faults on real pods: nothing acknowledged is lost, nothing is stored twice.

- a persist-purchase pod deleted mid-drain (graceful stop: SIGTERM, batch committed, group left);
- its container killed with SIGKILL through containerd (kubelet restarts it; the batch in
  flight is redelivered and absorbed by the unique event id);
- the Kafka pod deleted under load (buy answers 503 while the StatefulSet brings it back;
  clients retry with their Idempotency-Key).
"""
from __future__ import annotations

import threading
import time
import uuid

from clusterlib import COOLDOWN_S, POLL_S, POLLING_INTERVAL_S, kill_container, record_timeline, wait_until


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


def _assert_exactly_once(stack, sent: dict, timeout_s: float = 180) -> int:
    wait_until(lambda: all(sorted(stack.stored_ids(u)) == sorted(ids) for u, ids in sent.items()) or None, timeout_s,
               POLL_S, "every acknowledged purchase stored")
    stored = [i for u in sent for i in stack.stored_ids(u)]
    expected = [i for ids in sent.values() for i in ids]
    assert sorted(stored) == sorted(expected), "0 lost, 0 duplicated"
    return len(stored)


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
    stored = _assert_exactly_once(stack, sent)
    timeline = {"purchases": stored, "graceful_delete_to_replacement_ready_s": round(t_replaced - t_deleted, 1),
                "sigkill_to_restarted_ready_s": round(t_restarted - t_replaced, 1), "killed_container": killed[:12]}
    record_timeline("fault-consumer-pods", timeline)
    with capsys.disabled():
        print(f"\n[node] consumer pod faults: {timeline}")


def test_kafka_pod_deleted_under_load(stack, kube, capsys):
    users = [f"k{uuid.uuid4().hex[:8]}" for _ in range(4)]
    sent, handle = _purchases_in_background(stack, users, 150, retry_s=240)
    time.sleep(2.0)
    old_uid = kube.get("pod", "kafka-0")["metadata"]["uid"]
    t_deleted = time.monotonic()
    kube.run("delete", "pod", "kafka-0", "--namespace=purchase", "--wait=false")
    wait_until(lambda: (lambda p: p and p["metadata"]["uid"] != old_uid and kube.condition(p, "Ready") == "True")(
          kube.get("pod", "kafka-0")), 240, POLL_S, "the Kafka pod back and Ready")
    t_back = time.monotonic()
    _join(handle, 420)
    stored = _assert_exactly_once(stack, sent, timeout_s=240)
    timeline = {"purchases": stored, "kafka_delete_to_ready_s": round(t_back - t_deleted, 1)}
    record_timeline("fault-kafka-pod", timeline)
    with capsys.disabled():
        print(f"\n[node] Kafka pod deleted under load: {timeline}")
