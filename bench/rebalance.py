"""Scale events of the persist-purchase group, measured locally (issue 26, deliverable 5).

    python -m bench.rebalance [--assignors range cooperative-sticky] [--rate 200] [--step-s 15]
                              [--max-consumers 3] [--rounds 2] [--stop term|kill] [--brokers 1]
                              [--json FILE]

Under a steady produce rate the group goes 1 -> N -> 1 consumer processes, as KEDA would scale
it: a consumer added is a new process joining, one removed is SIGTERMed (it commits and leaves
the group; --stop kill SIGKILLs it instead, the reference for a member that does not leave).
Each assignor (CONSUMER_ASSIGNOR) gets the same steps on a topic, group and database of its own.
Per scale event, over the step that follows it:

  stall_s          the longest time no partition's committed offset moved while records waited
  partition_max_s  the longest time one partition with records waiting was not committed past
  redelivered      records stored a second time (purchases_duplicates_total of the consumers:
                   what the unique eventId absorbed)
  e2e p50/p99/max  produce acknowledged -> the group committed past the record, for the records
                   produced in the step

Committed offsets are sampled every SAMPLE_S; a record's e2e is the first sample past it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaProducer
from purchase_common import config

from bench.common import pct, purchase_record, say
from devstack import stack as devstack
from devstack.servers import ensure_topics
from tools.common import Process, free_port
from tools.lag_reader import LagReader

SAMPLE_S = 0.05
DUPLICATES = re.compile(r"^purchases_duplicates_total (\S+)$", re.MULTILINE)


@dataclass
class Recording:
    """What one assignor's run saw: sends, committed-offset samples, scale events, duplicates."""
    sent: dict = field(default_factory=dict)           # (partition, offset) -> acknowledged at
    samples: list = field(default_factory=list)        # (t, {partition: committed}, {partition: end})
    events: list = field(default_factory=list)         # (t, "1->2")
    duplicates: dict = field(default_factory=dict)     # consumer name -> last counter value
    duplicate_totals: list = field(default_factory=list)  # (t, sum over consumers)


class Run:
    def __init__(self, stack: devstack.Stack, assignor: str, args, tmp: Path):
        self.stack, self.assignor, self.args, self.tmp = stack, assignor, args, tmp
        tag = f"{assignor}-{uuid.uuid4().hex[:6]}"
        self.topic, self.group = f"rebalance-{tag}", f"rebalance-{tag}"
        ensure_topics(stack.kafka_bootstrap, {self.topic: config.TOPIC_PARTITIONS, self.topic + ".dlq": 1})
        self.env = devstack.function_env(
            stack, PURCHASES_TOPIC=self.topic, DEAD_LETTER_TOPIC=self.topic + ".dlq", CONSUMER_GROUP=self.group,
            MONGODB_DATABASE=f"rebalance_{tag}".replace("-", "_"), CONSUMER_ASSIGNOR=assignor, LOG_LEVEL="WARNING")
        self.consumers: list[Process] = []
        self.started = 0
        self.recording = Recording()
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def produce(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.stack.kafka_bootstrap.split(","), acks="all", linger_ms=0)
        interval, index, next_at = 1 / self.args.rate, 0, time.monotonic()
        try:
            while not self.stop.is_set():
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += interval
                key, value, headers = purchase_record(index, users=60)
                index += 1
                producer.send(self.topic, key=key, value=value, headers=headers).add_callback(
                    lambda md: self.recording.sent.__setitem__((md.partition, md.offset), self.now()))
        finally:
            producer.flush(10)
            producer.close(5)

    def sample(self) -> None:
        reader = LagReader(self.stack.kafka_bootstrap, timeout_ms=3000)
        next_scrape = 0.0
        try:
            while not self.stop.is_set():
                try:
                    offsets = reader.read(self.topic, self.group)
                except Exception:  # a sample missed while the coordinator moves: the next one counts
                    time.sleep(SAMPLE_S)
                    continue
                self.recording.samples.append((self.now(), {p.partition: p.committed or 0 for p in offsets},
                                               {p.partition: p.end for p in offsets}))
                if self.now() >= next_scrape:
                    self.scrape()
                    next_scrape = self.now() + 1.0
                time.sleep(SAMPLE_S)
        finally:
            reader.close()

    def scrape(self) -> None:
        """Each live consumer's duplicates counter; a stopped one keeps its last value."""
        for process in list(self.consumers):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{process.port}/metrics", timeout=2) as resp:
                    found = DUPLICATES.search(resp.read().decode())
            except OSError:
                continue
            if found:
                self.recording.duplicates[process.name] = float(found.group(1))
        self.recording.duplicate_totals.append((self.now(), sum(self.recording.duplicates.values())))

    def scale_to(self, count: int) -> None:
        before = len(self.consumers)
        if count > before:
            for _ in range(count - before):
                self.started += 1
                name = f"consumer-{self.assignor}-{self.started}"
                self.consumers.append(devstack.start_consumer(self.env, free_port(), self.tmp / "logs", name=name))
        else:
            for process in self.consumers[count:]:
                self.scrape()
                if self.args.stop == "kill":   # no commit, no LeaveGroup: the session timeout decides
                    os.killpg(process.proc.pid, signal.SIGKILL)
                    process.proc.wait(10)
                else:
                    process.stop()   # SIGTERM: the batch in hand committed, then LeaveGroup
            self.consumers = self.consumers[:count]
        self.recording.events.append((self.now(), f"{before}->{count}"))
        say(f"{self.assignor}: {before} -> {count} consumers at {self.now():.1f}s")

    def run(self) -> dict:
        threads = [threading.Thread(target=work, daemon=True) for work in (self.produce, self.sample)]
        for thread in threads:
            thread.start()
        try:
            self.scale_to(1)
            steps = [*range(2, self.args.max_consumers + 1), *range(self.args.max_consumers - 1, 0, -1)]
            time.sleep(self.args.step_s)
            for count in steps:
                self.scale_to(count)
                time.sleep(self.args.step_s)
        finally:
            self.scrape()
            self.stop.set()
            for thread in threads:
                thread.join(30)
            for process in self.consumers:
                process.stop()
        return analyse(self.recording, self.args.step_s)


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
    """produce ack -> first sample committed past it, for the records acknowledged in [start, end)."""
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


