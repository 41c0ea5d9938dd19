"""How a scale event of the consumer group is judged (bench/scale_events.py): the pause, the
worst partition's pause, redeliveries and e2e, from a recording built by hand."""
from __future__ import annotations

import pytest

from bench import scale_events as se


def sample(t: float, committed: dict, ends: dict) -> tuple:
    return (t, committed, ends)


def test_the_pause_is_the_longest_time_nothing_moved_while_records_waited():
    samples = [sample(0.0, {0: 1, 1: 1}, {0: 5, 1: 5}),
               sample(1.0, {0: 1, 1: 1}, {0: 6, 1: 6}),  # still, records waiting
               sample(2.5, {0: 1, 1: 1}, {0: 7, 1: 7}),
               sample(3.0, {0: 4, 1: 1}, {0: 7, 1: 7}),  # partition 0 moved
               sample(4.0, {0: 4, 1: 1}, {0: 7, 1: 7})]
    assert se.longest_still(samples, 0, 10, None) == 2.5
    assert se.longest_still(samples, 0, 10, [1]) == 4.0
    assert se.longest_still(samples, 0, 10, [0]) == 2.5
    # Only the window counts.
    assert se.longest_still(samples, 2.5, 10, None) == 1.0


def test_a_caught_up_group_that_does_not_move_is_not_paused():
    samples = [sample(t, {0: 3}, {0: 3}) for t in (0.0, 1.0, 2.0, 3.0)]
    assert se.longest_still(samples, 0, 10, None) == 0.0


def test_e2e_is_acknowledged_to_the_first_sample_committed_past_the_record():
    recording = se.Recording()
    recording.sent = {(0, 0): 0.5, (0, 1): 1.0, (1, 0): 1.2, (0, 2): 9.0}
    recording.samples = [sample(1.1, {0: 1, 1: 0}, {}),   # past offset 0 of partition 0
                         sample(2.0, {0: 2, 1: 1}, {}),
                         sample(3.0, {0: 2, 1: 1}, {})]
    assert sorted(round(x, 2) for x in se.e2e_latencies(recording, 0, 5)) == [0.6, 0.8, 1.0]
    # (0, 2) was acknowledged after the window and is never committed: not counted either way.
    assert se.e2e_latencies(recording, 5, 10) == []


def test_redeliveries_are_the_counters_growth_in_the_window():
    recording = se.Recording()
    recording.duplicate_totals = [(0.0, 0), (1.0, 2), (5.0, 7), (9.0, 7), (12.0, 10)]
    assert se.duplicates_between(recording, 1.0, 9.0) == 5
    assert se.duplicates_between(recording, 0.5, 100) == 10


def test_each_event_is_judged_until_the_next_and_the_groups_start_is_not_an_event():
    recording = se.Recording()
    recording.events = [(0.0, "0->1"), (10.0, "1->2"), (20.0, "2->1")]
    recording.samples = [sample(float(t), {0: t, 1: 0 if 10 <= t < 14 else t}, {0: t + 1, 1: t + 1})
                         for t in range(0, 31)]
    recording.duplicate_totals = [(0.0, 0), (12.0, 3), (25.0, 3)]
    rows = se.analyse(recording)["events"]
    assert [(r["event"], r["at_s"], r["window_s"]) for r in rows] == [("1->2", 10.0, 10.0), ("2->1", 20.0, 10.0)]
    first, second = rows
    assert first["partition_max_s"] == 3.0 and first["stall_s"] == 0.0
    assert first["redelivered"] == 3 and second["redelivered"] == 0
    assert second["partition_max_s"] == 0.0
    assert "1->2" in se.table([{"assignor": "range", **se.analyse(recording)}])


@pytest.mark.parametrize(("most", "steps"), [(1, []), (2, [2, 1]), (3, [2, 3, 2, 1])])
def test_the_group_goes_one_to_n_and_back(most, steps):
    assert se.scale_steps(most) == steps
