"""make bench-node's "scale-events" part: persist-purchase's consumer group as KEDA scales its
pods 1 -> N -> 1 under steady purchases through the ingress, per assignor (issue 26, deliverable 5).

For each assignor (CONSUMER_ASSIGNOR, set on the Deployment while it has no pod: members of one
group must share a protocol) the bench, from zero pods:
1. pins the ScaledObject to one replica (minReplicaCount = maxReplicaCount = 1) and starts
   steady purchases to buy through the ingress, with the node client's token;
2. once the pod is Ready and the group has caught up, holds `--hold-s` at one pod (the "1 steady"
   row: the same measures with no event, for reference), then pins it to 2, 3, ... N, ... 1, one
   step at a time: KEDA hands the bounds to its HPA, which scales the Deployment (scale-down's
   stabilization window set to 0 for the run, so a step down is not held for minutes). Pinned
   steps put the events at the bench's times instead of wherever the lag happens to cross
   lagThreshold; the group's rebalance is the same either way. A step lasts until the
   Deployment has its replicas, the pods are Ready (or gone) and `--hold-s` more have passed;
3. stops the load, waits for the group to catch up, and puts the ScaledObject back as shipped
   (KEDA then scales to zero after its cooldown).

A scale event is the Deployment's replicas changing; per event, over the step that follows:
the stall (no partition committed while records waited: the pause), the worst partition's pause,
the records redelivered (the pods' purchases_duplicates_total, scraped from each pod every second)
and e2e: buy's request sent -> the group committed past its record (as `make bench`'s e2e),
sampled every 50 ms (bench/scale_events.py).
"""
from __future__ import annotations

import json
import threading
import time
import uuid

from purchase_common import config

from bench import scale_events
from bench.common import record_positions
from cluster.observe import CONSUMER, NAMESPACE, Kube, revision_ready
from load import loadgen
from tools.common import poll_until, speaker
from tools.lag_reader import LagReader

PART = "scale-events"
HEALTH_PORT = 8081  # the consumer's /metrics (k8s/keda/persist-purchase-deployment.yaml)
ASSIGNOR_ENV = "CONSUMER_ASSIGNOR"
STEADY = "1 steady"

say = speaker("bench-node", clock=True)


