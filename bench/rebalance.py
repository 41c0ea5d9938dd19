"""Scale events of the persist-purchase group, measured locally (issue 26, deliverable 5).

    python -m bench.rebalance [--assignors range cooperative-sticky] [--rate 200] [--step-s 15]
                              [--max-consumers 3] [--rounds 2] [--stop term|kill] [--brokers 1]
                              [--json FILE]

Under a steady produce rate the group goes 1 -> N -> 1 consumer processes, as KEDA would scale
it: a consumer added is a new process joining, one removed is SIGTERMed (it commits and leaves
the group; --stop kill SIGKILLs it instead, the reference for a member that does not leave).
Each assignor (CONSUMER_ASSIGNOR) gets the same steps on a topic, group and database of its own.
Per scale event: the stall, the worst partition's pause, the records redelivered and e2e
(produce acknowledged -> committed), as bench/scale_events.py defines them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kafka import KafkaProducer
from purchase_common import config

from bench import scale_events
from bench.common import purchase_record, say
from devstack import stack as devstack
from devstack.servers import ensure_topics
from tools.common import Process, free_port


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
        self.recording = scale_events.Recording()
        self.stop = threading.Event()
        self.sampler = scale_events.Sampler(self.recording, stack.kafka_bootstrap, self.topic, self.group, self.members)

    def members(self) -> dict[str, str]:
        return {process.name: f"http://127.0.0.1:{process.port}/metrics" for process in list(self.consumers)}

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
                    lambda md: self.recording.sent.__setitem__((md.partition, md.offset), self.recording.now()))
        finally:
            producer.flush(10)
            producer.close(5)

    def scale_to(self, count: int) -> None:
        before = len(self.consumers)
        if count > before:
            for _ in range(count - before):
                self.started += 1
                name = f"consumer-{self.assignor}-{self.started}"
                self.consumers.append(devstack.start_consumer(self.env, free_port(), self.tmp / "logs", name=name))
        else:
            self.sampler.scrape()  # the counters of the members about to go
            for process in self.consumers[count:]:
                if self.args.stop == "kill":   # no commit, no LeaveGroup: the session timeout decides
                    os.killpg(process.proc.pid, signal.SIGKILL)
                    process.proc.wait(10)
                else:
                    process.stop()   # SIGTERM: the batch in hand committed, then LeaveGroup
            self.consumers = self.consumers[:count]
        self.recording.events.append((self.recording.now(), f"{before}->{count}"))
        say(f"{self.assignor}: {before} -> {count} consumers at {self.recording.now():.1f}s")

    def run(self) -> dict:
        producer = threading.Thread(target=self.produce, daemon=True)
        producer.start()
        try:
            with self.sampler:
                self.scale_to(1)
                time.sleep(self.args.step_s)
                for count in scale_events.scale_steps(self.args.max_consumers):
                    self.scale_to(count)
                    time.sleep(self.args.step_s)
        finally:
            self.stop.set()
            producer.join(30)
            for process in self.consumers:
                process.stop()
        return scale_events.analyse(self.recording)


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
    print(scale_events.table(results["runs"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
