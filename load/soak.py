"""All faults at once, in one soak: `python -m load.soak --rate R --seconds S --seed N [--json FILE]`.

Starts its own Kafka and FerretDB on free 127.0.0.1 ports (restartable on the same ports),
buy (gunicorn, two workers, so one can be SIGKILLed and respawned) and two persist-purchase
consumer replicas in one group, as KEDA would run them at two: one is SIGKILLed and restarted,
the other SIGSTOPped past the session timeout, so those two faults can overlap without one
cancelling the other, and the paused replica's partitions must move to the live one.

Clients offer purchases at a steady rate, each with its own Idempotency-Key, and retry 503s,
connection errors and missing answers under the same key with capped backoff until a 202 or
the purchase's deadline. Meanwhile a chaos plan drawn from the seed (load/chaos_plan.py,
printed at the start) SIGKILLs a consumer, SIGKILLs a buy worker, restarts the broker, stops
FerretDB and SIGSTOPs the other consumer, overlapping. At the end, once the stored count has
settled: every purchase answered 202 is stored exactly once, nothing else is stored, the
dead-letter topic got nothing, and a report gives per-fault recovery, 503 and no-answer counts
and the slowest answer. Exit code 1 when any of that fails.
"""
from __future__ import annotations

import argparse
import collections
import heapq
import json
import math
import os
import queue
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kafka.errors import KafkaError
from pymongo.errors import PyMongoError

from devstack import stack as devstack
from devstack.servers import ROOT, Process, ensure_topics, free_port
from load import chaos_plan, loadgen
from load.chaos_plan import Fault, Holds
from purchase_common import config, storage
from purchase_common.events import event_id_for
from purchase_common.retry import Backoff, poll_until
from tools.lag_reader import LagReader

DEFAULT_RATE = 90.0        # with DEFAULT_SECONDS: 54,000 purchases over 10 minutes
DEFAULT_SECONDS = 600.0
REQUEST_TIMEOUT_S = 10.0   # an attempt unanswered this long counts as "no answer" and is retried
MAX_CLIENT_THREADS = 1000
PURCHASE_DEADLINE_S = 180.0  # a purchase is retried this long after its slot, then abandoned
RETRY_CAP_S = 5.0          # longest wait between two attempts of one purchase (Retry-After included)
USERS = 500
NO_ANSWER = 0              # the status recorded for an attempt without an HTTP answer (loadgen's convention)
SETTLE_TIMEOUT_S = 300.0   # after the load, wait at most this long for the stored count to settle
SETTLE_QUIET_S = 5.0       # settled: no lag this long, then every 202 stored
# Stored progress is read from the broker: the consumer commits a record only once it is stored,
# and FerretDB counts by scanning (seconds per count at tens of thousands of documents).
OFFSETS_SAMPLE_S = 1.0
GROUP_SAMPLE_S = 0.5
PROGRESS_EVERY_S = 15.0
# A pause whose member the group has not evicted by the planned SIGCONT is held on this long
# at most (past the session timeout): the fault is there to prove eviction and takeover.
EVICTION_GRACE_S = 30.0
# The replica SIGKILLed and restarted, and the one SIGSTOPped (their Kafka client ids end so).
KILLED_CONSUMER = "persist-1"
PAUSED_CONSUMER = "persist-2"
# Group states in which a member list is the coordinator's real view (not a group still loading).
KNOWN_GROUP_STATES = {"Stable", "PreparingRebalance", "CompletingRebalance", "Empty"}


def say(message: str) -> None:
    print(f"[soak] {message}", flush=True)


def client_threads(rate: float) -> int:
    """Enough threads that purchases are still offered on time when every attempt in flight
    waits out the request timeout (buy queueing behind a dead broker), plus room for retries."""
    return min(MAX_CLIENT_THREADS, math.ceil(rate * REQUEST_TIMEOUT_S) + 32)


@dataclass
class Options:
    rate: float = DEFAULT_RATE
    seconds: float = DEFAULT_SECONDS
    seed: int = 0
    holds: Holds = Holds()
    clients: int | None = None   # client threads; None: client_threads(rate)


@dataclass
class Purchase:
    index: int
    user_id: str
    username: str
    price_cents: int
    key: str
    event_id: str        # what buy derives from (userId, Idempotency-Key): the same for every retry
    offered_at: float    # its slot in the steady rate, seconds after the load started
    attempts: int = 0
    first_sent_at: float | None = None
    accepted_at: float | None = None
    answered_id: str | None = None
    last_status: int | None = None
    abandoned: bool = False
    backoff: Backoff = field(default_factory=lambda: Backoff(cap_s=RETRY_CAP_S))

    @property
    def body(self) -> bytes:
        return json.dumps({"username": self.username, "userId": self.user_id, "price": self.price_cents / 100},
                          separators=(",", ":")).encode()


