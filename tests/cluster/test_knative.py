"""Knative Serving for real: buy and history scale to zero and back through the real activator,
and KPA adds buy pods when concurrency passes its target.

Every request goes through the node's ingress (clusterlib.Revision): Traefik routes it by the
KIngress to the Revision's Service, whose endpoints, while it has no pod, are the activator,
which holds the request while KPA starts one.
"""
from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
from clusterlib import POLL_S, pod_timeline, post_purchase, record_timeline, wait_until

# buy.yaml's scale-down-delay (60 s) and window (60 s), plus the test overlay's grace period.
TO_ZERO_BUDGET_S = 240
# The KPA test's load: LOAD_S, or up to LOAD_MAX_S while KPA's second pod is not Ready yet.
LOAD_S, LOAD_MAX_S = 25, 120


def _at_zero(kube, revision) -> bool:
    return not revision.pods(kube)


def _cold_request(kube, revision, send) -> dict:
    wait_until(lambda: _at_zero(kube, revision), TO_ZERO_BUDGET_S, POLL_S, f"{revision.name} scaled to zero")
    started = time.monotonic()
    response = send()
    answered_s = time.monotonic() - started
    pod = wait_until(lambda: next(iter(revision.pods(kube)), None), 30, POLL_S, f"{revision.name}'s new pod")
    return {"status": response.status_code, "answered_s": round(answered_s, 2), "pod": pod_timeline(pod)}


def test_buy_and_history_scale_to_zero_and_answer_the_first_request_through_the_activator(stack, kube, capsys):
    buy, history = stack.buy_revision, stack.history_revision
    user = "kn" + uuid.uuid4().hex[:8]
    buy_cold = _cold_request(kube, buy, lambda: requests.post(
        f"{buy.url}/api/buy", json={"username": "cold", "userId": user, "price": 1}, timeout=35,
        headers={**buy.headers, "Idempotency-Key": uuid.uuid4().hex}))
    assert buy_cold["status"] == 202, buy_cold
    history_cold = _cold_request(kube, history, lambda: requests.get(
        f"{history.url}/api/user/{user}/purchases", timeout=35, headers=history.headers))
    assert history_cold["status"] == 200, history_cold
    # Warm: the pod is there (serve mode or still through the activator, as KPA decides).
    warm = []
    for _ in range(20):
        started = time.monotonic()
        response = requests.get(f"{history.url}/api/user/{user}/purchases", timeout=10, headers=history.headers)
        warm.append(time.monotonic() - started)
        assert response.status_code == 200
    warm.sort()
    figures = {"buy_cold": buy_cold, "history_cold": history_cold,
               "history_warm_p50_ms": round(warm[len(warm) // 2] * 1000, 1),
               "history_warm_max_ms": round(warm[-1] * 1000, 1)}
    record_timeline("knative-cold-start", figures)
    with capsys.disabled():
        print(f"\n[node] Knative cold start through the activator: {figures}")


def test_kpa_adds_buy_pods_when_concurrency_passes_the_target(stack, kube, capsys):
    buy = stack.buy_revision
    annotations = kube.get("revision.serving.knative.dev", buy.name)["metadata"]["annotations"]
    target = float(annotations["autoscaling.knative.dev/target"])
    max_scale = int(annotations["autoscaling.knative.dev/max-scale"])
    concurrency = 40  # several times target x utilization (10 x 70 %): KPA's panic mode reacts within seconds
    peak, sent, retries = 0, {}, [0]
    stop = threading.Event()
    user = "kpa" + uuid.uuid4().hex[:8]

    def worker(index: int) -> None:
        # Pods starting and stopping under a 2-core load may answer 502 (nothing confirmed):
        # a client retries those with the same Idempotency-Key, so each stays one purchase.
        with requests.Session() as session:
            while not stop.is_set():
                event_id, retried = post_purchase(session, buy, {"username": "kpa", "userId": f"{user}-{index}",
                                                                 "price": 1}, retry_s=60)
                sent.setdefault(index, []).append(event_id)
                retries[0] += retried

    # The load lasts LOAD_S, longer only while no second pod is Ready yet (a busy node starts
    # pods slowly; what is checked is that KPA adds them, not how fast the node runs them).
    started = time.monotonic()
    second_ready_s = None
    with ThreadPoolExecutor(concurrency + 1) as pool:
        futures = [pool.submit(worker, i) for i in range(concurrency)]
        while time.monotonic() - started < (LOAD_MAX_S if second_ready_s is None else LOAD_S):
            peak = max(peak, len([p for p in buy.pods(kube) if kube.condition(p, "Ready") == "True"]))
            if peak >= 2 and second_ready_s is None:
                second_ready_s = round(time.monotonic() - started, 1)
            time.sleep(1)
        stop.set()
        for future in futures:
            future.result()
    load_s = time.monotonic() - started
    accepted = sum(len(ids) for ids in sent.values())
    assert 2 <= peak <= max_scale, f"peak Ready buy pods {peak} (target {target}, max-scale {max_scale})"
    wait_until(lambda: all(sorted(stack.stored_ids(f"{user}-{i}")) == sorted(ids) for i, ids in sent.items()) or None,
               180, POLL_S, f"all {accepted} accepted purchases stored exactly once")
    # After the load, KPA removes the extra pods (scale-down-delay 60 s keeps them a minute).
    t_end = time.monotonic()
    wait_until(lambda: len(buy.pods(kube)) <= 1, 180, POLL_S, "KPA back to at most one buy pod")
    figures = {"concurrency": concurrency, "target": target, "peak_ready_pods": peak,
               "second_pod_ready_s": second_ready_s, "load_s": round(load_s, 1),
               "accepted": accepted, "retried_unconfirmed": retries[0], "req_per_s": round(accepted / load_s, 1),
               "load_end_to_one_pod_s": round(time.monotonic() - t_end, 1)}
    record_timeline("knative-kpa-scale-out", figures)
    with capsys.disabled():
        print(f"\n[node] KPA scale-out of buy: {figures}")
