"""The node soak's chaos plan (load/soak/plan.py with NODE_KINDS, run by load/soak/node.py)
keeps the local soak's rules for every seed: each pod fault once per round, overlapping, over
before the load ends, and the frozen consumer always gets the broker uptime it needs to be
evicted even when kafka-0 is deleted during the freeze. Its users are this run's own."""
from __future__ import annotations

import functools

import pytest
from purchase_common import config

from load import soak_node
from load.soak import plan as chaos_plan
from load.soak.clients import make_purchases
from load.soak.plan import CONSUMER_PAUSE, EVICTION_MARGIN_S, KAFKA_POD_DELETE, NODE_KINDS, Fault, Holds

SESSION_TIMEOUT_S = config.Settings().consumer_session_timeout_ms / 1000
# make soak-node's default length and tests/cluster/test_soak_node.py's.
PROFILES = {"full": soak_node.DEFAULT_SECONDS, "short": 100.0}
SEEDS = range(300)


@functools.cache
def plan_for(profile: str, seed: int) -> tuple[Fault, ...]:
    return tuple(chaos_plan.draw_node_plan(seed, PROFILES[profile], SESSION_TIMEOUT_S))


def rounds_of(plan: tuple[Fault, ...], seconds: float) -> list[list[Fault]]:
    longest = max(Fault(k, 0, Holds().of(k, SESSION_TIMEOUT_S)).maybe_out[1] for k in NODE_KINDS)
    spans, _ = chaos_plan.rounds(seconds, longest)
    return [[f for f in plan if lo <= f.start_s < hi] for lo, hi in spans]


@pytest.mark.parametrize("profile", PROFILES)
def test_every_seed_gives_a_node_plan_that_keeps_every_rule(profile):
    seconds = PROFILES[profile]
    for seed in SEEDS:
        plan = plan_for(profile, seed)
        assert chaos_plan.sigstop_sees_eviction(plan, SESSION_TIMEOUT_S), seed
        groups = rounds_of(plan, seconds)
        assert sum(map(len, groups)) == len(plan), seed
        for faults in groups:
            assert sorted(f.kind for f in faults) == sorted(NODE_KINDS), seed
            assert chaos_plan.overlap_as_one(faults), seed
        for fault in plan:
            assert chaos_plan.LEAD_S <= fault.start_s, (seed, fault)
            assert fault.maybe_out[1] <= seconds - chaos_plan.TAIL_S, (seed, fault)


def test_a_deleted_kafka_pod_counts_as_a_broker_outage_for_the_freeze():
    freeze = Fault(CONSUMER_PAUSE, 20.0, 2 * SESSION_TIMEOUT_S)
    early = Fault(KAFKA_POD_DELETE, 22.0, Holds().of(KAFKA_POD_DELETE, SESSION_TIMEOUT_S))
    assert not chaos_plan.sigstop_sees_eviction([freeze, early], SESSION_TIMEOUT_S)
    late = Fault(KAFKA_POD_DELETE, 20.0 + SESSION_TIMEOUT_S + EVICTION_MARGIN_S, early.hold_s)
    assert chaos_plan.sigstop_sees_eviction([freeze, late], SESSION_TIMEOUT_S)


def test_the_freeze_is_held_and_the_pod_faults_are_actions_with_an_allowance():
    holds = {kind: Holds().of(kind, SESSION_TIMEOUT_S) for kind in NODE_KINDS}
    assert holds[CONSUMER_PAUSE] == chaos_plan.SIGSTOP_SESSION_TIMEOUTS * SESSION_TIMEOUT_S
    for kind in set(NODE_KINDS) - {CONSUMER_PAUSE}:
        assert Fault(kind, 0.0, holds[kind]).maybe_out[1] == holds[kind] + chaos_plan.ALLOWANCES_S[kind]


def test_the_default_kinds_stay_the_local_soak_s():
    assert chaos_plan.draw_plan(5, 600, SESSION_TIMEOUT_S) == chaos_plan.draw_plan(
        5, 600, SESSION_TIMEOUT_S, kinds=chaos_plan.KINDS)
    assert {f.kind for f in plan_for("full", 5)} == set(NODE_KINDS)


def test_the_short_node_soak_has_one_round_and_the_full_one_several():
    assert len(plan_for("short", 1)) == len(NODE_KINDS)
    assert len(plan_for("full", 1)) == 3 * len(NODE_KINDS)


def test_each_run_has_users_of_its_own_and_keys_that_give_its_event_ids():
    first, second = make_purchases(10, 30, "aaaa", users="node-aaaa"), make_purchases(10, 30, "bbbb", users="node-bbbb")
    assert len(first) == 300 and len({p.key for p in first}) == 300
    assert not {p.user_id for p in first} & {p.user_id for p in second}
    assert len({p.event_id for p in first + second}) == 600
    assert [p.offered_at for p in first[:3]] == [0.0, 0.1, 0.2]


def test_each_502_504_is_matched_to_the_faults_whose_window_it_overlaps():
    from load.soak.faults import FaultRun
    from load.soak.node import READY_TIMEOUT_S, trace_platform_answers

    buy = FaultRun(chaos_plan.Fault(chaos_plan.BUY_POD_DELETE, 10.0, 0.0), injected_at=10.0, lifted_at=20.0)
    kafka = FaultRun(chaos_plan.Fault(chaos_plan.KAFKA_POD_DELETE, 15.0, 0.0), injected_at=15.0, lifted_at=40.0)
    never = FaultRun(chaos_plan.Fault(chaos_plan.MONGODB_POD_DELETE, 50.0, 0.0))  # not injected
    late = 40.0 + READY_TIMEOUT_S + 5
    attempts = [(11.0, 12.0, 502, 0),         # buy's window only
                (16.0, 17.0, 504, 1),         # both
                (5.0, 9.0, 502, 2),           # before any fault
                (late, late + 1, 502, 3),     # after every window
                (16.0, 17.0, 503, 4),         # buy's own answer: not the platform's
                (16.0, 17.0, 202, 5)]
    traced = trace_platform_answers(attempts, [buy, kafka, never])
    assert traced["by_fault"] == {chaos_plan.BUY_POD_DELETE: 2, chaos_plan.KAFKA_POD_DELETE: 1}
    assert traced["untraced"] == 2 and traced["untraced_at_s"] == [9.0, round(late + 1, 1)]