def make_purchases(rate: float, seconds: float, run_id: str, users: str = "soak",
                   user_count: int = USERS) -> list[Purchase]:
    """One purchase per slot, round-robin over user_count users `<users>-<n>`, keys unique to the run."""
    purchases = []
    for index in range(round(rate * seconds)):
        user_id, key = f"{users}-{index % user_count}", f"soak-{run_id}-{index}"
        purchases.append(Purchase(index, user_id, f"soak user {index % user_count}", 100 + index % 9999, key,
                                  event_id_for(user_id, key), offered_at=index / rate))
    return purchases


class Clients:
    """Offers each purchase at its slot and retries it under its own Idempotency-Key until a
    202 or its deadline. One dispatcher releases due work to a pool of threads; a purchase
    offered for the first time goes before due retries, so the offered rate stays steady
    while retries back off."""

    FIRST, RETRY, STOP = 0, 1, 2

    def __init__(self, target: loadgen.Target, purchases: list[Purchase], threads: int, clock):
        self.target, self.purchases, self.threads, self.clock = target, purchases, threads, clock
        self.work: queue.PriorityQueue = queue.PriorityQueue()
        self.retries: list[tuple[float, int]] = []   # heap of (due, purchase index)
        self.changed = threading.Condition()
        self.outstanding = 0                         # released to the pool, not finished
        self.attempts: list[tuple[float, float, int, int]] = []  # (sent, answered, status, index)
        self.stop = threading.Event()
        self.done = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._attempts, name=f"client-{i}", daemon=True)
                         for i in range(self.threads)]
        self._threads.append(threading.Thread(target=self._dispatch, name="dispatcher", daemon=True))
        for thread in self._threads:
            thread.start()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _dispatch(self) -> None:
        upcoming = 0
        try:
            while not self.stop.is_set():
                now = self.clock()
                with self.changed:
                    while upcoming < len(self.purchases) and self.purchases[upcoming].offered_at <= now:
                        self.work.put((self.FIRST, self.purchases[upcoming].offered_at, upcoming))
                        upcoming += 1
                        self.outstanding += 1
                    while self.retries and self.retries[0][0] <= now:
                        due, index = heapq.heappop(self.retries)
                        self.work.put((self.RETRY, due, index))
                        self.outstanding += 1
                    if upcoming == len(self.purchases) and not self.retries and not self.outstanding:
                        return
                    next_due = min(self.purchases[upcoming].offered_at if upcoming < len(self.purchases) else now + 1,
                                   self.retries[0][0] if self.retries else now + 1)
                    self.changed.wait(timeout=min(max(next_due - now, 0.0), 0.5))
        finally:
            self.done.set()
            for _ in range(self.threads):
                self.work.put((self.STOP, 0.0, -1))

    def _attempts(self) -> None:
        while True:
            kind, _, index = self.work.get()
            if kind == self.STOP:
                return
            retry_at = self._attempt(self.purchases[index])
            with self.changed:
                self.outstanding -= 1
                if retry_at is not None:
                    heapq.heappush(self.retries, (retry_at, index))
                self.changed.notify()

    def _attempt(self, purchase: Purchase) -> float | None:
        """One POST; the time to try again, or None when the purchase is finished."""
        sent = self.clock()
        if purchase.first_sent_at is None:
            purchase.first_sent_at = sent
        purchase.attempts += 1
        status, headers, body = NO_ANSWER, {}, b""
        # A connection per attempt: no idle keep-alive connection closed by the server can pass
        # for a missing answer, and a killed worker's connections die with it.
        conn = loadgen.HttpConnection(self.target, REQUEST_TIMEOUT_S)
        try:
            status, headers, body = conn.request_with_headers(
                loadgen.build_request(self.target, purchase.body, {"Idempotency-Key": purchase.key}))
        except (OSError, ValueError, IndexError):
            status = NO_ANSWER
        finally:
            conn.close()
        answered = self.clock()
        self.attempts.append((sent, answered, status, purchase.index))
        purchase.last_status = status
        if status == 202:
            purchase.accepted_at = answered
            try:
                purchase.answered_id = json.loads(body)["id"]
            except (ValueError, KeyError, TypeError):
                purchase.answered_id = None
            return None
        if status != NO_ANSWER and status < 500:
            return None  # refused: final, and reported as an unexpected answer
        delay = purchase.backoff.delay()
        if status == 503:
            delay = max(delay, min(float(headers.get("retry-after") or 0), RETRY_CAP_S))
        if self.stop.is_set() or answered + delay > purchase.offered_at + PURCHASE_DEADLINE_S:
            purchase.abandoned = True
            return None
        return answered + delay


