"""make bench-node: Knative Serving on the real node, as issue "Knative for real" asks to measure.

For buy and for history, reached the way the networking layer reaches a Revision (its
Kubernetes Service, the activator while it has no pod):
1. peak pods under a burst of concurrent requests, then the time from the last request until no
   pod serves, with the shipped annotations (window 60 s, scale-down-delay 60 s);
2. cold starts (request sent at zero pods -> answer) split into request -> pod created ->
   scheduled -> container started -> answered (and -> Ready, which kubelet reports only on its
   next probe). Waiting a shipped window between cold starts would take 4 minutes each, so for
   this part the bench sets window 6 s and scale-down-delay 0 s on the Service (a new Revision,
   same image and cold-start path) and puts the shipped values back at the end;
3. warm latency: sequential requests once a pod serves.

The two services run side by side, but one cold start at a time, so they never share the cores
while being timed. Needs `make cluster-up` and the system deployed (`make test-cluster` or
`make bench-node`, which deploys first). Prints a table; --json writes the figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from cluster import control
from cluster.observe import Kube, PodWatch, Revision, revision_ready
from load import loadgen
from purchase_common.retry import poll_until

SERVICES = ("buy", "history")
FAST_SCALE_DOWN = {"autoscaling.knative.dev/window": "6s", "autoscaling.knative.dev/scale-down-delay": "0s"}
KNATIVE_COLD_START_S = (2.0, 4.0)  # Knative's published kperf cold-start range, for the comparison line
REQUEST_TIMEOUT_S = 60


def say(text: str) -> None:
    print(f"[bench-node {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Target:
    """One Knative Service and how to send it one request."""

    def __init__(self, kube: Kube, name: str, user: str):
        self.kube, self.name, self.user = kube, name, user
        self.revision: Revision = poll_until(lambda: revision_ready(kube, name), 300, 0.5, f"{name}'s Revision Ready")

    def refresh(self, previous: str | None = None) -> None:
        """Wait for the latest Revision to be Ready (a new one after a template change)."""
        self.revision = poll_until(lambda: (r := revision_ready(self.kube, self.name)) and r.name != previous and r,
                                   300, 0.5, f"{self.name}'s new Revision Ready")

    def send(self, session: requests.Session) -> requests.Response:
        headers = dict(self.revision.headers)
        if self.name == "buy":
            headers["Idempotency-Key"] = uuid.uuid4().hex
            return session.post(f"{self.revision.url}/api/buy", headers=headers, timeout=REQUEST_TIMEOUT_S,
                                json={"username": "bench node", "userId": self.user, "price": 1})
        return session.get(f"{self.revision.url}/api/user/{self.user}/purchases?limit=10", headers=headers,
                           timeout=REQUEST_TIMEOUT_S)

    def expected(self) -> int:
        return 202 if self.name == "buy" else 200

    def serving_pods(self) -> list[dict]:
        return self.revision.pods(self.kube)

    def annotate(self, annotations: dict[str, str]) -> None:
        previous = self.revision.name
        patch = {"spec": {"template": {"metadata": {"annotations": annotations}}}}
        self.kube.run("patch", "service.serving.knative.dev", self.name, "--namespace=purchase", "--type=merge",
                      "-p", json.dumps(patch))
        self.refresh(previous)


def burst_then_zero(target: Target, concurrency: int, seconds: float, to_zero_budget_s: float) -> dict:
    """Peak Ready pods under `concurrency` clients for `seconds`, then last request -> no pod."""
    stop_at = time.monotonic() + seconds
    codes: dict[int, int] = {}
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                try:
                    code = target.send(session).status_code
                except requests.RequestException:
                    code = 0
                with lock:
                    codes[code] = codes.get(code, 0) + 1

    peak = 0
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(client) for _ in range(concurrency)]
        while time.monotonic() < stop_at:
            pods = target.serving_pods()
            peak = max(peak, sum(1 for p in pods if target.kube.condition(p, "Ready") == "True"))
            time.sleep(1)
        for future in futures:
            future.result()
    last_request = time.monotonic()
    poll_until(lambda: not target.serving_pods(), to_zero_budget_s, 1, f"{target.name} back to zero pods")
    return {"concurrency": concurrency, "answers": dict(sorted(codes.items())), "peak_ready_pods": peak,
            "last_request_to_zero_pods_s": round(time.monotonic() - last_request, 1)}


def cold_start(target: Target, one_at_a_time: threading.Lock, to_zero_budget_s: float) -> dict:
    """One request sent at zero pods, with the new pod's steps timed by a watch."""
    poll_until(lambda: not target.serving_pods(), to_zero_budget_s, 0.5, f"{target.name} at zero pods")
    with one_at_a_time, PodWatch(target.kube, f"serving.knative.dev/revision={target.revision.name}") as watch:
        time.sleep(0.5)  # the watch's initial (empty) list is in
        with requests.Session() as session:
            sent = time.monotonic()
            response = target.send(session)
            answered = time.monotonic()
        if response.status_code != target.expected():
            raise RuntimeError(f"{target.name} cold request answered {response.status_code}: {response.text[:200]}")
        poll_until(lambda: any("ready" in s for s in watch.seen.values()), 60, 0.2, f"{target.name}'s pod Ready")
    steps = min(watch.seen.values(), key=lambda s: s.get("created", float("inf")))

    def at(step):
        return steps.get(step)
    split = {"request_to_created_s": at("created") - sent,
             "created_to_scheduled_s": at("scheduled") - at("created"),
             "scheduled_to_started_s": at("started") - at("scheduled"),
             "started_to_answered_s": answered - at("started"),
             "request_to_ready_s": at("ready") - sent}
    return {"answered_s": round(answered - sent, 3), **{k: round(v, 3) for k, v in split.items()}}


