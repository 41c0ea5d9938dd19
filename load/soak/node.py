"""The node soak's target and faults: the deployed system, hit by pod and container faults.

The target is the system as deployed on the node: clients reach buy's Knative Revision through
the node's ingress (as tests/cluster does: Traefik's NodePort, Host purchase.local), Kafka and
MongoDB are read by their Service names (CoreDNS as the resolver, hence `python -m cluster run`).
Nothing is started or stopped; each run has users of its own, so the counts are exact in a
database other runs share.

The faults delete a persist-purchase pod, SIGKILL a persist-purchase container through
containerd, delete a buy pod, the Kafka broker leading the most partitions (one of three: the
other two stay in sync and take over) and mongodb-0, and freeze a consumer container past the
session timeout. The freeze is `ctr tasks pause`, containerd's cgroup freezer: every process and
thread of the container stops at once (a SIGSTOP reaches only the container's PID 1 and is
forwarded nowhere), and `ctr tasks resume` thaws it as it was, so the group must evict it and
take its partitions over.
"""
from __future__ import annotations

import collections
import threading
import time
import uuid
from pathlib import Path

from purchase_common import config, storage

from cluster import control, node
from cluster.observe import CONSUMER, NAMESPACE, Kube, Revision, revision_ready
from devstack.servers import describe_partitions
from load import loadgen
from load.soak import say
from load.soak.clients import make_purchases
from load.soak.faults import Chaos, FaultRun
from load.soak.observation import first_absent, first_present
from load.soak.plan import (
    BUY_POD_DELETE,
    CONSUMER_CTR_SIGKILL,
    CONSUMER_PAUSE,
    CONSUMER_POD_DELETE,
    KAFKA_POD_DELETE,
    MONGODB_POD_DELETE,
    Options,
    draw_node_plan,
)
from load.soak.report import format_report
from load.soak.run import Soak, session_timeout_s
from load.soak.verdict import Evidence, answers_as_documented, rounded, set_checks, wrong_event_ids
from tools.common import poll_until

USERS = 200
READY_TIMEOUT_S = 240.0    # a deleted pod's replacement, or a restarted container, Ready within this
POD_PICK_TIMEOUT_S = 60.0  # wait this long for a consumer pod no other fault is working on
POLL_S = 1.0               # kubectl reads while waiting for a pod
STACK_READY_TIMEOUT_S = 300.0
MONGODB_TIMEOUT_MS = 60_000
KAFKA_SET, MONGODB_POD = "kafka", "mongodb-0"
# Knative's queue-proxy and activator answer these for a request a pod going away was holding:
# nothing confirmed, so retried under the same key like a 503 (as tests/cluster's UNCONFIRMED).
PLATFORM_UNCONFIRMED = (502, 504)


def build(options: Options, data_dir: Path, kube: Kube) -> Soak:
    """The soak on the node; PlanError when no plan keeps the rules."""
    run_id = uuid.uuid4().hex[:8]
    # Users of this run only: MongoDB on the node keeps every earlier run's purchases.
    purchases = make_purchases(options.rate, options.seconds, run_id, users=f"node-{run_id}", user_count=USERS)
    deployment = NodeDeployment(kube, data_dir, run_id, sorted({p.user_id for p in purchases}))
    plan = draw_node_plan(options.seed, options.seconds, session_timeout_s(deployment.settings))
    return Soak(options, data_dir, deployment, PodFaults(kube, deployment, plan), purchases)


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
    node.Node(control.RUN).ctr("tasks", action, *args, container, timeout_s=30)


