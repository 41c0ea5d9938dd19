"""The soak's chaos plan (load/soak/plan.py) keeps its rules for every seed: faults overlap,
are over before the load ends, and a SIGSTOPped consumer always gets enough broker uptime to
be evicted (the rule a broker restart inside the pause once broke)."""
from __future__ import annotations

import functools

import pytest
from purchase_common import config

from load.soak import plan as chaos_plan
from load.soak.plan import (
    BROKER_RESTART,
    CONSUMER_SIGSTOP,
    DEFAULT_RATE,
    DEFAULT_SECONDS,
    EVICTION_MARGIN_S,
    KINDS,
    Fault,
    Holds,
    PlanError,
)

SESSION_TIMEOUT_S = config.Settings().consumer_session_timeout_ms / 1000
# The full soak's defaults and the short one of tests/faults/test_soak.py.
PROFILES = {
    "full": dict(seconds=DEFAULT_SECONDS, holds=Holds()),
    "short": dict(seconds=75, holds=Holds(ferretdb_down_s=10)),
}
SEEDS = range(300)


@functools.cache
def plan_for(profile: str, seed: int, session_timeout_s: float = SESSION_TIMEOUT_S) -> list[Fault]:
    return tuple(chaos_plan.draw_plan(seed, session_timeout_s=session_timeout_s, **PROFILES[profile]))


def rounds_of(plan: tuple[Fault, ...], seconds: float, holds: Holds) -> list[list[Fault]]:
    longest = max(Fault(k, 0, holds.of(k, SESSION_TIMEOUT_S)).maybe_out[1] for k in KINDS)
    spans, _ = chaos_plan.rounds(seconds, longest)
    return [[f for f in plan if lo <= f.start_s < hi] for lo, hi in spans]


@pytest.mark.parametrize("profile", PROFILES)
def test_every_seed_gives_a_plan_that_keeps_every_rule(profile):
    seconds, holds = PROFILES[profile]["seconds"], PROFILES[profile]["holds"]
    for seed in SEEDS:
        plan = plan_for(profile, seed)
        assert chaos_plan.sigstop_sees_eviction(plan, SESSION_TIMEOUT_S), seed
        groups = rounds_of(plan, seconds, holds)
        assert sum(map(len, groups)) == len(plan), seed
        for faults in groups:
            assert sorted(f.kind for f in faults) == sorted(KINDS), seed
            assert chaos_plan.overlap_as_one(faults), seed
        for fault in plan:
            assert chaos_plan.LEAD_S <= fault.start_s, (seed, fault)
            assert fault.maybe_out[1] <= seconds - chaos_plan.TAIL_S, (seed, fault)


@pytest.mark.parametrize("profile", PROFILES)
def test_each_pause_has_broker_uptime_past_the_session_timeout(profile):
    """Checked here from the plan's own intervals, not through the rule function."""
    for seed in SEEDS:
        plan = plan_for(profile, seed)
        outages = [f.maybe_out for f in plan if f.kind == BROKER_RESTART]
        for pause in (f for f in plan if f.kind == CONSUMER_SIGSTOP):
            start, end = pause.surely_out
            up = [t / 10 for t in range(int(start * 10), int(end * 10))
                  if not any(lo <= t / 10 < hi for lo, hi in outages)]
            longest, run = 0.0, 0.0
            for previous, t in zip([None] + up, up, strict=False):
                run = run + 0.1 if previous is not None and abs(t - previous - 0.1) < 1e-6 else 0.1
                longest = max(longest, run)
            assert longest >= SESSION_TIMEOUT_S + EVICTION_MARGIN_S - 0.2, (seed, pause)


def test_the_full_soak_has_several_rounds_and_the_short_one_has_one():
    assert len(plan_for("full", 1)) == 3 * len(KINDS)
    assert len(plan_for("short", 1)) == len(KINDS)


def test_the_same_seed_gives_the_same_plan_and_seeds_differ():
    assert plan_for("short", 42) == plan_for("short", 42)
    assert len({plan_for("short", seed) for seed in range(20)}) == 20


def test_the_session_timeout_comes_from_the_settings_and_sets_the_pause():
    for session_s in (6.0, SESSION_TIMEOUT_S, 15.0):
        plan = chaos_plan.draw_plan(3, 600, session_s)
        assert chaos_plan.sigstop_sees_eviction(plan, session_s)
        assert all(f.hold_s == chaos_plan.SIGSTOP_SESSION_TIMEOUTS * session_s
                   for f in plan if f.kind == CONSUMER_SIGSTOP)