def warm(target: Target, count: int) -> dict:
    with requests.Session() as session:
        target.send(session)  # a pod is up and this connection open
        latencies = []
        for _ in range(count):
            started = time.monotonic()
            response = target.send(session)
            latencies.append(time.monotonic() - started)
            if response.status_code != target.expected():
                raise RuntimeError(f"{target.name} warm request answered {response.status_code}")
    return {k: None if v is None else round(v * 1000, 2) for k, v in loadgen.percentiles(latencies, (50, 99)).items()}


def summarise(colds: list[dict]) -> dict:
    answered = sorted(c["answered_s"] for c in colds)
    result = {"cold_starts": len(colds),
              **{f"cold_{k}_s": round(v, 3) for k, v in loadgen.percentiles(answered, (50, 99)).items()}}
    for key in ("request_to_created_s", "created_to_scheduled_s", "scheduled_to_started_s",
                "started_to_answered_s", "request_to_ready_s"):
        result[f"median_{key}"] = round(statistics.median(c[key] for c in colds), 3)
    return result


def bench_service(kube: Kube, name: str, args, one_at_a_time: threading.Lock) -> dict:
    target = Target(kube, name, user=f"bench-node-{uuid.uuid4().hex[:8]}")
    shipped = kube.get("service.serving.knative.dev", name)["spec"]["template"]["metadata"]["annotations"]
    say(f"{name}: burst of {args.concurrency} clients for {args.burst_s:.0f} s, then the shipped wait to zero")
    result = {"burst": burst_then_zero(target, args.concurrency, args.burst_s, args.to_zero_budget_s)}
    target.annotate(FAST_SCALE_DOWN)
    try:
        colds = []
        for index in range(args.cold):
            colds.append(cold_start(target, one_at_a_time, args.to_zero_budget_s))
            say(f"{name}: cold start {index + 1}/{args.cold}: {colds[-1]}")
        result["cold"] = summarise(colds)
        result["cold_runs"] = colds
        result["warm_ms"] = warm(target, args.warm)
    finally:
        target.annotate({key: shipped.get(key) for key in FAST_SCALE_DOWN})
    return result


def format_table(results: dict) -> str:
    lines = [f"{'service':<8} {'cold p50':>9} {'cold p99':>9} {'req>created':>11} {'>scheduled':>10} "
             f"{'>started':>9} {'>answered':>9} {'warm p50':>9} {'warm p99':>9} {'peak pods':>9} {'last req>0 pods':>15}"]
    for name, r in results.items():
        c = r["cold"]
        lines.append(f"{name:<8} {c['cold_p50_s']:>8.3f}s {c['cold_p99_s']:>8.3f}s "
                     f"{c['median_request_to_created_s']:>10.2f}s {c['median_created_to_scheduled_s']:>9.2f}s "
                     f"{c['median_scheduled_to_started_s']:>8.2f}s {c['median_started_to_answered_s']:>8.2f}s "
                     f"{r['warm_ms']['p50']:>7.1f}ms {r['warm_ms']['p99']:>7.1f}ms {r['burst']['peak_ready_pods']:>9} "
                     f"{r['burst']['last_request_to_zero_pods_s']:>14.1f}s")
    low, high = KNATIVE_COLD_START_S
    lines.append(f"(Knative's published kperf cold starts: {low:.0f}-{high:.0f} s; splits are medians; "
                 f"Ready comes on kubelet's next probe, after the answer)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, default=10, help="cold starts per service (default 10)")
    parser.add_argument("--warm", type=int, default=200, help="sequential warm requests per service")
    parser.add_argument("--concurrency", type=int, default=40, help="clients in the burst (KPA target is 10)")
    parser.add_argument("--burst-s", type=float, default=20)
    parser.add_argument("--to-zero-budget-s", type=float, default=300,
                        help="longest wait for zero pods (shipped: window 60 s + scale-down-delay 60 s + grace)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if not control.is_up():
        parser.error("the cluster is not up: make cluster-up (and deploy) first")
    kube = Kube(control.read_state())
    one_at_a_time = threading.Lock()
    with ThreadPoolExecutor(len(SERVICES)) as pool:
        futures = {name: pool.submit(bench_service, kube, name, args, one_at_a_time) for name in SERVICES}
        results = {name: future.result() for name, future in futures.items()}
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        say(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