class ScaleEvents:
    def __init__(self, kube: Kube, args):
        self.kube, self.args = kube, args
        self.settings = config.load(kube.get("configmap", "purchase-config")["data"])
        self.bootstrap = self.settings.kafka_bootstrap_servers
        self.topic, self.group = self.settings.purchases_topic, self.settings.consumer_group
        spec = kube.get("scaledobject.keda.sh", CONSUMER)["spec"]
        self.shipped = {"minReplicaCount": spec.get("minReplicaCount", 0), "maxReplicaCount": spec["maxReplicaCount"],
                        "stabilization": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
                        ["stabilizationWindowSeconds"]}
        self.timings = spec

    # --- what the bench changes, and puts back ---------------------------------------------

    def pin(self, replicas: int | None) -> None:
        """KEDA's bounds at `replicas` with no scale-down delay; None: as shipped."""
        low, high, window = (self.shipped["minReplicaCount"], self.shipped["maxReplicaCount"],
                             self.shipped["stabilization"]) if replicas is None else (replicas, replicas, 0)
        patch = {"spec": {"minReplicaCount": low, "maxReplicaCount": high, "advanced": {
            "horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": window}}}}}}
        self.kube.run("patch", "scaledobject.keda.sh", CONSUMER, f"--namespace={NAMESPACE}", "--type=merge",
                      "-p", json.dumps(patch))

    def use_assignor(self, assignor: str | None) -> None:
        """CONSUMER_ASSIGNOR on the Deployment (None: removed, the shipped default); only at zero pods."""
        setting = f"{ASSIGNOR_ENV}={assignor}" if assignor else f"{ASSIGNOR_ENV}-"
        self.kube.run("set", "env", f"deployment/{CONSUMER}", f"--namespace={NAMESPACE}", setting)

    def at_zero(self) -> bool:
        return self.kube.replicas() == 0 and not self.kube.consumer_pods()

    def wait_at_zero(self) -> None:
        budget = self.timings["cooldownPeriod"] + 4 * self.timings["pollingInterval"] + self.args.step_budget_s
        poll_until(self.at_zero, budget, 1, f"{CONSUMER} at zero pods")

    # --- what the bench watches --------------------------------------------------------------

    def members(self) -> dict[str, str]:
        return {p["metadata"]["name"]: f"http://{p['status']['podIP']}:{HEALTH_PORT}/metrics"
                for p in self.kube.running_consumers() if p["status"].get("podIP")}

    def watch_replicas(self, recording: scale_events.Recording, stop: threading.Event) -> None:
        """Each change of the Deployment's replicas, as a scale event; a run starts at zero, so
        the first (0 -> 1) is the group's start."""
        last = 0
        while not stop.wait(0.5):
            try:
                replicas = self.kube.replicas()
            except Exception:  # one failed API read: the next counts
                continue
            if replicas is not None and replicas != last:
                recording.events.append((recording.now(), f"{last}->{replicas}"))
                say(f"{PART}: {last} -> {replicas} replicas at {recording.now():.1f}s")
                last = replicas

    def step(self, replicas: int) -> None:
        """Pinned to `replicas` until the Deployment has them, Ready (or gone), then `hold_s` more."""
        self.pin(replicas)
        poll_until(lambda: self.kube.replicas() == replicas, self.args.step_budget_s, 0.5,
                   f"KEDA's HPA scales {CONSUMER} to {replicas}")
        poll_until(lambda: len(self.ready_pods()) == replicas == len(self.kube.consumer_pods()),
                   self.args.step_budget_s, 0.5, f"{replicas} {CONSUMER} pods Ready and no other")
        time.sleep(self.args.hold_s)

    def ready_pods(self) -> list[dict]:
        return [p for p in self.kube.running_consumers() if self.kube.condition(p, "Ready") == "True"]

    def caught_up(self, reader: LagReader, slack: int = 0) -> bool:
        """At most `slack` records behind in all (under load the end always moves on)."""
        try:
            offsets = reader.read(self.topic, self.group)
        except Exception:  # the coordinator moving: the next read counts
            return False
        return bool(offsets) and sum(max(p.end - (p.committed or 0), 0) for p in offsets) <= slack

    # --- one run ----------------------------------------------------------------------------

    def run(self, assignor: str) -> dict:
        self.wait_at_zero()
        self.use_assignor(assignor)
        revision = poll_until(lambda: revision_ready(self.kube, "buy"), 300, 0.5, "buy's Revision Ready")
        tag = uuid.uuid4().hex[:6]
        recording = scale_events.Recording()
        sent_at: dict[str, float] = {}

        def body(index: int) -> bytes:
            return json.dumps({"username": "scale events", "userId": f"scale-{tag}-{index % 60}",
                               "price": 1 + index % 50}).encode()

        def accepted(index, status, raw, sent):
            if status == 202:
                sent_at[json.loads(raw)["id"]] = sent - recording.t0

        reader = LagReader(self.bootstrap, timeout_ms=3000)
        start = {p.partition: p.end for p in reader.read(self.topic, self.group)}
        token = revision.headers["Authorization"]
        target = loadgen.Target(revision.url, revision.host, headers={"Authorization": token})
        load = loadgen.PythonLoad(target, requests=10**9, concurrency=self.args.scale_concurrency,
                                  duration_s=loadgen.MAX_DURATION_S, timeout_s=30, rate=self.args.rate,
                                  on_response=accepted, body=body)
        stop_watch = threading.Event()
        watcher = threading.Thread(target=self.watch_replicas, args=(recording, stop_watch), daemon=True)
        loader = threading.Thread(target=load.run, daemon=True)
        say(f"{PART}: {assignor}: {self.args.rate:.0f} purchases/s through the ingress, "
            f"1 -> {self.args.max_consumers} -> 1 pods")
        try:
            with scale_events.Sampler(recording, self.bootstrap, self.topic, self.group, self.members):
                watcher.start()
                loader.start()
                self.step(1)
                poll_until(lambda: self.caught_up(reader, slack=int(self.args.rate)), self.args.step_budget_s, 0.5,
                           "the group caught up with the load (a second's records behind at most)")
                # The reference: one pod and no event, judged as the events are.
                recording.events.append((recording.now(), STEADY))
                time.sleep(self.args.hold_s)
                for replicas in scale_events.scale_steps(self.args.max_consumers):
                    self.step(replicas)
                load.stop.set()
                loader.join(60)
                poll_until(lambda: self.caught_up(reader), self.args.step_budget_s, 0.5,
                           "the group caught up after the load")
        finally:
            load.stop.set()
            stop_watch.set()
            watcher.join(10)
            reader.close()
            self.pin(None)
        positions = record_positions(self.bootstrap, self.topic, start)
        recording.sent = {positions[i]: at for i, at in sent_at.items() if i in positions}
        answers = load.result.counts() if load.result else {}
        result = {"assignor": assignor, **scale_events.analyse(recording), "answers": answers,
                  "accepted": len(sent_at), "found_on_topic": len(recording.sent)}
        say(f"{PART}: {assignor}: {len(sent_at)} accepted, answers {answers}")
        return result


def bench_scale_events(kube: Kube, args) -> dict:
    bench = ScaleEvents(kube, args)
    runs = []
    try:
        for _ in range(args.scale_rounds):  # the assignors in alternation, so a busy spell hits them alike
            for assignor in args.assignors:
                runs.append(bench.run(assignor))
                print(scale_events.table(runs[-1:]), flush=True)
    finally:
        bench.pin(None)
        try:
            bench.wait_at_zero()
        finally:
            bench.use_assignor(None)
    return {"rate": args.rate, "max_consumers": args.max_consumers, "hold_s": args.hold_s,
            "session_timeout_ms": bench.settings.consumer_session_timeout_ms,
            "heartbeat_ms": bench.settings.consumer_heartbeat_ms, "runs": runs}


def add_arguments(parser) -> None:
    group = parser.add_argument_group(PART)
    group.add_argument("--assignors", nargs="+", default=["range", "cooperative-sticky"],
                       choices=["range", "cooperative-sticky"], help="CONSUMER_ASSIGNOR values, alternating")
    group.add_argument("--scale-rounds", type=int, default=2, help="runs of each assignor")
    group.add_argument("--max-consumers", type=int, default=3, help="N in 1 -> N -> 1")
    group.add_argument("--rate", type=float, default=40.0, help="purchases per second through the ingress")
    group.add_argument("--scale-concurrency", type=int, default=8, help="clients sending them")
    group.add_argument("--hold-s", type=float, default=15.0,
                       help="a step's time after its pods are Ready (or gone): the rebalance and after")
    group.add_argument("--step-budget-s", type=float, default=120.0, help="longest wait for one step")
