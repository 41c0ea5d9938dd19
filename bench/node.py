"""make bench-node: Knative Serving on the real node, as issue "Knative for real" asks to measure.

For buy and for history, reached through the node's ingress as a client reaches them (Traefik,
Host purchase.local -> the KIngress route -> the Revision's Service, the activator while it has
no pod):
1. peak pods under a burst of concurrent requests, then the time from the last request until no
   pod serves, with the shipped annotations (window 60 s, scale-down-delay 60 s);
2. cold starts (request sent at zero pods -> answer) split into request -> pod created ->
   scheduled -> container started -> answered (and -> Ready, which kubelet reports only on its
   next probe). Waiting a shipped window between cold starts would take 4 minutes each, so for
   this part the bench sets window 6 s and scale-down-delay 0 s on the Service (a new Revision,
   same image and cold-start path) and puts the shipped values back at the end;
3. warm latency: sequential requests once a pod serves.

The two services run side by side, but one cold start at a time, so they never share the cores
while being timed.

Then, for persist-purchase, KEDA's path (issue "performance", cold start on the node): records
put straight on the topic while no pod runs, timed through KEDA's poll -> Deployment scaled ->
pod created -> scheduled -> container started -> first record stored -> all stored, and back to
zero after cooldownPeriod, with the timings the node overlay deploys.

Last, the "scale-events" part (bench/node_scale_events.py): persist-purchase's group as KEDA
scales it 1 -> N -> 1 under steady purchases through the ingress, per assignor: per scale event
the pause, the records redelivered and e2e p99.

Needs `make cluster-up` and the system deployed (`make test-cluster` or `make bench-node`, which
deploys first, and runs this with CoreDNS as its resolver: the broker is reached by its
in-cluster name). Prints tables; --json writes the figures; --parts picks what to measure.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from purchase_common import config, storage
from purchase_common.events import purchase_record
from purchase_common.schema import Purchase

from bench import node_scale_events, scale_events
from cluster import control
from cluster.observe import CONSUMER, NAMESPACE, Kube, Revision, StepWatch, parse_time, revision_ready
from load import loadgen
from tools.common import poll_until, speaker

SERVICES = ("buy", "history")
FAST_SCALE_DOWN = {"autoscaling.knative.dev/window": "6s", "autoscaling.knative.dev/scale-down-delay": "0s"}
KNATIVE_COLD_START_S = (2.0, 4.0)  # Knative's published kperf cold-start range, for the comparison line
REQUEST_TIMEOUT_S = 60


say = speaker("bench-node", clock=True)


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
    with one_at_a_time, StepWatch(target.kube, f"serving.knative.dev/revision={target.revision.name}") as watch:
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


KNATIVE_STEPS = ("request_to_created_s", "created_to_scheduled_s", "scheduled_to_started_s",
                 "started_to_answered_s", "request_to_ready_s")


def summarise(colds: list[dict], total: str, name: str, steps: tuple[str, ...]) -> dict:
    """Cold starts as p50/p99 of their `total` (as `<name>_p50_s`...) and the median of each step."""
    totals = sorted(c[total] for c in colds)
    return {"cold_starts": len(colds),
            **{f"{name}_{k}_s": round(v, 3) for k, v in loadgen.percentiles(totals, (50, 99)).items()},
            **{f"median_{key}": round(statistics.median(c[key] for c in colds), 3) for key in steps}}


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
        result["cold"] = summarise(colds, "answered_s", "cold", KNATIVE_STEPS)
        result["cold_runs"] = colds
        result["warm_ms"] = warm(target, args.warm)
    finally:
        target.annotate({key: shipped.get(key) for key in FAST_SCALE_DOWN})
    return result


def deployment_scaled(deployment: dict) -> dict[str, bool]:
    return {"scaled": int(deployment.get("spec", {}).get("replicas") or 0) >= 1}


class ConsumerPath:
    """persist-purchase's KEDA path from zero: records land on the topic while no pod runs ->
    KEDA's next poll sees the lag and scales the Deployment to 1 -> the ReplicaSet's pod is
    created, scheduled and started -> the consumer joins the group and stores the records ->
    after cooldownPeriod without lag, back to zero. The records go straight to the broker
    (acks=all), so no buy cold start is inside the figures."""

    def __init__(self, kube: Kube):
        from kafka import KafkaProducer

        self.kube = kube
        self.settings = config.load(kube.get("configmap", "purchase-config")["data"])
        self.timings = kube.get("scaledobject.keda.sh", CONSUMER)["spec"]
        self.mongo = storage.connect(kube.secret_value("mongodb-credentials", "MONGODB_ADMIN_URI"))
        self.purchases = self.mongo[self.settings.mongodb_database][self.settings.mongodb_collection]
        self.producer = KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers, acks="all")

    def close(self) -> None:
        self.producer.close(timeout=10)
        self.mongo.close()

    def idle(self) -> bool:
        return self.kube.replicas() == 0 and not self.kube.consumer_pods()

    def stored(self, user: str) -> int:
        return self.purchases.count_documents({"userId": user})

    def own_steps(self, pod_name: str, user: str, records: int, wall_offset: float) -> dict[str, float] | None:
        """From the consumer's own log lines (milliseconds, this host's clock), as monotonic
        times: connected to Kafka and MongoDB, partitions assigned, the first and the last of
        `user`'s purchases stored; None until all of them are logged."""
        steps, stored = {}, []
        for line in self.kube.run("logs", pod_name, f"--namespace={NAMESPACE}").stdout.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict) or "time" not in entry:
                continue
            at = parse_time(entry["time"]).timestamp() - wall_offset
            if entry.get("msg") == "consumer started":
                steps.setdefault("connected", at)
            elif entry.get("msg") == "partitions assigned":
                steps.setdefault("assigned", at)
            elif entry.get("msg") == "purchase stored" and entry.get("userId") == user:
                stored.append(at)
        if len(steps) != 2 or len(stored) < records:
            return None
        return {**steps, "first_stored": min(stored), "all_stored": max(stored)}

    def cold_start(self, records: int, to_zero_budget_s: float) -> dict:
        poll_until(self.idle, to_zero_budget_s, 0.5, "persist-purchase at zero replicas with no pod")
        user = f"bench-node-{uuid.uuid4().hex[:8]}"
        wall_offset = time.time() - time.monotonic()
        with StepWatch(self.kube, f"app.kubernetes.io/name={CONSUMER}") as pods, \
                StepWatch(self.kube, kind="deployment", name=CONSUMER, steps=deployment_scaled) as deployment:
            time.sleep(0.5)  # both watches' initial lists are in
            # A round lasts about a whole number of KEDA's polls: without a random phase, every
            # round would meet the poll at the same point and time the same share of its wait.
            time.sleep(random.uniform(0, self.timings["pollingInterval"]))
            for index in range(records):
                record = purchase_record(Purchase(f"bench node {index}", user, 100 + index))
                self.producer.send(self.settings.purchases_topic, key=record.key, value=record.value,
                                   headers=record.headers)
            self.producer.flush(timeout=30)
            produced = time.monotonic()
            # Done when the database holds them all; the times come from the consumer's log (the
            # stand-in's count is a scan of the whole collection, too slow to time with).
            poll_until(lambda: self.stored(user) >= records, to_zero_budget_s, 0.1,
                       f"all {records} of {user}'s purchases stored")
            pod_name, pod = min(pods.seen.items(), key=lambda item: item[1]["created"])
            own = poll_until(lambda: self.own_steps(pod_name, user, records, wall_offset), 30, 0.5,
                             f"{pod_name}'s log lines up to {user}'s last purchase stored")
            # Watching on: kubelet may report the container running only after it has stored.
            back_to_zero = poll_until(lambda: self.kube.replicas() == 0 and time.monotonic(), to_zero_budget_s,
                                      0.5, "KEDA back to 0 replicas")
        stored = self.stored(user)  # a scan of the whole collection on the stand-in: once
        if stored != records:
            raise RuntimeError(f"{user}: {stored} documents stored for {records} records")
        scaled = deployment.seen[CONSUMER]["scaled"]
        pod_gone = poll_until(lambda: not self.kube.consumer_pods() and time.monotonic(), 120, 0.5,
                              "the consumer pod gone")
        split = {"produced_to_scaled_s": scaled - produced,          # KEDA's poll
                 "scaled_to_created_s": pod["created"] - scaled,     # the ReplicaSet
                 "created_to_scheduled_s": pod["scheduled"] - pod["created"],
                 "scheduled_to_started_s": pod["started"] - pod["scheduled"],  # containerd, runc
                 "started_to_connected_s": own["connected"] - pod["started"],  # Python, imports, connections
                 "connected_to_assigned_s": own["assigned"] - own["connected"],  # the group join
                 "assigned_to_first_stored_s": own["first_stored"] - own["assigned"],  # fetch, insert_many
                 "first_to_all_stored_s": own["all_stored"] - own["first_stored"],
                 "all_stored_to_replicas_0_s": back_to_zero - own["all_stored"],  # cooldownPeriod
                 "replicas_0_to_pod_gone_s": pod_gone - back_to_zero}
        return {"first_stored_s": round(own["first_stored"] - produced, 3),
                **{key: round(value, 3) for key, value in split.items()}}