class Sampler:
    """Calls `read` every interval on a thread of its own and keeps (t, value); a failed read
    is kept as (t, None)."""

    def __init__(self, name: str, read, interval_s: float, clock):
        self.read, self.interval_s, self.clock = read, interval_s, clock
        self.samples: list[tuple[float, object]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                value = self.read()
            except Exception:  # noqa: BLE001 - mid-outage any client may raise anything; a gap is data here
                value = None
            self.samples.append((self.clock(), value))
            self.stop.wait(self.interval_s)


class BrokerReads:
    """Calls read(LagReader), with a fresh admin client after a failure (the broker restarts
    under it)."""

    def __init__(self, bootstrap: str, read):
        self.bootstrap, self.read = bootstrap, read
        self.reader: LagReader | None = None

    def __call__(self):
        try:
            if self.reader is None:
                self.reader = LagReader(self.bootstrap, timeout_ms=2000)
            return self.read(self.reader)
        except KafkaError:
            self.close()
            raise

    def close(self) -> None:
        if self.reader is not None:
            try:
                self.reader.close()
            except KafkaError:
                pass
            self.reader = None


def written_and_committed(reader: LagReader, topic: str, group: str) -> tuple[int, int]:
    """Records written to the topic and records the group committed (i.e. stored), over its partitions."""
    partitions = reader.read(topic, group)
    return sum(p.end for p in partitions), sum(p.committed or 0 for p in partitions)


def known(samples, since: float, until: float = float("inf")):
    """The group samples in [since, until] that show the coordinator's real view: (t, members)."""
    return [(t, value[1]) for t, value in samples
            if since <= t <= until and value is not None and value[0] in KNOWN_GROUP_STATES]


def has_client(members, client_id: str) -> bool:
    return any(cid == client_id for cid, _ in members)


def first_absent(samples, client_id: str, since: float, until: float = float("inf")) -> float | None:
    """When the group first showed no member with this client id in two reads in a row."""
    views = known(samples, since, until)
    for (t, members), (_, after) in zip(views, views[1:]):
        if not has_client(members, client_id) and not has_client(after, client_id):
            return t
    return None


def first_present(samples, client_id: str, since: float, excluding: set[str] = frozenset()) -> float | None:
    """When the group first showed a member with this client id (and a member id not in `excluding`)."""
    for t, members in known(samples, since):
        if any(cid == client_id and mid not in excluding for cid, mid in members):
            return t
    return None


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


@dataclass
class FaultRun:
    fault: Fault
    injected_at: float | None = None
    lifted_at: float | None = None
    detail: dict = field(default_factory=dict)
    error: str | None = None


class Soak:
    """The servers, the functions, the clients, the chaos and the verdict of one soak.
    Use as a context manager: everything it started is stopped on the way out."""

    def __init__(self, options: Options, data_dir: Path):
        self.options, self.data_dir = options, data_dir
        self.log_dir = data_dir / "logs"
        self.servers = devstack.RestartableServers(data_dir / "servers")
        self.env = devstack.function_env(
            devstack.Stack(self.servers.bootstrap, self.servers.mongodb_uri), LOG_LEVEL="WARNING",
            IDEMPOTENCY_STORE_PATH=str(data_dir / "idempotency.sqlite3"))
        self.settings = config.load(self.env)
        self.session_timeout_s = self.settings.consumer_session_timeout_ms / 1000
        self.plan = chaos_plan.draw_plan(options.seed, options.seconds, self.session_timeout_s, options.holds)
        self.purchases = make_purchases(options.rate, options.seconds, f"{options.seed}-{os.getpid()}-{time.time_ns()}")
        self.buy: Process | None = None
        self.consumers: dict[str, Process] = {}
        self.paused: set[int] = set()
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        """The run's own state: one FaultRun per planned fault, the clock, no samplers yet."""
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.runs = [FaultRun(fault) for fault in self.plan]
        self.offsets = self.group = None
        self._mongo = None

    # -- the system under test ---------------------------------------------------------------

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def __enter__(self) -> Soak:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

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
            self.consumers[role] = self._start_consumer(role)
        reader = self._group_members()
        try:
            def both_joined():
                try:
                    state, members = reader()
                except KafkaError:
                    return None
                return state == "Stable" and all(has_client(members, self.client_id(r)) for r in self.consumers)
            poll_until(both_joined, 90, 0.5, "both consumer replicas in a stable group")
        finally:
            reader.close()
        say(f"stack up in {time.monotonic() - started:.0f}s: Kafka {self.servers.bootstrap}, FerretDB "
            f"{self.servers.mongo_port}, buy :{self.buy.port} (workers {sorted(workers)}), consumers "
            f"{', '.join(f'{r} pid {p.proc.pid}' for r, p in self.consumers.items())}")

    def _group_members(self) -> BrokerReads:
        return BrokerReads(self.servers.bootstrap, lambda reader: reader.members(self.settings.consumer_group))

    def _offsets(self) -> BrokerReads:
        return BrokerReads(self.servers.bootstrap, lambda reader: written_and_committed(
            reader, self.settings.purchases_topic, self.settings.consumer_group))

    def client_id(self, role: str) -> str:
        return f"{self.settings.kafka_client_id}-{role}"

    def _start_consumer(self, role: str) -> Process:
        return devstack.start_consumer(dict(self.env, KAFKA_CLIENT_ID=self.client_id(role)), free_port(),
                                       self.log_dir, name=role)

    def collection(self):
        """The purchases collection through one client, which rides out FerretDB's restarts;
        a short server-selection timeout, so a sample during an outage fails fast."""
        if self._mongo is None:
            self._mongo = storage.connect(self.servers.mongodb_uri, timeout_ms=2000)
        return self._mongo[self.settings.mongodb_database][self.settings.mongodb_collection]

    def stored_filter(self) -> dict:
        """The stored purchases this run answers for: all of them in its own database."""
        return {}

    def stored_documents(self) -> list[dict]:
        return list(self.collection().find(self.stored_filter(),
                                           {"_id": 0, "eventId": 1, "userId": 1, "username": 1, "priceCents": 1}))

    def close(self) -> None:
        self.stop.set()
        for pid in list(self.paused):  # a stopped process would sit out SIGTERM
            self._signal(pid, signal.SIGCONT)
        for sampler in (self.offsets, self.group):
            if sampler is not None:
                sampler.close()
        for process in [*self.consumers.values(), self.buy]:
            if process is not None:
                process.stop()
        if self._mongo is not None:
            self._mongo.close()
        self.servers.stop()

    def log_tails(self, lines: int = 20) -> str:
        parts = []
        for process in [self.buy, *self.consumers.values()]:
            if process is not None and process.log.exists():
                text = process.log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {process.name} ({process.log}) ---\n" + "\n".join(text))
        return "\n".join(parts)

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass

    # -- the faults ---------------------------------------------------------------------------

    def _consumer_sigkill(self, run: FaultRun) -> None:
        process = self.consumers[KILLED_CONSUMER]
        run.injected_at = self.clock()
        self._signal(process.proc.pid, signal.SIGKILL)
        process.proc.wait(timeout=10)
        self.stop.wait(run.fault.hold_s)
        restarting = self.clock()
        self.consumers[KILLED_CONSUMER] = self._start_consumer(KILLED_CONSUMER)
        run.lifted_at = self.clock()
        run.detail.update(killed_pid=process.proc.pid, restart_s=round(run.lifted_at - restarting, 1))

    def _buy_worker_sigkill(self, run: FaultRun) -> None:
        workers = child_pids(self.buy.proc.pid)
        victim = min(workers)
        run.injected_at = self.clock()
        os.kill(victim, signal.SIGKILL)
        def respawned_workers():
            now = child_pids(self.buy.proc.pid)
            return now - workers if len(now) >= len(workers) and victim not in now else None
        respawned = poll_until(respawned_workers, 60, 0.05, "gunicorn respawning the killed worker")
        run.lifted_at = self.clock()
        run.detail.update(killed_pid=victim, respawned_pid=min(respawned))

    def _broker_restart(self, run: FaultRun) -> None:
        run.injected_at = self.clock()
        self.servers.stop_kafka()
        stopped = self.clock()
        self.stop.wait(run.fault.hold_s)
        restarting = self.clock()
        self.servers.start_kafka()
        run.lifted_at = self.clock()
        run.detail.update(stop_s=round(stopped - run.injected_at, 1), restart_s=round(run.lifted_at - restarting, 1))

    def _ferretdb_stop(self, run: FaultRun) -> None:
        run.injected_at = self.clock()
        self.servers.stop_ferretdb()
        self.stop.wait(run.fault.hold_s)
        self.servers.start_ferretdb()
        run.lifted_at = self.clock()

    def hold_until_evicted(self, run: FaultRun, member: str) -> None:
        """Keep a paused group member paused for the planned hold, then (at most
        EVICTION_GRACE_S longer) until the group no longer lists it: the fault is its eviction."""
        self.stop.wait(run.fault.hold_s)
        evicted = lambda: first_absent(self.group.samples, member, run.injected_at)  # noqa: E731
        if evicted() is None and not self.stop.is_set():
            say(f"{run.fault.kind}: not evicted yet at the planned end; holding on (at most "
                f"{EVICTION_GRACE_S:.0f} s more)")
            try:
                poll_until(evicted, EVICTION_GRACE_S, 0.25, f"eviction of the paused member {member}")
            except TimeoutError:
                pass

    def _consumer_sigstop(self, run: FaultRun) -> None:
        pid = self.consumers[PAUSED_CONSUMER].proc.pid
        client_id = self.client_id(PAUSED_CONSUMER)
        run.injected_at = self.clock()
        self._signal(pid, signal.SIGSTOP)
        self.paused.add(pid)
        try:
            self.hold_until_evicted(run, client_id)
        finally:
            self._signal(pid, signal.SIGCONT)
            self.paused.discard(pid)
        run.lifted_at = self.clock()
        run.detail["held_s"] = round(run.lifted_at - run.injected_at, 1)

    def fault_actions(self) -> dict:
        """Each kind of fault of the plan -> the method that injects it and waits for its lift."""
        return {chaos_plan.CONSUMER_SIGKILL: self._consumer_sigkill,
                chaos_plan.BUY_WORKER_SIGKILL: self._buy_worker_sigkill,
                chaos_plan.BROKER_RESTART: self._broker_restart,
                chaos_plan.FERRETDB_STOP: self._ferretdb_stop,
                chaos_plan.CONSUMER_SIGSTOP: self._consumer_sigstop}

    def target(self) -> loadgen.Target:
        """Where the clients send their purchases."""
        return loadgen.Target(f"http://127.0.0.1:{self.buy.port}")

    def chaos_join_budget_s(self) -> float:
        """How long after the load the fault threads may still take (each of their waits is bounded)."""
        return max(30.0, self.options.seconds + 300 - self.clock())

    def _inject(self, run: FaultRun, lock: threading.Lock) -> None:
        """At the planned start (later if an earlier fault on the same target is still on)."""
        self.stop.wait(max(0.0, run.fault.start_s - self.clock()))
        if self.stop.is_set():
            return
        action = self.fault_actions()[run.fault.kind]
        with lock:
            say(f"{self.clock():7.1f}s  {run.fault.kind} injected")
            try:
                action(run)
            except Exception as exc:  # reported as a failed fault; the soak goes on
                run.error = f"{type(exc).__name__}: {exc}"
                say(f"{self.clock():7.1f}s  {run.fault.kind} FAILED: {run.error}")
                return
            say(f"{self.clock():7.1f}s  {run.fault.kind} lifted"
                + (f" ({', '.join(f'{k} {v}' for k, v in run.detail.items())})" if run.detail else ""))

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> dict:
        say(f"seed {self.options.seed}: {len(self.purchases)} purchases at {self.options.rate:g}/s over "
            f"{self.options.seconds:g} s; session timeout {self.session_timeout_s:g} s; chaos plan:\n"
            + chaos_plan.describe(self.plan))
        dlq_before = self._records_written(self.settings.dead_letter_topic)
        target = self.target()
        self.t0 = time.monotonic()
        offsets, members = self._offsets(), self._group_members()
        self.offsets = Sampler("offsets", offsets, OFFSETS_SAMPLE_S, self.clock)
        self.group = Sampler("group-members", members, GROUP_SAMPLE_S, self.clock)
        clients = Clients(target, self.purchases, self.options.clients or client_threads(self.options.rate),
                          self.clock)
        locks = {kind: threading.Lock() for kind in {run.fault.kind for run in self.runs}}
        chaos = [threading.Thread(target=self._inject, args=(run, locks[run.fault.kind]), daemon=True,
                                  name=run.fault.kind) for run in self.runs]
        for worker in (self.offsets, self.group, clients, *chaos):
            worker.start()
        try:
            load_bound = self.options.seconds + PURCHASE_DEADLINE_S + REQUEST_TIMEOUT_S + 30
            while not clients.done.wait(PROGRESS_EVERY_S) and self.clock() < load_bound:
                self._progress(clients)
            clients.stop.set()
            clients.join(timeout_s=REQUEST_TIMEOUT_S + 10)
            self._progress(clients)
            for thread in chaos:  # a fault still on is bounded by its own waits
                thread.join(timeout=self.chaos_join_budget_s())
            settled_at = self._settle()
            report = self._verify(clients, dlq_before, settled_at)
        finally:
            self.stop.set()
            for reads in (offsets, members):
                reads.close()
        return report

    def _progress(self, clients: Clients) -> None:
        statuses = collections.Counter(status for _, _, status, _ in clients.attempts)
        written, committed = next((v for _, v in reversed(self.offsets.samples) if v is not None), (None, None))
        on = [r.fault.kind for r in self.runs if r.injected_at is not None and r.lifted_at is None and not r.error]
        say(f"{self.clock():7.1f}s  offered {sum(p.first_sent_at is not None for p in self.purchases)}, "
            f"accepted {statuses[202]}, 503s {statuses[503]}, no answer {statuses[NO_ANSWER]}, "
            f"records written {written}, stored and committed {committed}, faults on: {', '.join(on) or '-'}")

    def _records_written(self, topic: str) -> int:
        reader = LagReader(self.servers.bootstrap)
        try:
            return reader.records_written(topic)
        finally:
            reader.close()

    def _settle(self) -> float | None:
        """Wait (bounded) until the group has committed every record for SETTLE_QUIET_S and
        MongoDB holds at least every 202; when that was reached, or None."""
        accepted = sum(p.accepted_at is not None for p in self.purchases)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        offsets, quiet_since = self._offsets(), None
        try:
            while time.monotonic() < deadline:
                try:
                    written, committed = offsets()
                except KafkaError:
                    written, committed = 0, -1
                if written != committed:
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= SETTLE_QUIET_S:
                    try:
                        if self.collection().count_documents(self.stored_filter()) >= accepted:
                            return self.clock()
                    except PyMongoError:
                        pass
                time.sleep(1.0)
            return None
        finally:
            offsets.close()

    # -- the verdict --------------------------------------------------------------------------

    def _verify(self, clients: Clients, dlq_before: int, settled_at: float | None) -> dict:
        documents = self.stored_documents()
        per_event = collections.Counter(doc["eventId"] for doc in documents)
        by_event = {p.event_id: p for p in self.purchases}
        accepted = {p.event_id for p in self.purchases if p.accepted_at is not None}
        abandoned = {p.event_id for p in self.purchases if p.abandoned}
        stored = set(per_event)
        missing = accepted - stored
        duplicates = sum(n - 1 for n in per_event.values() if n > 1)
        stored_not_accepted = stored - accepted
        unexplained = stored_not_accepted - abandoned
        altered = [doc["eventId"] for doc in documents if doc["eventId"] in by_event
                   and (doc.get("userId"), doc.get("username"), doc.get("priceCents"))
                   != (by_event[doc["eventId"]].user_id, by_event[doc["eventId"]].username,
                       by_event[doc["eventId"]].price_cents)]
        wrong_ids = [p.index for p in self.purchases if p.accepted_at is not None and p.answered_id != p.event_id]
        statuses = collections.Counter(status for _, _, status, _ in clients.attempts)
        unexpected = {str(s): n for s, n in statuses.items() if s not in (202, 503, NO_ANSWER)}
        dlq_new = self._records_written(self.settings.dead_letter_topic) - dlq_before

        faults = [self._fault_figures(run, clients) for run in self.runs]
        for figures, run in zip(faults, self.runs):
            figures["overlapped"] = sorted({other.fault.kind for other in self.runs
                                            if other is not run and _intersect(run, other)})
        sigstops = [f for f in faults if f["kind"] == chaos_plan.CONSUMER_SIGSTOP]
        answered = [(a - s) for s, a, status, _ in clients.attempts if status != NO_ANSWER]
        first_sends = [p.first_sent_at - p.offered_at for p in self.purchases if p.first_sent_at is not None]
        totals = {
            "purchases": len(self.purchases),
            "offered": len(first_sends),
            "accepted": len(accepted),
            "answered_503": statuses[503],
            "no_answer": statuses[NO_ANSWER],
            "unexpected_answers": unexpected,
            "attempts": len(clients.attempts),
            "retries": len(clients.attempts) - len(first_sends),
            "abandoned": len(abandoned),
            # Of those, the ones whose last attempt got no answer: stored or not, nobody can say.
            "abandoned_without_answer": sum(p.abandoned and p.last_status == NO_ANSWER for p in self.purchases),
            "slowest_answer_s": round(max(answered, default=0.0), 3),
            "answer_latency_s": {k: round(v, 4) if v is not None else None
                                 for k, v in loadgen.percentiles(answered).items()},
            "slowest_purchase_s": round(max((p.accepted_at - p.offered_at for p in self.purchases
                                             if p.accepted_at is not None), default=0.0), 2),
            "latest_first_offer_s": round(max(first_sends, default=0.0), 2),
            "stored": len(documents),
            "stored_event_ids": len(stored),
            "duplicates": duplicates,
            "stored_not_accepted": len(stored_not_accepted),
            "stored_of_abandoned": len(stored_not_accepted & abandoned),
            "missing": len(missing),
            "dlq_new": dlq_new,
            "settled_at_s": round(settled_at, 1) if settled_at is not None else None,
            "wall_s": round(self.clock(), 1),
        }
        checks = {
            "every 202 stored": (not missing, f"{len(missing)} accepted purchases missing"),
            "stored exactly once": (duplicates == 0, f"{duplicates} duplicate documents"),
            "nothing else stored": (not unexplained,
                                    f"{len(unexplained)} stored purchases were never answered 202 nor left unanswered"),
            "every purchase answered 202": (not abandoned, f"{len(abandoned)} purchases abandoned at their deadline"),
            "answers as documented": (not unexpected and not wrong_ids,
                                      f"unexpected statuses {unexpected}, {len(wrong_ids)} 202s with another event id"),
            "stored as sent": (not altered, f"{len(altered)} stored purchases differ from what was sent"),
            "dead-letter topic empty": (dlq_new == 0, f"{dlq_new} new dead letters"),
            "every fault injected and lifted": (
                all(f["injected_at_s"] is not None and f["lifted_at_s"] is not None and not f["error"] for f in faults),
                "; ".join(f"{f['kind']}@{f['planned_start_s']}: {f['error'] or 'not lifted'}"
                          for f in faults if f["error"] or f["lifted_at_s"] is None)),
            "faults overlapped": (all(f["overlapped"] for f in faults),
                                  "ran alone: " + ", ".join(f"{f['kind']}@{f['planned_start_s']}"
                                                            for f in faults if not f["overlapped"])),
            "paused consumer evicted": (all(f["detail"].get("evicted_after_s") is not None for f in sigstops),
                                        "a SIGSTOPped consumer was never evicted by the group"),
            "stored count settled": (settled_at is not None, f"not settled within {SETTLE_TIMEOUT_S:.0f} s"),
        }
        return {
            "seed": self.options.seed, "rate": self.options.rate, "seconds": self.options.seconds,
            "session_timeout_s": self.session_timeout_s, "data_dir": str(self.data_dir),
            "plan": [f.as_dict() for f in self.plan],
            "faults": faults, "totals": totals,
            "checks": {name: {"ok": ok, "detail": "" if ok else detail} for name, (ok, detail) in checks.items()},
            "passed": all(ok for ok, _ in checks.values()),
            "timeline": self._timeline(clients),
        }

    def _fault_figures(self, run: FaultRun, clients: Clients) -> dict:
        """Recovery after the lift: how long until a purchase sent after it was accepted, and
        until the group had stored and committed every record written by the lift; 503s and
        missing answers meanwhile."""
        detail = dict(run.detail)
        figures = {"kind": run.fault.kind, "planned_start_s": run.fault.start_s, "planned_hold_s": run.fault.hold_s,
                   "injected_at_s": _round(run.injected_at), "lifted_at_s": _round(run.lifted_at),
                   "accepting_after_s": None, "stored_caught_up_after_s": None, "recovery_s": None,
                   "answered_503": 0, "no_answer": 0, "error": run.error, "detail": detail}
        if run.injected_at is None or run.lifted_at is None:
            return figures
        lift = run.lifted_at
        accepting = min((answered for sent, answered, status, _ in clients.attempts
                         if status == 202 and sent >= lift), default=None)
        # During a broker outage nothing is written, so the last reading before the lift holds.
        written_by_lift = max((v[0] for t, v in self.offsets.samples if t <= lift and v is not None), default=0)
        caught_up = next((t for t, v in self.offsets.samples
                          if t >= lift and v is not None and v[1] >= written_by_lift), None)
        if accepting is not None:
            figures["accepting_after_s"] = round(accepting - lift, 2)
        if caught_up is not None:
            figures["stored_caught_up_after_s"] = round(caught_up - lift, 1)
        if accepting is not None and caught_up is not None:
            figures["recovery_s"] = round(max(accepting, caught_up) - lift, 1)
        until = lift + (figures["recovery_s"] or 0.0)
        during = collections.Counter(status for _, answered, status, _ in clients.attempts
                                     if run.injected_at <= answered <= until)
        figures["answered_503"], figures["no_answer"] = during[503], during[NO_ANSWER]
        samples = self.group.samples
        if run.fault.kind == chaos_plan.CONSUMER_SIGSTOP:
            client_id = self.client_id(PAUSED_CONSUMER)
            evicted = first_absent(samples, client_id, run.injected_at, lift)
            rejoined = first_present(samples, client_id, lift)
            detail["evicted_after_s"] = _round(evicted - run.injected_at) if evicted is not None else None
            detail["rejoined_after_s"] = _round(rejoined - lift) if rejoined is not None else None
        if run.fault.kind == chaos_plan.CONSUMER_SIGKILL:
            client_id = self.client_id(KILLED_CONSUMER)
            before = {mid for t, members in known(samples, 0, run.injected_at) for cid, mid in members
                      if cid == client_id}
            rejoined = first_present(samples, client_id, run.injected_at, excluding=before)
            detail["rejoined_after_s"] = _round(rejoined - lift) if rejoined is not None else None
        return figures

    def _timeline(self, clients: Clients) -> list[dict]:
        """Per second: purchases offered, answers by kind, records written to the topic and
        records the group stored and committed."""
        seconds = int(self.clock()) + 1
        rows = [{"t": t, "offered": 0, "accepted": 0, "answered_503": 0, "no_answer": 0, "written": None,
                 "committed": None} for t in range(seconds)]
        for p in self.purchases:
            if p.first_sent_at is not None and int(p.first_sent_at) < seconds:
                rows[int(p.first_sent_at)]["offered"] += 1
        column = {202: "accepted", 503: "answered_503", NO_ANSWER: "no_answer"}
        for _, answered, status, _ in clients.attempts:
            if status in column and int(answered) < seconds:
                rows[int(answered)][column[status]] += 1
        for t, value in self.offsets.samples:
            if value is not None and int(t) < seconds:
                rows[int(t)]["written"], rows[int(t)]["committed"] = value
        return rows


def _intersect(run: FaultRun, other: FaultRun) -> bool:
    """Whether two faults were on at the same time, from when they were injected and lifted."""
    if None in (run.injected_at, run.lifted_at, other.injected_at, other.lifted_at):
        return False
    return run.injected_at <= other.lifted_at and other.injected_at <= run.lifted_at


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def format_report(report: dict) -> str:
    def cell(value, unit=""):
        return "-" if value is None else f"{value}{unit}"

    lines = ["", f"soak: seed {report['seed']}, {report['rate']:g}/s for {report['seconds']:g} s, "
             f"session timeout {report['session_timeout_s']:g} s",
             f"{'fault':<20} {'planned':>8} {'injected':>9} {'lifted':>8} {'accepting':>10} {'stored':>10} "
             f"{'503s':>6} {'no ans':>7}  notes",
             f"{'':<20} {'start s':>8} {'at s':>9} {'at s':>8} {'after s':>10} {'after s':>10}"]
    for f in report["faults"]:
        notes = ", ".join([f"{k} {v}" for k, v in f["detail"].items()]
                          + [f"with {'+'.join(f['overlapped']) or 'nothing'}"])
        if f["error"]:
            notes = f"ERROR {f['error']}; " + notes
        lines.append(f"{f['kind']:<20} {f['planned_start_s']:>8} {cell(f['injected_at_s']):>9} "
                     f"{cell(f['lifted_at_s']):>8} {cell(f['accepting_after_s']):>10} "
                     f"{cell(f['stored_caught_up_after_s']):>10} {f['answered_503']:>6} {f['no_answer']:>7}  {notes}")
    t = report["totals"]
    lines += [
        "",
        f"offered {t['offered']} of {t['purchases']} (latest first send {t['latest_first_offer_s']} s after its slot), "
        f"accepted {t['accepted']}, 503s {t['answered_503']}, no answer {t['no_answer']}, "
        f"retries {t['retries']}, abandoned {t['abandoned']} ({t['abandoned_without_answer']} without an answer), "
        f"unexpected {t['unexpected_answers'] or 0}",
        f"answer latency p50 {t['answer_latency_s']['p50']} s, p99 {t['answer_latency_s']['p99']} s, "
        f"slowest answer {t['slowest_answer_s']} s, slowest purchase (slot to 202) {t['slowest_purchase_s']} s",
        f"stored {t['stored']} ({t['stored_event_ids']} event ids), duplicates {t['duplicates']}, "
        f"missing {t['missing']}, stored but not accepted {t['stored_not_accepted']} "
        f"(of abandoned {t['stored_of_abandoned']}), new dead letters {t['dlq_new']}, "
        f"settled at {cell(t['settled_at_s'], ' s')}, wall {t['wall_s']} s",
        "",
    ]
    for name, check in report["checks"].items():
        lines.append(f"  {'ok  ' if check['ok'] else 'FAIL'} {name}" + (f": {check['detail']}" if check["detail"] else ""))
    lines.append(f"soak {'PASSED' if report['passed'] else 'FAILED'}")
    return "\n".join(lines)


def write_report(report: dict, data_dir: Path, also: str | None = None) -> None:
    """report.json in the run's data folder, and at --json's path if one was given."""
    for path in {data_dir / "report.json", *([Path(also)] if also else [])}:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        say(f"report written to {path}")


def load_arguments(prog: str, doc: str, default_rate: float, default_seconds: float) -> argparse.ArgumentParser:
    """The options every soak takes: the offered load, the plan's seed, the clients, --json."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=default_rate,
                        help=f"purchases offered per second (default {default_rate:g})")
    parser.add_argument("--seconds", type=float, default=default_seconds,
                        help=f"seconds of load (default {default_seconds:g})")
    parser.add_argument("--seed", type=int, default=None, help="seed of the chaos plan (default: a random one, printed)")
    parser.add_argument("--clients", type=int, default=None,
                        help="client threads, i.e. attempts in flight at most (default: rate x request "
                             f"timeout {REQUEST_TIMEOUT_S:g} s + 32, at most {MAX_CLIENT_THREADS})")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="write the report as JSON here too (it is always written to the run's data folder)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = load_arguments("python -m load.soak", __doc__, DEFAULT_RATE, DEFAULT_SECONDS)
    parser.add_argument("--ferretdb-down", type=float, default=Holds().ferretdb_down_s, metavar="S",
                        help=f"seconds FerretDB stays stopped (default {Holds().ferretdb_down_s:g})")
    parser.add_argument("--data-dir", default=None, help="servers' data and logs (default .run/soak-<date>-<time>)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    options = Options(rate=args.rate, seconds=args.seconds, seed=seed,
                      holds=Holds(ferretdb_down_s=args.ferretdb_down), clients=args.clients)
    data_dir = Path(args.data_dir) if args.data_dir else ROOT / ".run" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        soak = Soak(options, data_dir)
    except chaos_plan.PlanError as exc:
        say(f"no chaos plan: {exc}")
        return 2
    with soak:
        report = soak.run()
        if not report["passed"]:
            print(soak.log_tails(), flush=True)
    print(format_report(report), flush=True)
    write_report(report, data_dir, args.json)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
