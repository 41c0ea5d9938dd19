"""The soak on the node, with pod faults: `python -m cluster run -- python -m load.soak_node
--seed N --rate R --seconds S` (`make soak-node`; the cluster up and the system deployed).

The local soak (load/soak.py) against the deployed system instead of its own servers: clients
offer purchases at a steady rate to buy through the node's ingress, as tests/cluster reaches it
(Traefik's NodePort, Host purchase.local), and retry 503s, 502/504s and missing answers
under the same Idempotency-Key. Meanwhile a chaos plan drawn from the seed (load/chaos_plan.py,
NODE_KINDS, printed at the start) deletes a persist-purchase pod, SIGKILLs a persist-purchase
container through containerd, deletes a buy pod, deletes kafka-0 and mongodb-0, and freezes a
consumer container past the session timeout, overlapping. Kafka and MongoDB are reached by their
Service names, hence `python -m cluster run` (CoreDNS as the resolver).

The freeze is `ctr tasks pause`, containerd's cgroup freezer: every process and thread of the
container stops at once (a SIGSTOP reaches only the container's PID 1 and is forwarded nowhere),
and `ctr tasks resume` thaws it as it was, so the group must evict it and take its partitions over.

Each run uses users of its own, so the counts are exact in a database other runs share: every
purchase answered 202 stored exactly once (by event id), nothing else stored, the dead-letter
topic got nothing, every fault injected and its pod back Ready, and a report gives per-fault
recovery, 503 and no-answer counts and the slowest answer. Exit code 1 when any of that fails.
"""
from __future__ import annotations

import argparse
import collections
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


from cluster import control, node
from cluster.observe import CONSUMER, NAMESPACE, Kube, Revision, revision_ready
from load import chaos_plan, loadgen
from load.soak import (NO_ANSWER, BrokerReads, Clients, FaultRun, Options, Soak, _round, first_absent,
                       first_present, format_report, load_arguments, make_purchases,
                       say, write_report)
from purchase_common import config, storage
from purchase_common.retry import poll_until

DEFAULT_RATE = 20.0        # buy scales to at most 5 pods on a 2-core node; 12,000 purchases in 10 minutes
DEFAULT_SECONDS = 600.0
USERS = 200
READY_TIMEOUT_S = 240.0    # a deleted pod's replacement, or a restarted container, Ready within this
POD_PICK_TIMEOUT_S = 60.0  # wait this long for a consumer pod no other fault is working on
POLL_S = 1.0               # kubectl reads while waiting for a pod
STACK_READY_TIMEOUT_S = 300.0
MONGODB_TIMEOUT_MS = 60_000
KAFKA_POD, MONGODB_POD = "kafka-0", "mongodb-0"
# Knative's queue-proxy and activator answer these for a request a pod going away was holding:
# nothing confirmed, so retried under the same key like a 503 (as tests/cluster's UNCONFIRMED).
PLATFORM_UNCONFIRMED = (502, 504)
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class NodeServices:
    """Where Soak reads the broker and the database (its `servers`): the in-cluster Services.
    The cluster runs them; this soak starts and stops nothing."""
    bootstrap: str
    mongodb_uri: str

    def stop(self) -> None:
        pass


def ready(pod: dict | None) -> bool:
    return bool(pod) and not pod["metadata"].get("deletionTimestamp") and Kube.condition(pod, "Ready") == "True"


def container_id(pod: dict) -> str:
    return pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]


def container_running(pod: dict) -> bool:
    """Its container has a live task in containerd (not waiting out kubelet's restart back-off)."""
    status = (pod["status"].get("containerStatuses") or [{}])[0]
    return bool(status.get("containerID") and (status.get("state") or {}).get("running"))


def restarts(pod: dict | None) -> int:
    return ((pod or {}).get("status", {}).get("containerStatuses") or [{}])[0].get("restartCount", 0)


def ctr_task(action: str, container: str, *args: str) -> None:
    """`ctr tasks <action>` on a container of the node's containerd (kill, pause, resume)."""
    node.ctr(node.Paths(control.RUN), "tasks", action, *args, container, timeout_s=30)