class NodeDeployment:
    """The deployed system: buy's Ready Revision, Kafka and MongoDB by their Services, and the
    stored purchases of this run's users."""

    # Every consumer pod has the same client id: a member is told apart by its pod IP.
    member_key = "client_host"

    def __init__(self, kube: Kube, data_dir: Path, run_id: str, users: list[str]):
        self.kube, self.data_dir, self.run_id, self.users = kube, data_dir, run_id, users
        self.settings = config.load(kube.get("configmap", "purchase-config")["data"])
        self.bootstrap = self.settings.kafka_bootstrap_servers
        self.mongodb_uri = kube.secret_value("mongodb-credentials", "MONGODB_ADMIN_URI")
        self.revision: Revision | None = None
        self._mongo = None

    def start(self) -> None:
        say(f"report in {self.data_dir}; this run's users node-{self.run_id}-*")
        started = time.monotonic()
        self.revision = poll_until(lambda: revision_ready(self.kube, "buy"), STACK_READY_TIMEOUT_S, POLL_S,
                                   "the buy Revision Ready")
        brokers = self.kube.get("statefulset.apps", KAFKA_SET)["spec"]["replicas"]
        for name in (*(f"{KAFKA_SET}-{i}" for i in range(brokers)), MONGODB_POD):
            poll_until(lambda n=name: ready(self.kube.get("pod", n)), STACK_READY_TIMEOUT_S, POLL_S, f"{name} Ready")
        say(f"stack Ready in {time.monotonic() - started:.0f}s: buy Revision {self.revision.name} at "
            f"{self.revision.url}, Kafka {self.bootstrap}")

    def close(self) -> None:
        if self._mongo is not None:
            self._mongo.close()

    def endpoint(self) -> loadgen.Target:
        # The node asks for a token (AUTH_MODE=jwt): the soak buys as the node's trusted client.
        return loadgen.Target(self.revision.url, host_header=self.revision.host,
                              headers={"Authorization": self.revision.headers["Authorization"]})

    def buy_pods(self) -> list[dict]:
        return self.revision.pods(self.kube)

    def buy_replicas(self) -> int | None:
        """How many pods KPA wants for the buy Revision now (its Deployment's replicas)."""
        deployment = self.kube.get("deployment", f"{self.revision.name}-deployment")
        return None if deployment is None else int(deployment["spec"].get("replicas", 1))

    def collection(self):
        """With room for FerretDB to scan (it counts by scanning): on the node the store is read
        only after the load, and it holds every earlier run's purchases too."""
        if self._mongo is None:
            self._mongo = storage.connect(self.mongodb_uri, timeout_ms=MONGODB_TIMEOUT_MS)
        return self._mongo[self.settings.mongodb_database][self.settings.mongodb_collection]

    def stored_filter(self) -> dict:
        return {"userId": {"$in": self.users}}

    def log_tails(self, lines: int = 20) -> str:
        result = self.kube.run("logs", f"--namespace={NAMESPACE}", f"--selector=app.kubernetes.io/name={CONSUMER}",
                               f"--tail={lines}", "--prefix", check=False)
        return f"--- {CONSUMER} pods ---\n{result.stdout}{result.stderr}"

    def amend(self, report: dict, evidence: Evidence) -> None:
        report.update(target="node", revision=self.revision.name, users=f"node-{self.run_id}-*",
                      unanswered_at_end=report["totals"]["abandoned_without_answer"])


