"""The local soak's target and faults.

The target starts its own Kafka (three KRaft nodes, RF 3, min ISR 2) and FerretDB on free
127.0.0.1 ports (restartable on the same ports, node by node), buy (gunicorn, two workers, so
one can be SIGKILLed and respawned) and two persist-purchase consumer replicas in one group, as
KEDA would run them at two: one is SIGKILLed and restarted, the other SIGSTOPped past the
session timeout, so those two faults can overlap without one cancelling the other, and the
paused replica's partitions must move to the live one.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kafka.errors import KafkaError
from purchase_common import config, storage

from devstack import stack as devstack
from devstack.servers import ensure_topics
from load import loadgen
from load.soak import say
from load.soak.clients import make_purchases
from load.soak.faults import Chaos, FaultRun
from load.soak.observation import first_absent, first_present, group_members, has_client, known
from load.soak.plan import (
    BROKER_RESTART,
    BROKER_ROLLING_RESTART,
    BROKER_SIGKILL,
    BROKERS_TWO_DOWN,
    BUY_WORKER_SIGKILL,
    CONSUMER_SIGKILL,
    CONSUMER_SIGSTOP,
    FERRETDB_STOP,
    Options,
    draw_local_plan,
)
from load.soak.run import Soak, session_timeout_s
from load.soak.verdict import rounded, set_checks
from tools.common import free_port, poll_until

# The replica SIGKILLed and restarted, and the one SIGSTOPped (their Kafka client ids end so).
KILLED_CONSUMER = "persist-1"
PAUSED_CONSUMER = "persist-2"
STORE_TIMEOUT_MS = 2000     # a read of the store during an outage fails fast
BROKERS = 3                 # Kafka as it is run (issue 26): RF 3, min ISR 2
FAULTS_TAIL_S = 300.0       # a fault still on after the load is bounded by its own waits, within this


def build(options: Options, data_dir: Path) -> Soak:
    """The local soak: its own stack, hit by process faults; PlanError when no plan keeps the rules."""
    stack = LocalStack(data_dir)
    plan = draw_local_plan(options.seed, options.seconds, session_timeout_s(stack.settings), options.holds,
                           options.kinds, options.broker_turns)
    purchases = make_purchases(options.rate, options.seconds, f"{options.seed}-{os.getpid()}-{time.time_ns()}")
    return Soak(options, data_dir, stack, ProcessFaults(stack, plan), purchases)


def child_pids(pid: int) -> set[int]:
    """The live children of a process (gunicorn's workers, for its master), read from /proc."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            after_name = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(after_name[1]) == pid and after_name[0] != "Z":
            children.add(int(entry.name))
    return children


def signal_group(pid: int, sig: int) -> None:
    """Signal a process group; one that is gone already is no error."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


class LocalStack:
    """Kafka, FerretDB, buy and two consumer replicas of its own, under data_dir."""

    member_key = "client_id"

    def __init__(self, data_dir: Path):
        self.data_dir, self.log_dir = data_dir, data_dir / "logs"
        self.servers = devstack.RestartableServers(data_dir / "servers", brokers=BROKERS)
        self.env = devstack.function_env(
            devstack.Stack(self.servers.bootstrap, self.servers.mongodb_uri), LOG_LEVEL="WARNING",
            IDEMPOTENCY_STORE_PATH=str(data_dir / "idempotency.sqlite3"))
        self.settings = config.load(self.env)
        self.buy = None
        self.consumers: dict = {}   # role -> its Process
        self._mongo = None

    @property
    def bootstrap(self) -> str:
        return self.servers.bootstrap

    def start(self) -> None:
        say(f"data and logs in {self.data_dir}")
        started = time.monotonic()
        self.servers.start_kafka()
        self.servers.start_ferretdb()
        ensure_topics(self.servers.bootstrap, {self.settings.purchases_topic: config.TOPIC_PARTITIONS,
                                               self.settings.dead_letter_topic: devstack.DEAD_LETTER_PARTITIONS})
        self.buy = devstack.start_buy(self.env, free_port(), self.log_dir)
        # One worker is SIGKILLed while the other serves: the fault needs two.
        def two_workers():
            found = child_pids(self.buy.proc.pid)
            return found if len(found) >= 2 else None
        workers = poll_until(two_workers, 60, 0.2, "two buy worker processes")
        for role in (KILLED_CONSUMER, PAUSED_CONSUMER):
            self.consumers[role] = self.start_consumer(role)
        self._wait_for_a_stable_group()
        say(f"stack up in {time.monotonic() - started:.0f}s: Kafka {self.servers.bootstrap}, FerretDB "
            f"{self.servers.mongo_port}, buy :{self.buy.port} (workers {sorted(workers)}), consumers "
            f"{', '.join(f'{r} pid {p.proc.pid}' for r, p in self.consumers.items())}")

    def _wait_for_a_stable_group(self) -> None:
        reads = group_members(self.bootstrap, self.settings.consumer_group, self.member_key)
        def both_joined():
            try:
                state, members = reads()
            except KafkaError:
                return None
            return state == "Stable" and all(has_client(members, self.client_id(r)) for r in self.consumers)
        try:
            poll_until(both_joined, 90, 0.5, "both consumer replicas in a stable group")
        finally:
            reads.close()

    def client_id(self, role: str) -> str:
        return f"{self.settings.kafka_client_id}-{role}"

    def start_consumer(self, role: str):
        return devstack.start_consumer(dict(self.env, KAFKA_CLIENT_ID=self.client_id(role)), free_port(),
                                       self.log_dir, name=role)

    def endpoint(self) -> loadgen.Target:
        return loadgen.Target(f"http://127.0.0.1:{self.buy.port}")

    def collection(self):
        """The purchases collection through one client, which rides out FerretDB's restarts;
        a short server-selection timeout, so a sample during an outage fails fast."""
        if self._mongo is None:
            self._mongo = storage.connect(self.servers.mongodb_uri, timeout_ms=STORE_TIMEOUT_MS)
        return self._mongo[self.settings.mongodb_database][self.settings.mongodb_collection]

    def stored_filter(self) -> dict:
        """All of the stored purchases: the database is this run's own."""
        return {}

    def log_tails(self, lines: int = 20) -> str:
        parts = []
        for process in [self.buy, *self.consumers.values()]:
            if process is not None and process.log.exists():
                text = process.log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {process.name} ({process.log}) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def amend(self, report: dict, evidence) -> None:
        """Nothing beyond the common report."""

    def close(self) -> None:
        for process in [*self.consumers.values(), self.buy]:
            if process is not None:
                process.stop()
        if self._mongo is not None:
            self._mongo.close()
        self.servers.stop()


class ProcessFaults:
    """The local soak's faults: signals to the stack's processes, the broker and FerretDB
    stopped and started on the same ports."""

    tail_s = FAULTS_TAIL_S
    paused_as = "SIGSTOPped"

    def __init__(self, stack: LocalStack, plan):
        self.stack, self.plan = stack, plan
        self.paused: set[int] = set()

    def actions(self) -> dict:
        return {CONSUMER_SIGKILL: self._consumer_sigkill,
                BUY_WORKER_SIGKILL: self._buy_worker_sigkill,
                BROKER_RESTART: self._broker_restart,
                BROKER_SIGKILL: self._broker_sigkill,
                BROKERS_TWO_DOWN: self._brokers_two_down,
                BROKER_ROLLING_RESTART: self._broker_rolling_restart,
                FERRETDB_STOP: self._ferretdb_stop,
                CONSUMER_SIGSTOP: self._consumer_sigstop}

    def lift_all(self) -> None:
        for pid in list(self.paused):  # a stopped process would sit out SIGTERM
            signal_group(pid, signal.SIGCONT)

    def _consumer_sigkill(self, run: FaultRun, chaos: Chaos) -> None:
        process = self.stack.consumers[KILLED_CONSUMER]
        run.injected_at = chaos.clock()
        signal_group(process.proc.pid, signal.SIGKILL)
        process.proc.wait(timeout=10)
        chaos.wait(run.fault.hold_s)
        restarting = chaos.clock()
        self.stack.consumers[KILLED_CONSUMER] = self.stack.start_consumer(KILLED_CONSUMER)
        run.lifted_at = chaos.clock()
        run.detail.update(killed_pid=process.proc.pid, restart_s=round(run.lifted_at - restarting, 1))

    def _buy_worker_sigkill(self, run: FaultRun, chaos: Chaos) -> None:
        master = self.stack.buy.proc.pid
        workers = child_pids(master)
        victim = min(workers)
        run.injected_at = chaos.clock()
        os.kill(victim, signal.SIGKILL)
        def respawned_workers():
            now = child_pids(master)
            return now - workers if len(now) >= len(workers) and victim not in now else None
        respawned = poll_until(respawned_workers, 60, 0.05, "gunicorn respawning the killed worker")
        run.lifted_at = chaos.clock()
        run.detail.update(killed_pid=victim, respawned_pid=min(respawned))

    def _broker_restart(self, run: FaultRun, chaos: Chaos) -> None:
        run.injected_at = chaos.clock()
        self.stack.servers.stop_kafka()
        stopped = chaos.clock()
        chaos.wait(run.fault.hold_s)
        restarting = chaos.clock()
        self.stack.servers.start_kafka()
        run.lifted_at = chaos.clock()
        run.detail.update(stop_s=round(stopped - run.injected_at, 1), restart_s=round(run.lifted_at - restarting, 1))

    def _busiest_leader(self) -> int:
        """The node leading most partitions of the purchases topic (buy writes to them all)."""
        leaders = self.stack.servers.kafka.leaders(self.stack.settings.purchases_topic)
        running = self.stack.servers.kafka.running()
        return max(running, key=lambda node: sum(leader == node for leader in leaders.values()))

    def _broker_sigkill(self, run: FaultRun, chaos: Chaos) -> None:
        cluster = self.stack.servers.kafka
        victim = self._busiest_leader()
        run.injected_at = chaos.clock()
        cluster.kill_node(victim)
        chaos.wait(run.fault.hold_s)
        restarting = chaos.clock()
        cluster.start_node(victim)
        run.lifted_at = chaos.clock()
        run.detail.update(node=victim, restart_s=round(run.lifted_at - restarting, 1))

    def _brokers_two_down(self, run: FaultRun, chaos: Chaos) -> None:
        cluster = self.stack.servers.kafka
        first = self._busiest_leader()
        second = next(node for node in cluster.running() if node != first)
        run.injected_at = chaos.clock()
        cluster.kill_node(first)
        cluster.kill_node(second)
        run.detail["two_down_at_s"] = round(chaos.clock(), 2)
        chaos.wait(run.fault.hold_s)
        restarting = chaos.clock()
        run.detail["restarting_at_s"] = round(restarting, 2)
        cluster.start_node(second)  # the quorum back: buying resumes
        run.lifted_at = chaos.clock()
        cluster.start_node(first)
        run.detail.update(nodes=[first, second], one_back_s=round(run.lifted_at - restarting, 1),
                          both_back_s=round(chaos.clock() - restarting, 1))

    def _broker_rolling_restart(self, run: FaultRun, chaos: Chaos) -> None:
        """Each node stopped (a controlled shutdown) and started, the next once every replica is in sync."""
        cluster = self.stack.servers.kafka
        run.injected_at = chaos.clock()
        each = []
        for node in cluster.running():
            started = chaos.clock()
            cluster.stop_node(node)
            cluster.start_node(node)
            cluster.wait_in_sync()
            each.append(round(chaos.clock() - started, 1))
        run.lifted_at = chaos.clock()
        run.detail.update(per_node_s=each)

    def _ferretdb_stop(self, run: FaultRun, chaos: Chaos) -> None:
        run.injected_at = chaos.clock()
        self.stack.servers.stop_ferretdb()
        chaos.wait(run.fault.hold_s)
        self.stack.servers.start_ferretdb()
        run.lifted_at = chaos.clock()

    def _consumer_sigstop(self, run: FaultRun, chaos: Chaos) -> None:
        pid = self.stack.consumers[PAUSED_CONSUMER].proc.pid
        run.injected_at = chaos.clock()
        signal_group(pid, signal.SIGSTOP)
        self.paused.add(pid)
        try:
            chaos.hold_until_evicted(run, self.stack.client_id(PAUSED_CONSUMER))
        finally:
            signal_group(pid, signal.SIGCONT)
            self.paused.discard(pid)
        run.lifted_at = chaos.clock()
        run.detail["held_s"] = round(run.lifted_at - run.injected_at, 1)

    def membership(self, run: FaultRun, samples) -> dict:
        """The paused replica's eviction and return; the killed one's return under a new member id."""
        if run.fault.kind == CONSUMER_SIGSTOP:
            client_id = self.stack.client_id(PAUSED_CONSUMER)
            evicted = first_absent(samples, client_id, run.injected_at, run.lifted_at)
            rejoined = first_present(samples, client_id, run.lifted_at)
            return {"evicted_after_s": rounded(evicted - run.injected_at) if evicted is not None else None,
                    "rejoined_after_s": rounded(rejoined - run.lifted_at) if rejoined is not None else None}
        if run.fault.kind == CONSUMER_SIGKILL:
            client_id = self.stack.client_id(KILLED_CONSUMER)
            before = {mid for t, members in known(samples, 0, run.injected_at) for cid, mid in members
                      if cid == client_id}
            rejoined = first_present(samples, client_id, run.injected_at, excluding=before)
            return {"rejoined_after_s": rounded(rejoined - run.lifted_at) if rejoined is not None else None}
        return {}

    def amend(self, report: dict, evidence) -> None:
        """With two of three brokers down no attempt may be answered 202 (min ISR 2): none sent
        after the second went and answered before one was restarted."""
        acknowledged = 0
        for run in evidence.runs:
            if run.fault.kind == BROKERS_TWO_DOWN and "restarting_at_s" in run.detail:
                down, back = run.detail["two_down_at_s"], run.detail["restarting_at_s"]
                acknowledged += sum(1 for sent, answered, status, _ in evidence.attempts
                                    if status == 202 and sent >= down and answered <= back)
        set_checks(report, {"no 202 with two brokers down": (
            acknowledged == 0, f"{acknowledged} purchases answered 202 with one broker of three")})