class NodeSoak(Soak):
    """load.soak.Soak on the deployed system: its clients, samplers, figures and verdict; the
    faults, the purchases' users and the reads of the broker and MongoDB are the node's."""

    def __init__(self, options: Options, data_dir: Path, kube: Kube):
        self.options, self.data_dir, self.kube = options, data_dir, kube
        self.settings = config.load(kube.get("configmap", "purchase-config")["data"])
        self.servers = NodeServices(self.settings.kafka_bootstrap_servers,
                                    kube.secret_value("mongodb-credentials", "MONGODB_ADMIN_URI"))
        self.session_timeout_s = self.settings.consumer_session_timeout_ms / 1000
        self.plan = chaos_plan.draw_node_plan(options.seed, options.seconds, self.session_timeout_s)
        self.run_id = uuid.uuid4().hex[:8]
        # Users of this run only: MongoDB on the node keeps every earlier run's purchases.
        self.purchases = make_purchases(options.rate, options.seconds, self.run_id, users=f"node-{self.run_id}",
                                        user_count=USERS)
        self.users = sorted({p.user_id for p in self.purchases})
        self.revision: Revision | None = None
        self.buy, self.consumers, self.paused = None, {}, set()   # Soak's local processes: none here
        self.frozen: set[str] = set()        # container ids paused by this soak, resumed on close
        self.claimed: set[str] = set()       # consumer pod uids a fault is working on
        self.claims = threading.Lock()
        self._reset_run_state()

    # -- the system under test ---------------------------------------------------------------

    def start(self) -> None:
        say(f"report in {self.data_dir}; this run's users node-{self.run_id}-*")
        started = time.monotonic()
        self.revision = poll_until(lambda: revision_ready(self.kube, "buy"), STACK_READY_TIMEOUT_S, POLL_S,
                                   "the buy Revision Ready")
        for name in (KAFKA_POD, MONGODB_POD):
            poll_until(lambda n=name: ready(self.kube.get("pod", n)), STACK_READY_TIMEOUT_S, POLL_S, f"{name} Ready")
        say(f"stack Ready in {time.monotonic() - started:.0f}s: buy Revision {self.revision.name} at "
            f"{self.revision.url}, Kafka {self.servers.bootstrap}")

    def close(self) -> None:
        for container in list(self.frozen):   # a frozen consumer must not outlive the soak
            self._thaw(container)
        super().close()

    def _group_members(self) -> BrokerReads:
        # Every consumer pod has the same client id: a member is told apart by its pod IP.
        return BrokerReads(self.servers.bootstrap,
                           lambda reader: reader.members(self.settings.consumer_group, by="client_host"))

    def collection(self):
        """Soak's collection with room for FerretDB to scan (it counts by scanning): on the node
        it is read only after the load, and it holds every earlier run's purchases too."""
        if self._mongo is None:
            self._mongo = storage.connect(self.servers.mongodb_uri, timeout_ms=MONGODB_TIMEOUT_MS)
        return self._mongo[self.settings.mongodb_database][self.settings.mongodb_collection]

    def stored_filter(self) -> dict:
        return {"userId": {"$in": self.users}}

    def log_tails(self, lines: int = 20) -> str:
        result = self.kube.run("logs", f"--namespace={NAMESPACE}", f"--selector=app.kubernetes.io/name={CONSUMER}",
                               f"--tail={lines}", "--prefix", check=False)
        return f"--- {CONSUMER} pods ---\n{result.stdout}{result.stderr}"

    # -- the faults ---------------------------------------------------------------------------

    def _consumer_pods(self) -> list[dict]:
        return self.kube.running_consumers()

    def _buy_pods(self) -> list[dict]:
        return self.revision.pods(self.kube)

    def _named_pod(self, name: str):
        return lambda: [pod for pod in [self.kube.get("pod", name)] if pod]

    def _claim_consumer(self) -> dict:
        """A running consumer pod no other fault is working on (KEDA may still be adding one).
        A claim lasts only while the pod is being hit (frozen, or its container not yet
        restarted): with one consumer pod, as under a steady load, the faults take turns on it."""
        def free_pod():
            with self.claims:
                pod = next((p for p in self._consumer_pods() if p["metadata"]["uid"] not in self.claimed
                            and container_running(p)), None)
                if pod:
                    self.claimed.add(pod["metadata"]["uid"])
                return pod
        return poll_until(free_pod, POD_PICK_TIMEOUT_S, POLL_S, "a consumer pod no other fault is working on")

    def _release(self, pod: dict) -> None:
        with self.claims:
            self.claimed.discard(pod["metadata"]["uid"])

    def _delete_pod(self, run: FaultRun, victim: dict, pods, release=lambda: None) -> None:
        """Delete the pod; lifted once a pod of `pods()` that was not there before is Ready."""
        before = {p["metadata"]["uid"] for p in pods()} | {victim["metadata"]["uid"]}
        name = victim["metadata"]["name"]
        run.injected_at = self.clock()
        try:
            self.kube.run("delete", "pod", name, f"--namespace={NAMESPACE}", "--wait=false")
        finally:
            release()
        back = poll_until(lambda: next((p for p in pods() if p["metadata"]["uid"] not in before and ready(p)), None),
                          READY_TIMEOUT_S, POLL_S, f"a pod in place of {name} Ready")
        run.lifted_at = self.clock()
        run.detail.update(pod=name, replacement=back["metadata"]["name"],
                          ready_after_s=round(run.lifted_at - run.injected_at, 1))

    def _consumer_pod_delete(self, run: FaultRun) -> None:
        victim = self._claim_consumer()
        self._delete_pod(run, victim, self._consumer_pods, release=lambda: self._release(victim))

    def _buy_pod_delete(self, run: FaultRun) -> None:
        victim = poll_until(lambda: next((p for p in self._buy_pods() if ready(p)), None), POD_PICK_TIMEOUT_S,
                            POLL_S, "a Ready buy pod")
        self._delete_pod(run, victim, self._buy_pods)

    def _kafka_pod_delete(self, run: FaultRun) -> None:
        self._delete_pod(run, self.kube.get("pod", KAFKA_POD), self._named_pod(KAFKA_POD))

    def _mongodb_pod_delete(self, run: FaultRun) -> None:
        self._delete_pod(run, self.kube.get("pod", MONGODB_POD), self._named_pod(MONGODB_POD))

    def _back_ready(self, run: FaultRun, name: str, since: float) -> None:
        """Lifted once the hit consumer pod is Ready again (its /readyz needs Kafka and MongoDB
        too), or once it is deleted: then another fault took it over, and its replacement is
        that fault's to wait for."""
        def settled():
            pod = self.kube.get("pod", name)
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                return "deleted by another fault"
            return "ready" if ready(pod) else None
        outcome = poll_until(settled, READY_TIMEOUT_S, POLL_S, f"{name} Ready again")
        run.lifted_at = self.clock()
        run.detail.update(pod=name, ready_after_s=round(run.lifted_at - since, 1) if outcome == "ready" else outcome)

    def _consumer_ctr_sigkill(self, run: FaultRun) -> None:
        """SIGKILL through containerd, as an OOM kill would: kubelet restarts the container."""
        victim = self._claim_consumer()
        name, before = victim["metadata"]["name"], restarts(victim)
        try:
            container = container_id(victim)
            run.injected_at = self.clock()
            ctr_task("kill", container, "--signal=SIGKILL")
            poll_until(lambda: (lambda p: p is None or restarts(p) > before and container_running(p))(
                self.kube.get("pod", name)), READY_TIMEOUT_S, POLL_S, f"kubelet restarting {name}'s container")
        finally:
            self._release(victim)
        run.detail.update(container=container[:12], restarted_after_s=round(self.clock() - run.injected_at, 1))
        self._back_ready(run, name, run.injected_at)

    def _thaw(self, container: str) -> bool:
        """Resume a frozen container; False when it is gone (kubelet's liveness probe may have
        killed it meanwhile: a frozen container answers no probe)."""
        self.frozen.discard(container)
        try:
            ctr_task("resume", container)
        except Exception as exc:  # noqa: BLE001 - a container replaced meanwhile is a finding, not a crash
            say(f"resume of {container[:12]} failed: {exc}")
            return False
        return True

    def _consumer_pause(self, run: FaultRun) -> None:
        victim = self._claim_consumer()
        try:
            container, host = container_id(victim), victim["status"]["podIP"]
            run.injected_at = self.clock()
            ctr_task("pause", container)
            self.frozen.add(container)
            try:
                self.hold_until_evicted(run, host)
            finally:
                resumed = self._thaw(container)
        finally:
            self._release(victim)
        resumed_at = self.clock()
        run.detail.update(host=host, resumed=resumed, held_s=round(resumed_at - run.injected_at, 1))
        self._back_ready(run, victim["metadata"]["name"], resumed_at)
        # Recovery counts from the thaw, not from Ready: the group's takeover starts there.
        run.lifted_at = resumed_at

    def fault_actions(self) -> dict:
        return {chaos_plan.CONSUMER_POD_DELETE: self._consumer_pod_delete,
                chaos_plan.CONSUMER_CTR_SIGKILL: self._consumer_ctr_sigkill,
                chaos_plan.BUY_POD_DELETE: self._buy_pod_delete,
                chaos_plan.KAFKA_POD_DELETE: self._kafka_pod_delete,
                chaos_plan.MONGODB_POD_DELETE: self._mongodb_pod_delete,
                chaos_plan.CONSUMER_PAUSE: self._consumer_pause}

    def target(self) -> loadgen.Target:
        return loadgen.Target(self.revision.url, host_header=self.revision.host)

    def chaos_join_budget_s(self) -> float:
        return max(30.0, self.options.seconds + 2 * READY_TIMEOUT_S - self.clock())

    # -- the verdict --------------------------------------------------------------------------

    def _fault_figures(self, run: FaultRun, clients: Clients) -> dict:
        figures = super()._fault_figures(run, clients)
        host = run.detail.get("host")
        if run.fault.kind == chaos_plan.CONSUMER_PAUSE and host and run.lifted_at is not None:
            evicted = first_absent(self.group.samples, host, run.injected_at, run.lifted_at)
            rejoined = first_present(self.group.samples, host, run.lifted_at)
            figures["detail"]["evicted_after_s"] = _round(evicted - run.injected_at) if evicted is not None else None
            figures["detail"]["rejoined_after_s"] = _round(rejoined - run.lifted_at) if rejoined is not None else None
        return figures

    def _verify(self, clients: Clients, dlq_before: int, settled_at: float | None) -> dict:
        report = super()._verify(clients, dlq_before, settled_at)
        faults = report["faults"]
        pauses = [f for f in faults if f["kind"] == chaos_plan.CONSUMER_PAUSE]
        unrecovered = [f for f in faults if f["recovery_s"] is None]
        unexpected = report["totals"]["unexpected_answers"]
        report["totals"]["answered_502_504"] = sum(unexpected.pop(str(s), 0) for s in PLATFORM_UNCONFIRMED)
        report["totals"]["502_504_traced"] = trace_platform_answers(clients.attempts, self.runs)
        wrong_ids = sum(p.accepted_at is not None and p.answered_id != p.event_id for p in self.purchases)
        report["checks"].update({name: {"ok": ok, "detail": "" if ok else detail} for name, (ok, detail) in {
            "answers as documented": (not unexpected and not wrong_ids,
                                      f"unexpected statuses {unexpected}, {wrong_ids} 202s with another event id"),
            # Soak's own check looks for its SIGSTOPped process; here the frozen pod, by its IP.
            "paused consumer evicted": (all(f["detail"].get("evicted_after_s") is not None for f in pauses),
                                        "a frozen consumer was never evicted by the group"),
            "every fault recovered": (not unrecovered, "no 202 or no catching up after: " + ", ".join(
                f"{f['kind']}@{f['planned_start_s']}" for f in unrecovered)),
        }.items()})
        report["passed"] = all(check["ok"] for check in report["checks"].values())
        report.update(target="node", revision=self.revision.name, users=f"node-{self.run_id}-*",
                      unanswered_at_end=sum(p.last_status == NO_ANSWER and p.abandoned for p in self.purchases))
        return report


