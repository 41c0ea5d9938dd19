"""A traffic split between two Revisions of history, through the ingress: Knative writes the
split into the KIngress, Traefik's weighted round robin carries it out.

Which Revision answered is read from the functions themselves: each pod counts the requests it
served (`history_requests_total` on its /metrics), so the split is measured where the requests
landed. A steady stream of requests through the ingress runs across both changes (80/20, then
100 % to the new Revision), paused only while a split is counted, and every one of its
requests must be answered 200.

Named to run last: it ends with history as `make deploy` left it (all traffic on its latest
Revision), but on a new Revision, not the one the other tests hold.
"""
from __future__ import annotations

import contextlib
import copy
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests
from clusterlib import NAMESPACE, POLL_S, wait_until

SPLIT = {"old": 80, "new": 20}
REQUESTS = 400
# Traefik's weighted round robin is deterministic per instance; binomial noise for 400 draws at
# 20 % is 8 requests (2 points), so 5 points is well over two standard deviations.
TOLERANCE_POINTS = 5


def _served(kube, revision: str) -> int:
    """history_requests_total summed over the Revision's pods (read on each pod's own port)."""
    total = 0
    for pod in kube.items("pods", f"serving.knative.dev/revision={revision}"):
        ip = pod["status"].get("podIP")
        if not ip or pod["metadata"].get("deletionTimestamp"):
            continue
        text = requests.get(f"http://{ip}:8080/metrics", timeout=10).text
        total += sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                     if line.startswith("history_requests_total{"))
    return total


def _traffic_is(kube, expected: dict[str, int]) -> bool:
    ksvc = kube.get("service.serving.knative.dev", "history")
    status = ksvc.get("status") or {}
    if status.get("observedGeneration") != ksvc["metadata"]["generation"] or kube.condition(ksvc, "Ready") != "True":
        return False
    routed = {t["revisionName"]: t["percent"] for t in status.get("traffic", []) if t.get("percent")}
    return routed == expected


def _on_latest(kube) -> bool:
    ksvc = kube.get("service.serving.knative.dev", "history")
    status = ksvc.get("status") or {}
    latest = status.get("latestCreatedRevisionName")
    return (status.get("observedGeneration") == ksvc["metadata"]["generation"]
            and kube.condition(ksvc, "Ready") == "True" and latest == status.get("latestReadyRevisionName")
            and [(t.get("revisionName"), t.get("percent")) for t in status.get("traffic", [])] == [(latest, 100)])


def _patch(kube, spec: dict) -> None:
    import json
    kube.run("patch", "service.serving.knative.dev/history", f"--namespace={NAMESPACE}", "--type=merge",
             "-p", json.dumps({"spec": spec}))


class SteadyReader:
    """One client reading history through the ingress until stopped; every answer recorded."""

    def __init__(self, revision, user: str):
        self.url = f"{revision.url}/api/user/{user}/purchases"
        self.headers = revision.headers
        self.statuses: Counter = Counter()
        self._stop = threading.Event()
        self._gate = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                with self._gate:
                    try:
                        self.statuses[session.get(self.url, headers=self.headers, timeout=35).status_code] += 1
                    except requests.RequestException as exc:
                        self.statuses[type(exc).__name__] += 1
                time.sleep(0.02)

    @contextlib.contextmanager
    def paused(self):
        """No request of this reader in flight meanwhile, so a count of the split is exact."""
        with self._gate:
            yield

    def __enter__(self) -> SteadyReader:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _split_of(kube, stack, revisions: dict[str, str], user: str, count: int) -> dict[str, int]:
    """Send `count` requests through the ingress; how many each Revision's pods served."""
    before = {role: _served(kube, name) for role, name in revisions.items()}
    url = f"{stack.history_revision.url}/api/user/{user}/purchases"

    def one(_):
        return requests.get(url, headers=stack.history_revision.headers, timeout=35).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = Counter(pool.map(one, range(count)))
    assert statuses == {200: count}, statuses
    served = {role: _served(kube, name) - before[role] for role, name in revisions.items()}
    assert sum(served.values()) == count, (served, "a pod went away while counting")
    return served


def test_history_splits_80_20_then_moves_whole_to_the_new_revision_without_a_failed_request(stack, kube, capsys):
    old = stack.history_revision.name
    new = f"history-split-{uuid.uuid4().hex[:6]}"
    revisions = {"old": old, "new": new}
    user = "split" + uuid.uuid4().hex[:8]
    ksvc = kube.get("service.serving.knative.dev", "history")
    deployed = copy.deepcopy(ksvc["spec"])
    template = ksvc["spec"]["template"]
    env = template["spec"]["containers"][0].setdefault("env", [])
    env.append({"name": "TRAFFIC_SPLIT_TEST", "value": new})  # the change that makes a new Revision
    template["metadata"]["name"] = new
    try:
        with SteadyReader(stack.history_revision, user) as steady:
            _patch(kube, {"template": template,
                          "traffic": [{"revisionName": old, "percent": SPLIT["old"]},
                                      {"revisionName": new, "percent": SPLIT["new"]}]})
            wait_until(lambda: _traffic_is(kube, {old: SPLIT["old"], new: SPLIT["new"]}), 240,
                       POLL_S, f"history split {SPLIT['old']}/{SPLIT['new']} between {old} and {new}")
            with steady.paused():
                split = _split_of(kube, stack, revisions, user, REQUESTS)
            _patch(kube, {"traffic": [{"revisionName": new, "percent": 100}]})
            wait_until(lambda: _traffic_is(kube, {new: 100}), 240, POLL_S, f"history wholly on {new}")
            time.sleep(2)  # Traefik applies the KIngress change, then marks it Ready
            with steady.paused():
                whole = _split_of(kube, stack, revisions, user, 100)
        share = 100 * split["new"] / REQUESTS
        assert abs(share - SPLIT["new"]) <= TOLERANCE_POINTS, (split, share)
        assert whole == {"old": 0, "new": 100}, whole
        assert set(steady.statuses) == {200}, f"requests failed during the changes: {dict(steady.statuses)}"
        with capsys.disabled():
            print(f"\n[node] traffic split through the ingress: {split} of {REQUESTS} ({share:.1f} % new, "
                  f"target {SPLIT['new']} % ± {TOLERANCE_POINTS}); then {whole}; "
                  f"{sum(steady.statuses.values())} steady requests across both changes: {dict(steady.statuses)}")
    finally:
        # Back to the spec `make deploy` applied (Knative refuses a changed template that keeps
        # its name, so the name goes too): a Revision like the first, all traffic on the latest.
        deployed["template"]["metadata"]["name"] = None
        _patch(kube, deployed)
        wait_until(lambda: _on_latest(kube), 240, POLL_S, "history back on its latest Revision, as deployed")
