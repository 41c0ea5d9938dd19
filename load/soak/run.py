"""One soak from start to report: the target is started, the clients offer the purchases while
the fault set runs the plan, the stored count settles, and the verdict is drawn.

The target (the system under test) and the fault set are given: the local soak's
(load/soak/local.py) or the node's (load/soak/node.py)."""
from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Protocol

from purchase_common import config

from load import loadgen
from load.soak import say
from load.soak.clients import NO_ANSWER, PURCHASE_DEADLINE_S, REQUEST_TIMEOUT_S, Clients, Purchase, client_threads
from load.soak.faults import Chaos, FaultRun, FaultSet
from load.soak.observation import (
    GROUP_SAMPLE_S,
    OFFSETS_SAMPLE_S,
    Recorder,
    group_members,
    offsets,
    records_written,
    wait_until_settled,
)
from load.soak.plan import Options, describe
from load.soak.verdict import Evidence, judge

PROGRESS_EVERY_S = 15.0
CHAOS_JOIN_MIN_S = 30.0   # after the load, the fault threads are given at least this long


class Target(Protocol):
    """The system under test: where the clients send purchases and where the soak reads the
    broker and the store."""

    settings: config.Settings
    bootstrap: str
    member_key: str      # what tells the group's members apart (LagReader.members' `by`)

    def start(self) -> None: ...

    def close(self) -> None: ...

    def endpoint(self) -> loadgen.Target:
        """Where the clients send their purchases (once started)."""

    def collection(self):
        """The purchases collection."""

    def stored_filter(self) -> dict:
        """The stored purchases this run answers for."""

    def log_tails(self, lines: int = 20) -> str: ...

    def amend(self, report: dict, evidence: Evidence) -> None:
        """Add what this target reports beyond the common report."""


def session_timeout_s(settings: config.Settings) -> float:
    return settings.consumer_session_timeout_ms / 1000


class Soak:
    """The clients, the chaos and the verdict of one soak of a target. Use as a context manager:
    the target is started on the way in, and everything is stopped and lifted on the way out."""

    def __init__(self, options: Options, data_dir: Path, target: Target, faults: FaultSet,
                 purchases: list[Purchase]):
        self.options, self.data_dir, self.target, self.faults = options, data_dir, target, faults
        self.purchases = purchases
        self.session_timeout_s = session_timeout_s(target.settings)
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.runs = [FaultRun(fault) for fault in faults.plan]
        self.offsets: Recorder | None = None
        self.group: Recorder | None = None

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def __enter__(self) -> Soak:
        try:
            self.target.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self.stop.set()
        self.faults.lift_all()
        for recorder in (self.offsets, self.group):
            if recorder is not None:
                recorder.close()
        self.target.close()

    def log_tails(self, lines: int = 20) -> str:
        return self.target.log_tails(lines)

    def stored_documents(self) -> list[dict]:
        return list(self.target.collection().find(
            self.target.stored_filter(), {"_id": 0, "eventId": 1, "userId": 1, "username": 1, "priceCents": 1}))

    def run(self) -> dict:
        settings = self.target.settings
        say(f"seed {self.options.seed}: {len(self.purchases)} purchases at {self.options.rate:g}/s over "
            f"{self.options.seconds:g} s; session timeout {self.session_timeout_s:g} s; chaos plan:\n"
            + describe(self.faults.plan))
        dlq_before = records_written(self.target.bootstrap, settings.dead_letter_topic)
        endpoint = self.target.endpoint()
        self.t0 = time.monotonic()
        offset_reads = offsets(self.target.bootstrap, settings.purchases_topic, settings.consumer_group)
        member_reads = group_members(self.target.bootstrap, settings.consumer_group, self.target.member_key)
        self.offsets = Recorder("offsets", offset_reads, OFFSETS_SAMPLE_S, self.clock)
        self.group = Recorder("group-members", member_reads, GROUP_SAMPLE_S, self.clock)
        clients = Clients(endpoint, self.purchases, self.options.clients or client_threads(self.options.rate),
                          self.clock)
        chaos = Chaos(self.clock, self.stop, self.group).threads(self.runs, self.faults)
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
                thread.join(timeout=max(CHAOS_JOIN_MIN_S, self.options.seconds + self.faults.tail_s - self.clock()))
            settled_at = self._settle()
            evidence = Evidence(self.purchases, clients.attempts, self.runs, self.offsets.samples,
                                self.group.samples, self.stored_documents(),
                                records_written(self.target.bootstrap, settings.dead_letter_topic) - dlq_before,
                                settled_at, self.clock())
            report = judge(evidence, self.options, self.faults.plan, self.session_timeout_s, str(self.data_dir),
                           self.faults)
            self.faults.amend(report, evidence)
            self.target.amend(report, evidence)
        finally:
            self.stop.set()
            for reads in (offset_reads, member_reads):
                reads.close()
        return report

    def _progress(self, clients: Clients) -> None:
        statuses = collections.Counter(status for _, _, status, _ in clients.attempts)
        written, committed = next((v for _, v in reversed(self.offsets.samples) if v is not None), (None, None))
        on = [r.fault.kind for r in self.runs if r.injected_at is not None and r.lifted_at is None and not r.error]
        say(f"{self.clock():7.1f}s  offered {sum(p.first_sent_at is not None for p in self.purchases)}, "
            f"accepted {statuses[202]}, 503s {statuses[503]}, no answer {statuses[NO_ANSWER]}, "
            f"records written {written}, stored and committed {committed}, faults on: {', '.join(on) or '-'}")

    def _settle(self) -> float | None:
        settings = self.target.settings
        reads = offsets(self.target.bootstrap, settings.purchases_topic, settings.consumer_group)
        try:
            return wait_until_settled(
                reads, lambda: self.target.collection().count_documents(self.target.stored_filter()),
                sum(p.accepted_at is not None for p in self.purchases), self.clock)
        finally:
            reads.close()