def trace_platform_answers(attempts, runs: list[FaultRun]) -> dict:
    """Each 502/504 (sent, answered) matched to the faults whose window it overlaps: from the
    injection to READY_TIMEOUT_S after the lift (a replaced pod's Revision settles meanwhile).
    Kind -> count; those no fault explains are listed by the time they were answered."""
    by_kind: collections.Counter = collections.Counter()
    untraced = []
    for sent, answered, status, _ in attempts:
        if status not in PLATFORM_UNCONFIRMED:
            continue
        kinds = sorted({run.fault.kind for run in runs if run.injected_at is not None
                        and run.injected_at <= answered
                        and sent <= (run.lifted_at if run.lifted_at is not None else answered) + READY_TIMEOUT_S})
        by_kind.update(kinds)
        if not kinds:
            untraced.append(round(answered, 1))
    return {"by_fault": dict(sorted(by_kind.items())), "untraced": len(untraced), "untraced_at_s": untraced[:50]}


def format_node_report(report: dict) -> str:
    traced = report["totals"]["502_504_traced"]
    return (format_report(report)
            + f"\n502/504 answers through the ingress (retried under the same key): "
            + f"{report['totals']['answered_502_504']}; overlapping each fault's window: {traced['by_fault']}; "
            + f"explained by no fault: {traced['untraced']}"
            + (f" (answered at {traced['untraced_at_s']} s)" if traced["untraced"] else ""))


def parse_args(argv=None) -> argparse.Namespace:
    return load_arguments("python -m load.soak_node", __doc__, DEFAULT_RATE, DEFAULT_SECONDS).parse_args(argv)


def soak(options: Options, data_dir: Path, kube: Kube) -> tuple[dict, str]:
    """One soak on the node: the report, and the consumer logs when it failed."""
    with NodeSoak(options, data_dir, kube) as node_soak:
        report = node_soak.run()
        return report, "" if report["passed"] else node_soak.log_tails()


def main(argv=None) -> int:
    args = parse_args(argv)
    if not control.is_up():
        say("the cluster is not up: make cluster-up, then make node-deploy")
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    options = Options(rate=args.rate, seconds=args.seconds, seed=seed, clients=args.clients)
    data_dir = ROOT / ".run" / f"soak-node-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        report, logs = soak(options, data_dir, Kube(control.read_state()))
    except chaos_plan.PlanError as exc:
        say(f"no chaos plan: {exc}")
        return 2
    if logs:
        print(logs, flush=True)
    print(format_node_report(report), flush=True)
    write_report(report, data_dir, args.json)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
