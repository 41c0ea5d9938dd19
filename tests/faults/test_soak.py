"""The short soak (load/soak/; `make soak` runs the long one): every local kind of fault once and
the broker leading most partitions (of three) SIGKILLed, overlapping, at 25 purchases/s for 75 s
with FerretDB stopped for 10 s. Besides the soak's own verdict, the outcome is checked here from
what MongoDB and the broker hold."""
from __future__ import annotations

import collections
import os

import pytest

from load.soak import local
from load.soak import plan as chaos_plan
from load.soak.plan import Holds, Options
from load.soak.report import format_report
from tools.lag_reader import LagReader

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RATE, SECONDS = 25, 75
# One round: the local kinds and the first broker fault in turn, one node of three SIGKILLed.
BROKER_TURNS = chaos_plan.LOCAL_BROKER_TURNS[:1]
KINDS = chaos_plan.LOCAL_KINDS + BROKER_TURNS
# A fixed plan, printed with the report; SOAK_TEST_SEED tries another.
SEED = int(os.environ.get("SOAK_TEST_SEED", "20261128"))


def test_all_faults_at_once_store_every_accepted_purchase_exactly_once(tmp_path):
    options = Options(rate=RATE, seconds=SECONDS, seed=SEED, holds=Holds(ferretdb_down_s=10),
                      broker_turns=BROKER_TURNS)
    with local.build(options, tmp_path) as run:
        report = run.run()
        print(format_report(report))
        stored = collections.Counter(doc["eventId"] for doc in run.stored_documents())
        reader = LagReader(run.target.bootstrap)
        try:
            dead_letters = reader.records_written(run.target.settings.dead_letter_topic)
        finally:
            reader.close()
        logs = "" if report["passed"] else run.log_tails()

    failed = {name: check["detail"] for name, check in report["checks"].items() if not check["ok"]}
    assert report["passed"], f"{failed}\n{logs}"
    accepted = {p.event_id for p in run.purchases if p.accepted_at is not None}
    assert len(accepted) == len(run.purchases) == RATE * SECONDS, "every client got its 202 in the end"
    assert set(stored) == accepted, "stored is exactly what was answered 202"
    assert max(stored.values()) == 1, "each purchase stored once"
    assert dead_letters == 0

    faults = {f["kind"]: f for f in report["faults"]}
    assert sorted(faults) == sorted(KINDS) and len(report["faults"]) == len(KINDS)
    for fault in report["faults"]:
        assert fault["injected_at_s"] is not None and fault["lifted_at_s"] is not None and not fault["error"], fault
        assert fault["overlapped"], f"{fault['kind']} ran alone"
    paused = faults[chaos_plan.CONSUMER_SIGSTOP]["detail"]
    # Evicted while still paused (the session expires from the last heartbeat, which may come a
    # delayed heartbeat interval or more before the pause, so no tighter bound is safe).
    assert paused["evicted_after_s"] is not None and paused["evicted_after_s"] <= paused["held_s"], paused
    assert paused["rejoined_after_s"] is not None, "the paused consumer rejoined after SIGCONT"
    broker = faults[chaos_plan.BROKER_SIGKILL]
    # Until the killed leader is fenced, purchases are answered 503 or not at all, and retried.
    assert broker["answered_503"] + broker["no_answer"] > 0 and report["totals"]["retries"] > 0, broker