CONSUMER_START = ("produced_to_scaled_s", "scaled_to_created_s", "created_to_scheduled_s", "scheduled_to_started_s",
                  "started_to_connected_s", "connected_to_assigned_s", "assigned_to_first_stored_s",
                  "first_to_all_stored_s")
CONSUMER_STOP = ("all_stored_to_replicas_0_s", "replicas_0_to_pod_gone_s")


def bench_consumer(kube: Kube, args) -> dict:
    path = ConsumerPath(kube)
    try:
        say(f"{CONSUMER}: {args.consumer_cold} starts from zero through KEDA, {args.records} records each "
            f"(pollingInterval {path.timings['pollingInterval']} s, cooldownPeriod {path.timings['cooldownPeriod']} s)")
        colds = []
        for index in range(args.consumer_cold):
            colds.append(path.cold_start(args.records, args.to_zero_budget_s))
            say(f"{CONSUMER}: start from zero {index + 1}/{args.consumer_cold}: {colds[-1]}")
    finally:
        path.close()
    return {"records": args.records, "polling_interval_s": path.timings["pollingInterval"],
            "cooldown_period_s": path.timings["cooldownPeriod"],
            **summarise(colds, "first_stored_s", "first_stored", CONSUMER_START + CONSUMER_STOP), "runs": colds}