class PodFaults:
    """The node's faults: pods deleted, consumer containers SIGKILLed and frozen through
    containerd; Kubernetes brings each one back."""

    tail_s = 2 * READY_TIMEOUT_S
    paused_as = "frozen"

    def __init__(self, kube: Kube, deployment: NodeDeployment, plan):
        self.kube, self.deployment, self.plan = kube, deployment, plan
        self.frozen: set[str] = set()        # container ids paused by this soak, resumed on close
        self._led = 0                        # partitions the deleted broker led
        self.claimed: set[str] = set()       # consumer pod uids a fault is working on
        self.claims = threading.Lock()

    def actions(self) -> dict:
        return {CONSUMER_POD_DELETE: self._consumer_pod_delete,
                CONSUMER_CTR_SIGKILL: self._consumer_ctr_sigkill,
                BUY_POD_DELETE: self._buy_pod_delete,
                KAFKA_POD_DELETE: self._kafka_pod_delete,
                MONGODB_POD_DELETE: self._mongodb_pod_delete,
                CONSUMER_PAUSE: self._consumer_pause}

    def lift_all(self) -> None:
        for container in list(self.frozen):   # a frozen consumer must not outlive the soak
            self._thaw(container)

    def _consumer_pods(self) -> list[dict]:
        return self.kube.running_consumers()

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

    def _delete_pod(self, run: FaultRun, chaos: Chaos, victim: dict, pods, release=lambda: None,
                    wanted=lambda: None) -> None:
        """Delete the pod; lifted once a pod of `pods()` that was not there before is Ready, or,
        for a scaled workload (`wanted()`, its replica count), once the Ready pods left are as
        many as it wants: an autoscaler may shrink it instead of replacing the pod."""
        before = {p["metadata"]["uid"] for p in pods()} | {victim["metadata"]["uid"]}
        name = victim["metadata"]["name"]
        run.injected_at = chaos.clock()
        try:
            self.kube.run("delete", "pod", name, f"--namespace={NAMESPACE}", "--wait=false")
        finally:
            release()

        def replaced():
            current = [p for p in pods() if ready(p) and p["metadata"]["uid"] != victim["metadata"]["uid"]]
            new = next((p for p in current if p["metadata"]["uid"] not in before), None)
            if new is None and current and (want := wanted()) is not None and len(current) >= want:
                return current[0]
            return new
        back = poll_until(replaced, READY_TIMEOUT_S, POLL_S, f"a pod in place of {name} Ready")
        run.lifted_at = chaos.clock()
        run.detail.update(pod=name, replacement=back["metadata"]["name"],
                          ready_after_s=round(run.lifted_at - run.injected_at, 1))

    def _consumer_pod_delete(self, run: FaultRun, chaos: Chaos) -> None:
        victim = self._claim_consumer()
        self._delete_pod(run, chaos, victim, self._consumer_pods, release=lambda: self._release(victim))

    def _buy_pod_delete(self, run: FaultRun, chaos: Chaos) -> None:
        buy_pods = self.deployment.buy_pods
        victim = poll_until(lambda: next((p for p in buy_pods() if ready(p)), None), POD_PICK_TIMEOUT_S,
                            POLL_S, "a Ready buy pod")
        self._delete_pod(run, chaos, victim, buy_pods, wanted=self.deployment.buy_replicas)

    def _kafka_pod_delete(self, run: FaultRun, chaos: Chaos) -> None:
        """The broker leading the most partitions of the purchases topic: the two replicas left
        in sync must take its partitions over while the StatefulSet brings it back."""
        name = self._leading_broker()
        run.detail.update(led_partitions=self._led)
        self._delete_pod(run, chaos, self.kube.get("pod", name), self._named_pod(name))

    def _leading_broker(self) -> str:
        """The pod of the broker that leads the most partitions (node.id = the pod's ordinal)."""
        topic = self.deployment.settings.purchases_topic
        leaders = [p["leader_id"] for p in describe_partitions(self.deployment.bootstrap, [topic])[topic]]
        victim = max(sorted(set(leaders)), key=leaders.count)
        self._led = leaders.count(victim)
        return f"{KAFKA_SET}-{victim}"

    def _mongodb_pod_delete(self, run: FaultRun, chaos: Chaos) -> None:
        self._delete_pod(run, chaos, self.kube.get("pod", MONGODB_POD), self._named_pod(MONGODB_POD))

    def _back_ready(self, run: FaultRun, chaos: Chaos, name: str, since: float) -> None:
        """Lifted once the hit consumer pod is Ready again (its /readyz needs Kafka and MongoDB
        too), or once it is deleted: then another fault took it over, and its replacement is
        that fault's to wait for."""
        def settled():
            pod = self.kube.get("pod", name)
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                return "deleted by another fault"
            return "ready" if ready(pod) else None
        outcome = poll_until(settled, READY_TIMEOUT_S, POLL_S, f"{name} Ready again")
        run.lifted_at = chaos.clock()
        run.detail.update(pod=name, ready_after_s=round(run.lifted_at - since, 1) if outcome == "ready" else outcome)

    def _consumer_ctr_sigkill(self, run: FaultRun, chaos: Chaos) -> None:
        """SIGKILL through containerd, as an OOM kill would: kubelet restarts the container."""
        victim = self._claim_consumer()
        name, before = victim["metadata"]["name"], restarts(victim)
        def restarted():
            pod = self.kube.get("pod", name)
            return pod is None or restarts(pod) > before and container_running(pod)
        try:
            container = container_id(victim)
            run.injected_at = chaos.clock()
            ctr_task("kill", container, "--signal=SIGKILL")
            poll_until(restarted, READY_TIMEOUT_S, POLL_S, f"kubelet restarting {name}'s container")
        finally:
            self._release(victim)
        run.detail.update(container=container[:12], restarted_after_s=round(chaos.clock() - run.injected_at, 1))
        self._back_ready(run, chaos, name, run.injected_at)

    def _thaw(self, container: str) -> bool:
        """Resume a frozen container; False when it is gone (kubelet's liveness probe may have
        killed it meanwhile: a frozen container answers no probe)."""
        self.frozen.discard(container)
        try:
            ctr_task("resume", container)
        except Exception as exc:  # a container replaced meanwhile is a finding, not a crash
            say(f"resume of {container[:12]} failed: {exc}")
            return False
        return True

    def _consumer_pause(self, run: FaultRun, chaos: Chaos) -> None:
        victim = self._claim_consumer()
        try:
            container, host = container_id(victim), victim["status"]["podIP"]
            run.injected_at = chaos.clock()
            ctr_task("pause", container)
            self.frozen.add(container)
            try:
                chaos.hold_until_evicted(run, host)
            finally:
                resumed = self._thaw(container)
        finally:
            self._release(victim)
        resumed_at = chaos.clock()
        run.detail.update(host=host, resumed=resumed, held_s=round(resumed_at - run.injected_at, 1))
        self._back_ready(run, chaos, victim["metadata"]["name"], resumed_at)
        # Recovery counts from the thaw, not from Ready: the group's takeover starts there.
        run.lifted_at = resumed_at

    def membership(self, run: FaultRun, samples) -> dict:
        """The frozen pod's eviction and return, told by its pod IP."""
        host = run.detail.get("host")
        if run.fault.kind != CONSUMER_PAUSE or not host:
            return {}
        evicted = first_absent(samples, host, run.injected_at, run.lifted_at)
        rejoined = first_present(samples, host, run.lifted_at)
        return {"evicted_after_s": rounded(evicted - run.injected_at) if evicted is not None else None,
                "rejoined_after_s": rounded(rejoined - run.lifted_at) if rejoined is not None else None}

    def amend(self, report: dict, evidence: Evidence) -> None:
        """The platform's 502/504s counted apart and matched to the faults, and every fault recovered."""
        totals = report["totals"]
        unexpected = totals["unexpected_answers"]
        totals["answered_502_504"] = sum(unexpected.pop(str(s), 0) for s in PLATFORM_UNCONFIRMED)
        totals["502_504_traced"] = trace_platform_answers(evidence.attempts, evidence.runs)
        unrecovered = [f for f in report["faults"] if f["recovery_s"] is None]
        set_checks(report, {
            "answers as documented": answers_as_documented(unexpected, wrong_event_ids(evidence.purchases)),
            "every fault recovered": (not unrecovered, "no 202 or no catching up after: " + ", ".join(
                f"{f['kind']}@{f['planned_start_s']}" for f in unrecovered)),
        })


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
            + "\n502/504 answers through the ingress (retried under the same key): "
            + f"{report['totals']['answered_502_504']}; overlapping each fault's window: {traced['by_fault']}; "
            + f"explained by no fault: {traced['untraced']}"
            + (f" (answered at {traced['untraced_at_s']} s)" if traced["untraced"] else ""))