def test_a_broker_restart_inside_the_pause_breaks_the_rule():
    # The failure this rule prevents: the pause is covered by the restart but for 2 s.
    pause = Fault(CONSUMER_SIGSTOP, 20.0, 20.0)
    restart = Fault(BROKER_RESTART, 22.0, 8.0)   # maybe out until 55 with the restart allowance
    assert chaos_plan.longest_uptime_within(pause.surely_out, [restart.maybe_out]) == pytest.approx(2.0)
    assert not chaos_plan.sigstop_sees_eviction([pause, restart], 10.0)
    # The same restart long after the pause began leaves the uptime stretch in front of it.
    late = Fault(BROKER_RESTART, 34.0, 8.0)
    assert chaos_plan.longest_uptime_within(pause.surely_out, [late.maybe_out]) == pytest.approx(14.0)
    assert chaos_plan.sigstop_sees_eviction([pause, late], 10.0)


def test_uptime_within_a_pause():
    assert chaos_plan.longest_uptime_within((0, 20), []) == 20
    assert chaos_plan.longest_uptime_within((0, 20), [(5, 8), (12, 30)]) == 5   # up 0..5 and 8..12
    assert chaos_plan.longest_uptime_within((10, 20), [(0, 30)]) == 0
    assert chaos_plan.longest_uptime_within((10, 20), [(0, 12), (18, 40)]) == 6


def test_faults_one_at_a_time_do_not_count_as_overlapping():
    apart = [Fault(CONSUMER_SIGSTOP, 10, 20), Fault(chaos_plan.FERRETDB_STOP, 31, 10)]
    assert not chaos_plan.overlap_as_one(apart)
    barely = [Fault(CONSUMER_SIGSTOP, 10, 20), Fault(chaos_plan.FERRETDB_STOP, 29, 10)]
    assert not chaos_plan.overlap_as_one(barely)   # 1 s of overlap: a late injection could miss it
    overlapping = [Fault(CONSUMER_SIGSTOP, 10, 20), Fault(chaos_plan.FERRETDB_STOP, 27, 10),
                   Fault(chaos_plan.BUY_WORKER_SIGKILL, 35, 0)]
    assert chaos_plan.overlap_as_one(overlapping)
    # Only the hold of a broker restart is sure: a fault in its allowance may miss it.
    in_allowance = [Fault(BROKER_RESTART, 10, 8), Fault(chaos_plan.FERRETDB_STOP, 20, 10)]
    assert not chaos_plan.overlap_as_one(in_allowance)
    assert not chaos_plan.overlap_as_one([Fault(chaos_plan.BUY_WORKER_SIGKILL, 35, 0)])


def test_too_short_a_load_for_the_faults_is_refused():
    with pytest.raises(PlanError):
        chaos_plan.draw_plan(1, 40, SESSION_TIMEOUT_S)
    with pytest.raises(PlanError):
        chaos_plan.draw_plan(1, 600, 2.0)   # a pause of 2 timeouts cannot hold timeout + margin


def test_the_default_soak_is_at_least_50000_purchases_over_10_minutes():
    assert DEFAULT_SECONDS >= 600 and DEFAULT_RATE * DEFAULT_SECONDS >= 50_000


def test_the_local_soak_takes_one_broker_fault_per_round_in_turn():
    """Three brokers (issue 26): every round has the local kinds and one broker fault, the four
    in turn (one SIGKILLed node, two down, a rolling restart, all stopped), never two at once."""
    for seed in range(0, 300, 10):
        plan = chaos_plan.draw_local_plan(seed, 750, SESSION_TIMEOUT_S)
        assert chaos_plan.sigstop_sees_eviction(plan, SESSION_TIMEOUT_S), seed
        broker_faults = [f for f in plan if f.kind in chaos_plan.LOCAL_BROKER_TURNS]
        assert [f.kind for f in broker_faults] == list(chaos_plan.LOCAL_BROKER_TURNS), seed
        for earlier, later in zip(broker_faults, broker_faults[1:], strict=False):
            assert earlier.maybe_out[1] <= later.start_s, (seed, earlier, later)
        for kind in chaos_plan.LOCAL_KINDS:
            assert sum(f.kind == kind for f in plan) == len(broker_faults), (seed, kind)
        assert all(f.maybe_out[1] <= 750 - chaos_plan.TAIL_S for f in plan), seed