def format_consumer(r: dict) -> str:
    def medians(keys):
        return "  ".join(f"{key.removesuffix('_s').replace('_to_', '>')} {r[f'median_{key}']:.2f}s" for key in keys)
    return (f"{CONSUMER} through KEDA ({r['cold_starts']} starts from zero, {r['records']} records each, "
            f"pollingInterval {r['polling_interval_s']} s, cooldownPeriod {r['cooldown_period_s']} s):\n"
            f"  records acked > first stored: p50 {r['first_stored_p50_s']:.3f}s, p99 {r['first_stored_p99_s']:.3f}s\n"
            f"  start, medians: {medians(CONSUMER_START)}\n"
            f"  back to zero, medians: {medians(CONSUMER_STOP)}\n"
            f"  (KEDA's poll waits up to pollingInterval for the lag; 'started' is when kubelet reports the "
            f"container running, up to its 1 s relist late; 'connected', 'assigned' and the stores are the "
            f"consumer's own log lines)")


def format_table(results: dict) -> str:
    lines = [f"{'service':<8} {'cold p50':>9} {'cold p99':>9} {'req>created':>11} {'>scheduled':>10} "
             f"{'>started':>9} {'>answered':>9} {'warm p50':>9} {'warm p99':>9} {'peak pods':>9} "
             f"{'last req>0 pods':>15}"]
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
    parts = (*SERVICES, CONSUMER, node_scale_events.PART)
    parser.add_argument("--parts", nargs="+", choices=parts, default=list(parts), help="what to measure (default: all)")
    parser.add_argument("--cold", type=int, default=10, help="cold starts per Knative service (default 10)")
    parser.add_argument("--consumer-cold", type=int, default=5, help=f"{CONSUMER} starts from zero (default 5)")
    parser.add_argument("--records", type=int, default=100,
                        help=f"records per {CONSUMER} start; at most lagThreshold keeps it to one pod (default 100)")
    parser.add_argument("--warm", type=int, default=200, help="sequential warm requests per service")
    parser.add_argument("--concurrency", type=int, default=40, help="clients in the burst (KPA target is 10)")
    parser.add_argument("--burst-s", type=float, default=20)
    parser.add_argument("--to-zero-budget-s", type=float, default=300,
                        help="longest wait for zero pods (shipped: window 60 s + scale-down-delay 60 s + grace)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    node_scale_events.add_arguments(parser)
    args = parser.parse_args(argv)
    if not control.is_up():
        parser.error("the cluster is not up: make cluster-up (and deploy) first")
    kube = Kube(control.read_state())
    one_at_a_time = threading.Lock()
    services = [name for name in SERVICES if name in args.parts]
    results = {}
    if services:
        with ThreadPoolExecutor(len(services)) as pool:
            futures = {name: pool.submit(bench_service, kube, name, args, one_at_a_time) for name in services}
            results = {name: future.result() for name, future in futures.items()}
        print(format_table(results))
    # After the Knative parts, so that no burst shares the cores with a timed start.
    if CONSUMER in args.parts:
        results[CONSUMER] = bench_consumer(kube, args)
        print(format_consumer(results[CONSUMER]))
    # Last: it changes the ScaledObject and the Deployment for its runs (and puts them back).
    if node_scale_events.PART in args.parts:
        results[node_scale_events.PART] = node_scale_events.bench_scale_events(kube, args)
        print(scale_events.table(results[node_scale_events.PART]["runs"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        say(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