def analyse(recording: Recording, step_s: float) -> dict:
    rows = []
    partitions = sorted(recording.samples[-1][1]) if recording.samples else []
    for t, label in recording.events[1:]:   # the first is the group's start, not a scale event
        end = t + step_s
        latencies = e2e_latencies(recording, t, end)
        rows.append({"event": label, "at_s": round(t, 1),
                     "stall_s": longest_still(recording.samples, t, end, None),
                     "partition_max_s": max((longest_still(recording.samples, t, end, [p]) for p in partitions),
                                            default=0.0),
                     "redelivered": duplicates_between(recording, t, end + 1.5),
                     "e2e_ms": {**pct(latencies, (50, 99)), "max": round(max(latencies) * 1000) if latencies else None,
                                "records": len(latencies)}})
    return {"events": rows}


def table(results: dict) -> str:
    lines = [f"{'assignor':<20} {'event':<6} {'stall s':>8} {'partition max s':>16} {'redelivered':>12} "
             f"{'e2e p50 ms':>11} {'p99 ms':>8} {'max ms':>8}"]
    for result in results["runs"]:
        assignor = result["assignor"]
        for row in result["events"]:
            e2e = row["e2e_ms"]
            lines.append(f"{assignor:<20} {row['event']:<6} {row['stall_s']:>8} {row['partition_max_s']:>16} "
                         f"{row['redelivered']:>12} {e2e['p50']!s:>11} {e2e['p99']!s:>8} {e2e['max']!s:>8}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rebalance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assignors", nargs="+", default=["range", "cooperative-sticky"],
                        choices=["range", "cooperative-sticky"])
    parser.add_argument("--rate", type=float, default=200.0, help="records produced per second")
    parser.add_argument("--step-s", type=float, default=15.0, help="seconds between scale events")
    parser.add_argument("--max-consumers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each assignor, alternating")
    parser.add_argument("--stop", choices=["term", "kill"], default="term",
                        help="how a consumer is removed: SIGTERM (commit, leave) or SIGKILL (the reference "
                             "for a member that does not leave: its partitions wait out the session timeout)")
    parser.add_argument("--brokers", type=int, default=1, help="Kafka nodes to start (3: RF 3, min ISR 2)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rebalance-"))
    stack = devstack.start_servers(tmp / "servers", preferred_ports=False, brokers=args.brokers)
    results = {"when": time.strftime("%Y-%m-%d"), "rate": args.rate, "step_s": args.step_s,
               "max_consumers": args.max_consumers, "brokers": args.brokers, "stop": args.stop,
               "session_timeout_ms": config.settings().consumer_session_timeout_ms, "runs": []}
    try:
        for _ in range(args.rounds):   # the assignors in alternation, so a busy spell hits them alike
            for assignor in args.assignors:
                results["runs"].append({"assignor": assignor, **Run(stack, assignor, args, tmp).run()})
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
