"""Scale events of the persist-purchase group: what is recorded and how it is judged, the same
for the local bench (bench.rebalance: consumer processes started and SIGTERMed) and the node's
(bench.node, the "scale-events" part: KEDA scaling the Deployment's pods).

Per scale event, over the step that follows it (until the next event):

  stall_s          the longest time no partition's committed offset moved while records waited:
                   the pause, when the whole group consumed nothing
  partition_max_s  the longest time one partition with records waiting was not committed past
  redelivered      records stored a second time (the members' purchases_duplicates_total: what
                   the unique eventId absorbed)
  e2e p50/p99/max  the record acknowledged to its producer -> the group committed past it, for
                   the records acknowledged in the step

Committed offsets are sampled every SAMPLE_S; a record's e2e is the first sample past it.
"""
from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.common import pct
from tools.lag_reader import LagReader

SAMPLE_S = 0.05
SCRAPE_S = 1.0
DUPLICATES = re.compile(r"^purchases_duplicates_total (\S+)$", re.MULTILINE)


@dataclass
class Recording:
    """What one run saw, on one clock (seconds since its start): sends, committed-offset samples,
    scale events and the members' duplicates counters."""
    sent: dict = field(default_factory=dict)           # (partition, offset) -> acknowledged at
    samples: list = field(default_factory=list)        # (t, {partition: committed}, {partition: end})
    events: list = field(default_factory=list)         # (t, "1->2")
    duplicates: dict = field(default_factory=dict)     # member -> last counter value
    duplicate_totals: list = field(default_factory=list)  # (t, sum over members)
    t0: float = field(default_factory=time.monotonic)

    def now(self) -> float:
        return time.monotonic() - self.t0


class Sampler:
    """Two threads while a run lasts: the group's committed and end offsets every SAMPLE_S, and
    every SCRAPE_S each member's duplicates counter from its /metrics (`members()` gives
    member -> metrics URL; a member gone keeps its last value)."""

    def __init__(self, recording: Recording, bootstrap: str, topic: str, group: str,
                 members: Callable[[], dict[str, str]]):
        self.recording, self.bootstrap, self.topic, self.group = recording, bootstrap, topic, group
        self.members = members
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=work, daemon=True) for work in (self._offsets, self._scrapes)]

    def __enter__(self) -> Sampler:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        self.scrape()

    def _offsets(self) -> None:
        reader = LagReader(self.bootstrap, timeout_ms=3000)
        try:
            while not self.stop.is_set():
                try:
                    offsets = reader.read(self.topic, self.group)
                except Exception:  # a sample missed while the coordinator moves: the next one counts
                    self.stop.wait(SAMPLE_S)
                    continue
                self.recording.samples.append((self.recording.now(), {p.partition: p.committed or 0 for p in offsets},
                                               {p.partition: p.end for p in offsets}))
                self.stop.wait(SAMPLE_S)
        finally:
            reader.close()

    def _scrapes(self) -> None:
        while not self.stop.wait(SCRAPE_S):
            self.scrape()

    def scrape(self) -> None:
        """Each live member's duplicates counter, now (also called just before a member is stopped)."""
        try:
            members = self.members()
        except Exception:  # the member list is an API call on the node: the next scrape counts
            return
        for name, url in members.items():
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    found = DUPLICATES.search(resp.read().decode())
            except OSError:
                continue
            if found:
                self.recording.duplicates[name] = float(found.group(1))
        self.recording.duplicate_totals.append((self.recording.now(), sum(self.recording.duplicates.values())))


def longest_still(samples: list, start: float, end: float, partitions: list[int] | None) -> float:
    """The longest stretch in [start, end] where the committed offsets of `partitions` (all,
    summed, when None) did not move while records waited behind them."""
    longest, still_since, last = 0.0, None, None
    for t, committed, ends in samples:
        if not start <= t <= end:
            continue
        keys = partitions if partitions is not None else list(committed)
        position = sum(committed.get(p, 0) for p in keys)
        waiting = any(ends.get(p, 0) > committed.get(p, 0) for p in keys)
        if last is not None and position == last and waiting:
            still_since = still_since if still_since is not None else t
            longest = max(longest, t - still_since)
        else:
            still_since = t if waiting else None
        last = position
    return round(longest, 2)


def e2e_latencies(recording: Recording, start: float, end: float) -> list[float]:
    """acknowledged -> first sample committed past it, for the records acknowledged in [start, end)."""
    latencies = []
    by_partition: dict[int, list] = {}
    for (partition, offset), at in recording.sent.items():
        if start <= at < end:
            by_partition.setdefault(partition, []).append((offset, at))
    for partition, records in by_partition.items():
        records.sort()
        index = 0
        for t, committed, _ in recording.samples:
            while index < len(records) and committed.get(partition, 0) > records[index][0]:
                if t >= records[index][1]:
                    latencies.append(t - records[index][1])
                index += 1
    return latencies


def duplicates_between(recording: Recording, start: float, end: float) -> int:
    inside = [total for t, total in recording.duplicate_totals if t <= end]
    before = [total for t, total in recording.duplicate_totals if t <= start]
    return int((inside[-1] if inside else 0) - (before[-1] if before else 0))


def analyse(recording: Recording, settle_s: float = 1.5) -> dict:
    """One row per scale event (the first event is the group's start, not one), each judged until
    the next event (the last one until the last sample)."""
    rows = []
    partitions = sorted(recording.samples[-1][1]) if recording.samples else []
    last_sample = recording.samples[-1][0] if recording.samples else 0.0
    events = recording.events[1:]
    for index, (t, label) in enumerate(events):
        end = events[index + 1][0] if index + 1 < len(events) else last_sample
        latencies = e2e_latencies(recording, t, end)
        rows.append({"event": label, "at_s": round(t, 1), "window_s": round(end - t, 1),
                     "stall_s": longest_still(recording.samples, t, end, None),
                     "partition_max_s": max((longest_still(recording.samples, t, end, [p]) for p in partitions),
                                            default=0.0),
                     # A counter is scraped up to a scrape period after the redelivery it counts.
                     "redelivered": duplicates_between(recording, t, end + settle_s),
                     "e2e_ms": {**pct(latencies, (50, 99)), "max": round(max(latencies) * 1000) if latencies else None,
                                "records": len(latencies)}})
    return {"events": rows}


def table(runs: list[dict]) -> str:
    """One line per scale event of each run (`{"assignor": ..., "events": [...]}`)."""
    lines = [f"{'assignor':<20} {'event':<6} {'stall s':>8} {'partition max s':>16} {'redelivered':>12} "
             f"{'e2e p50 ms':>11} {'p99 ms':>8} {'max ms':>8}"]
    for run in runs:
        for row in run["events"]:
            e2e = row["e2e_ms"]
            lines.append(f"{run['assignor']:<20} {row['event']:<6} {row['stall_s']:>8} {row['partition_max_s']:>16} "
                         f"{row['redelivered']:>12} {e2e['p50']!s:>11} {e2e['p99']!s:>8} {e2e['max']!s:>8}")
    return "\n".join(lines)


def scale_steps(most: int) -> list[int]:
    """The group's sizes after its start at one: 1 -> 2 -> ... -> most -> ... -> 1."""
    return [*range(2, most + 1), *range(most - 1, 0, -1)]
