"""`make bench`: the functions measured beside raw baselines, in the same run, on the same servers.

    python -m bench.run [--quick] [--json bench-results.json] [--no-profile] [--brokers 3]

Starts its own Apache Kafka and FerretDB through devstack (or uses KAFKA_BOOTSTRAP_SERVERS /
MONGODB_URI), gives every section its own topic, group and database, runs each function as
its own process with LOG_LEVEL=WARNING, and measures:

  coldstart exec -> first answer (buy, history) and exec -> first record stored (consumer), split
  produce   raw kafka-python send().get() (acks=all; buy's linger and 2 ms) vs the buy function vs
            the HTTP ceiling (buy's server stack answering without Kafka), concurrency 1/16/64
  persist   raw consume + insert_many + commit vs the persist_purchase consumer, pre-filled topic;
            again on FerretDB with SQLite (the store before issue 23) when the bench started its own
  e2e       buy request -> record stored and committed by the consumer, at a fixed offered rate,
            plus sampled probes until the purchase shows in the history API
  history   pymongo find vs the history function, growing collection up to 1,000,000 purchases
            over 100,000 users (a user's first page), then the heavy user (10,000 purchases): its
            first page, a page 9,000 deep (before=), paged to the end; and what counting costs
  rss       peak RSS (VmHWM, whole process tree) of every function process

It prints a table and writes JSON; it never fails on the figures. With py-spy installed, it
samples the buy worker and the consumer while they are under load (.run/bench/profiles/).
Every phase is bounded in requests and seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from purchase_common import config, storage

from bench.coldstart import ColdStartSection
from bench.common import FULL, QUICK, ROOT, TARGETS, say
from bench.e2e import EndToEndSection
from bench.history import HistorySection
from bench.persist import PersistSection
from bench.produce import ProduceSection
from bench.profiling import Profiler
from bench.report import table
from devstack import stack as devstack
from devstack.servers import ensure_topics, start_ferretdb
from tools.common import free_port


class Bench(ColdStartSection, ProduceSection, PersistSection, EndToEndSection, HistorySection):
    """The servers, the processes and the results; the sections are the mixins, one module each."""

    def __init__(self, args, sizes: dict):
        self.args, self.sizes = args, sizes
        self.run = uuid.uuid4().hex[:6]
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.stack: devstack.Stack | None = None
        self.processes = []
        self.results: dict = {"targets": TARGETS, "sizes": sizes, "rss": {}, "profiles": {}}
        self.profiler = Profiler(not args.no_profile)

    # -- plumbing --------------------------------------------------------------------
    def start(self) -> None:
        say("starting Kafka and FerretDB (or using KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI)")
        self.stack = devstack.start_servers(self.tmp / "servers", preferred_ports=False, brokers=self.args.brokers)
        self.mongo = storage.connect(self.stack.mongodb_uri, timeout_ms=10000)
        self.results["servers"] = {"kafka": self.stack.kafka_bootstrap, "mongodb": self.stack.mongodb_uri,
                                   "started_here": bool(self.stack.processes)}

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.stack is not None:
            self.stack.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def sqlite_store(self) -> str | None:
        """FerretDB on SQLite, the store before issue 23, when the bench started its own store."""
        if not any(p.name == "ferretdb" for p in self.stack.processes):
            return None
        say("starting FerretDB on SQLite too, the store before issue 23, for persist's comparison")
        sqlite = start_ferretdb(self.tmp / "servers" / "ferretdb-sqlite", backend="sqlite")
        self.processes.append(sqlite)
        return f"mongodb://127.0.0.1:{sqlite.port}/"

    @contextlib.contextmanager
    def store(self, uri: str):
        """Point the bench (its own client and every function it starts) at another MongoDB-wire store."""
        saved = self.stack.mongodb_uri, self.mongo
        self.stack.mongodb_uri, self.mongo = uri, storage.connect(uri, timeout_ms=10000)
        try:
            yield
        finally:
            self.mongo.close()
            self.stack.mongodb_uri, self.mongo = saved

    def names(self, section: str) -> dict:
        return {"topic": f"bench-{section}-{self.run}", "group": f"bench-{section}-{self.run}",
                "database": f"bench_{section}_{self.run}"}

    def env(self, names: dict) -> dict:
        return devstack.function_env(self.stack, PURCHASES_TOPIC=names["topic"], CONSUMER_GROUP=names["group"],
                                     MONGODB_DATABASE=names["database"], DEAD_LETTER_TOPIC=names["topic"] + ".dlq",
                                     LOG_LEVEL="WARNING")

    def topic(self, name: str) -> None:
        ensure_topics(self.stack.kafka_bootstrap, {name: config.TOPIC_PARTITIONS, name + ".dlq": 1})

    def start_buy(self, names, **which):
        process = devstack.start_buy(self.env(names), free_port(), self.tmp / "logs", **which)
        self.processes.append(process)
        return process

    def start_history(self, names):
        process = devstack.start_history(self.env(names), free_port(), self.tmp / "logs")
        self.processes.append(process)
        return process

    def start_consumer(self, names, health_port: int | None = None, wait: bool = True):
        process = devstack.start_consumer(self.env(names), health_port or free_port(), self.tmp / "logs", wait=wait)
        self.processes.append(process)
        return process

    def stop_process(self, process) -> None:
        process.stop()
        self.processes.remove(process)

    def producer(self, **overrides):
        from kafka import KafkaProducer

        options = dict(bootstrap_servers=self.stack.kafka_bootstrap, acks="all", enable_idempotence=False,
                       linger_ms=config.load({}).kafka_linger_ms, max_block_ms=10000, request_timeout_ms=10000)
        options.update(overrides)
        return KafkaProducer(**options)

    def committed_total(self, reader, topic: str, group: str) -> int:
        return sum(p.committed or 0 for p in reader.read(topic, group))

    # -- all -------------------------------------------------------------------------------
    def run_all(self) -> dict:
        started = time.monotonic()
        self.results["meta"] = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                "quick": self.args.quick, "brokers": self.args.brokers,
                                "cpus": os.cpu_count(), "python": platform.python_version(),
                                "function_log_level": "WARNING", "profiler": self.profiler.tool or "none"}
        # Cold starts first, while the box is idle (no load generator, no filled collection).
        sections = [("coldstart", self.section_coldstart), ("produce", self.section_produce),
                    ("persist", self.section_persist), ("e2e", self.section_e2e), ("history", self.section_history)]
        only = set(self.args.only or [])
        for name, section in sections:
            if only and name not in only:
                continue
            try:
                section()
            except Exception as exc:  # one broken section must not hide the others
                say(f"section {name} failed: {type(exc).__name__}: {exc}")
                self.results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        self.results["profiles"] = self.profiler.finish()
        self.results["meta"]["seconds"] = round(time.monotonic() - started, 1)
        return self.results




def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in about two minutes")
    parser.add_argument("--json", default=str(ROOT / "bench-results.json"), help="where to write the JSON results")
    parser.add_argument("--no-profile", action="store_true", help="do not run py-spy even when it is installed")
    parser.add_argument("--brokers", type=int, default=1,
                        help="Kafka nodes the bench starts: 3 is the replicated cluster (RF 3, min ISR 2), "
                             "to see what replication costs beside one")
    parser.add_argument("--only", nargs="*", choices=("coldstart", "produce", "persist", "e2e", "history"),
                        help="run only these sections")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    bench = Bench(args, sizes)
    print("Functions run with LOG_LEVEL=WARNING during the benchmark (per-request INFO logs off).", flush=True)
    try:
        bench.start()
        results = bench.run_all()
    finally:
        bench.stop()
    Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print(table(results))
    for name, profile in results.get("profiles", {}).items():
        if "self_pct" in profile:
            print(f"\nprofile {name} ({profile['samples']} samples, {profile['file']}): top self time")
            for frame, share in profile["self_pct"][:8]:
                print(f"  {share:5.1f}%  {frame}")
    if results.get("errors"):
        print(f"\nsections that failed: {results['errors']}")
    print(f"\nresults written to {args.json} ({results['meta']['seconds']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
