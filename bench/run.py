"""`make bench`: the functions measured beside raw baselines, in the same run, on the same servers.

    python -m bench.run [--quick] [--json bench-results.json] [--no-profile]

Starts its own Apache Kafka and FerretDB through devstack (or uses KAFKA_BOOTSTRAP_SERVERS /
MONGODB_URI), gives every section its own topic, group and database, runs each function as
its own process with LOG_LEVEL=WARNING, and measures:

  produce   raw kafka-python send().get() (acks=all) vs the buy function, concurrency 1/16/64
  persist   raw consume + insert_many + commit vs the persist_purchase consumer, pre-filled topic
  e2e       buy request -> record stored and committed by the consumer, at a fixed offered rate,
            plus sampled probes until the purchase shows in the history API
  history   pymongo find vs the history function, growing collection up to 1,000,000 purchases
            over 10,000 users, and one user with 10,000 purchases paged to the end
  rss       peak RSS (VmHWM, whole process tree) of every function process

It prints a table and writes JSON; it never fails on the figures. With py-spy installed, it
samples the buy worker and the consumer while they are under load (.run/bench/profiles/).
Every phase is bounded in requests and seconds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "load")]

from devstack import stack as devstack  # noqa: E402
from devstack.servers import ensure_topics, free_port  # noqa: E402

import loadgen  # noqa: E402
from purchase_common import config, storage  # noqa: E402
from purchase_common.events import build_event, to_kafka_record  # noqa: E402
from purchase_common.schema import validate_purchase  # noqa: E402

OUT_DIR = ROOT / ".run" / "bench"
TARGETS = {
    "persist_ratio": 0.90, "buy_rps": 2000, "buy_p99_ms": 50, "e2e_p99_ms": 1000, "e2e_rate": 1000,
    "history_p99_ms": 20,
}
FULL = dict(level_s=8, levels=(1, 16, 64), prefill=100_000, e2e_rate=1000, e2e_s=10, e2e_threads=96,
            history_docs=1_000_000, history_users=10_000, heavy_docs=10_000, history_checkpoints=(10_000, 100_000),
            history_budget_s=90, history_samples=200)
QUICK = dict(level_s=2, levels=(1, 16, 64), prefill=10_000, e2e_rate=200, e2e_s=4, e2e_threads=32,
             history_docs=20_000, history_users=1_000, heavy_docs=1_000, history_checkpoints=(5_000,),
             history_budget_s=20, history_samples=50)


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def pct(values, points=(50, 99)) -> dict:
    result = loadgen.percentiles(list(values), points)
    return {k: (None if v is None else round(v * 1000, 2)) for k, v in result.items()}


# ---------------------------------------------------------------------------------------
# processes: peak RSS and profiles
# ---------------------------------------------------------------------------------------

def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                pass
    return sorted(set(pids))


def peak_rss_mb(pid: int) -> dict:
    """VmHWM (peak resident set) of each process in the tree, in MiB."""
    per = {}
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    per[p] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
    return {"max_process_mib": max(per.values(), default=None), "tree_sum_mib": round(sum(per.values()), 1),
            "processes": len(per)}


def py_spy() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy record --gil (only samples holding the GIL: where the CPU goes, idle threads left
    out) as raw collapsed stacks, for a bounded time; summarized after."""

    def __init__(self, enabled: bool):
        self.tool = py_spy() if enabled else None
        self.jobs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, pid: int, seconds: float) -> None:
        if not self.tool:
            return
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        out = OUT_DIR / f"profile-{name}.txt"
        argv = [self.tool, "record", "--pid", str(pid), "--duration", str(max(int(seconds), 1)), "--rate", "200",
                "--gil", "--format", "raw", "--output", str(out), "--nonblocking"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.jobs.append((name, proc, out))

    def finish(self) -> dict:
        summaries = {}
        for name, proc, out in self.jobs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            summaries[name] = summarize_profile(out)
        self.jobs.clear()
        return summaries


def summarize_profile(path: Path, top: int = 12) -> dict:
    """Self time and inclusive time per function from py-spy's collapsed stacks."""
    if not path.exists():
        return {"error": "no profile written"}
    self_time, inclusive, total = {}, {}, 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
                  for f in stack.split(";")]
        for frame in set(frames[1:]):
            inclusive[frame] = inclusive.get(frame, 0) + n
        if frames:
            self_time[frames[-1]] = self_time.get(frames[-1], 0) + n
    share = lambda d: [(k, round(100 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]  # noqa: E731
    return {"samples": total, "file": str(path.relative_to(ROOT)), "self_pct": share(self_time),
            "inclusive_pct": share(inclusive)}


# ---------------------------------------------------------------------------------------
# records and documents
# ---------------------------------------------------------------------------------------

def purchase_record(index: int, users: int = 1000) -> tuple[bytes, bytes, list]:
    purchase = validate_purchase({"username": f"bench user {index % users}", "userId": f"bench-{index % users}",
                                  "price": round(1 + (index % 9999) / 100, 2)})
    return to_kafka_record(build_event(purchase))


def bench_docs(start: int, count: int, users: int, heavy_every: int, base: dt.datetime) -> list[dict]:
    docs = []
    for i in range(start, start + count):
        user = "heavy-user" if heavy_every and i % heavy_every == 0 else f"u{i % users:05d}"
        docs.append({"eventId": f"{i:012d}-{uuid.uuid4().hex[:8]}", "username": f"user {user}", "userId": user,
                     "priceCents": 100 + i % 10000, "timestamp": base + dt.timedelta(milliseconds=i)})
    return docs


# ---------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------

class Bench:
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
        self.stack = devstack.start_servers(self.tmp / "servers", preferred_ports=False)
        self.mongo = storage.connect(self.stack.mongodb_uri, timeout_ms=10000)
        self.results["servers"] = {"kafka": self.stack.kafka_bootstrap, "mongodb": self.stack.mongodb_uri,
                                   "started_here": bool(self.stack.processes)}

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.stack is not None:
            self.stack.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def names(self, section: str) -> dict:
        return {"topic": f"bench-{section}-{self.run}", "group": f"bench-{section}-{self.run}",
                "database": f"bench_{section}_{self.run}"}

    def env(self, names: dict) -> dict:
        return devstack.function_env(self.stack, PURCHASES_TOPIC=names["topic"], CONSUMER_GROUP=names["group"],
                                     MONGODB_DATABASE=names["database"], DEAD_LETTER_TOPIC=names["topic"] + ".dlq",
                                     LOG_LEVEL="WARNING")

    def topic(self, name: str) -> None:
        ensure_topics(self.stack.kafka_bootstrap, {name: config.TOPIC_PARTITIONS, name + ".dlq": 1})

    def start_buy(self, names):
        process = devstack.start_buy(self.env(names), free_port(), self.tmp / "logs")
        self.processes.append(process)
        return process

    def start_history(self, names):
        process = devstack.start_history(self.env(names), free_port(), self.tmp / "logs")
        self.processes.append(process)
        return process

    def start_consumer(self, names):
        process = devstack.start_consumer(self.env(names), free_port(), self.tmp / "logs")
        self.processes.append(process)
        return process

    def stop_process(self, process) -> None:
        process.stop()
        self.processes.remove(process)

    def producer(self, **overrides):
        from kafka import KafkaProducer

        options = dict(bootstrap_servers=self.stack.kafka_bootstrap, acks="all", enable_idempotence=False,
                       linger_ms=2, max_block_ms=10000, request_timeout_ms=10000)
        options.update(overrides)
        return KafkaProducer(**options)

    def committed_total(self, reader, topic: str, group: str) -> int:
        return sum(p.committed or 0 for p in reader.read(topic, group))

    # -- produce: raw vs buy -------------------------------------------------------------
    def raw_produce(self, topic: str, concurrency: int, seconds: float) -> dict:
        producer = self.producer()
        key, value, headers = purchase_record(0)
        latencies, lock = [], threading.Lock()
        deadline = time.monotonic() + seconds

        def worker():
            mine = []
            while time.monotonic() < deadline:
                started = time.perf_counter()
                producer.send(topic, key=key, value=value, headers=headers).get(timeout=10)
                mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)

        started = time.monotonic()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds + 30)
        elapsed = time.monotonic() - started
        producer.close(timeout=10)
        return {"concurrency": concurrency, "count": len(latencies), "per_s": round(len(latencies) / elapsed, 1),
                **pct(latencies)}

    def raw_produce_pipelined(self, topic: str, count: int) -> dict:
        producer = self.producer(linger_ms=5, batch_size=262144)
        key, value, headers = purchase_record(0)
        started = time.monotonic()
        for _ in range(count):
            producer.send(topic, key=key, value=value, headers=headers)
        producer.flush(timeout=60)
        elapsed = time.monotonic() - started
        producer.close(timeout=10)
        return {"count": count, "per_s": round(count / elapsed, 1)}

    def section_produce(self) -> None:
        names = self.names("buy")
        self.topic(names["topic"])
        seconds = self.sizes["level_s"]
        raw = []
        for c in self.sizes["levels"]:
            say(f"raw produce (acks=all, send().get()) at concurrency {c} for {seconds}s")
            raw.append(self.raw_produce(names["topic"], c, seconds))
        pipelined = self.raw_produce_pipelined(names["topic"], 20_000 if not self.args.quick else 5_000)
        buy = self.start_buy(names)
        target = loadgen.Target(f"http://127.0.0.1:{buy.port}", None)
        # Warm-up: the producer connects on the first request.
        loadgen.PythonLoad(target, requests=50, concurrency=4, duration_s=10).run()
        levels = []
        for c in self.sizes["levels"]:
            say(f"buy function at concurrency {c} for {seconds}s")
            if c == max(self.sizes["levels"]):
                workers = [p for p in process_tree(buy.proc.pid) if p != buy.proc.pid] or [buy.proc.pid]
                self.profiler.start("buy", workers[-1], seconds)
            result = loadgen.PythonLoad(target, requests=10**7, concurrency=c, duration_s=seconds, timeout_s=10).run()
            counts = result.counts()
            accepted = [lat for _, lat, s in result.records if s == 202]
            levels.append({"concurrency": c, "accepted": counts["accepted"], "failed": counts["failed"],
                           "per_s": round(counts["accepted"] / result.wall_s, 1), **pct(accepted)})
        self.results["rss"]["buy"] = peak_rss_mb(buy.proc.pid)
        self.stop_process(buy)
        self.results["produce"] = {"raw": raw, "raw_pipelined": pipelined, "buy": levels,
                                   "note": "raw: one shared KafkaProducer (acks=all, linger 2 ms, as buy), "
                                           "c threads each send().get() - the buy function's own pattern; "
                                           "buy: the Python load generator runs on the same 2 cores"}

    # -- persist: raw consume + insert_many vs the consumer ------------------------------
    def prefill(self, topic: str, count: int) -> None:
        say(f"pre-filling {topic} with {count} purchase CloudEvents")
        producer = self.producer(linger_ms=20, batch_size=262144, enable_idempotence=False)
        for i in range(count):
            key, value, headers = purchase_record(i)
            producer.send(topic, key=key, value=value, headers=headers)
        producer.flush(timeout=120)
        producer.close(timeout=10)

    def raw_consume_insert(self, topic: str, count: int, database: str, timeout_s: float) -> dict:
        from kafka import KafkaConsumer

        collection = self.mongo[database]["purchases"]
        storage.ensure_indexes(collection)
        consumer = KafkaConsumer(topic, bootstrap_servers=self.stack.kafka_bootstrap, group_id=f"raw-{self.run}",
                                 enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=500)
        done, first, first_count, last = 0, None, 0, None
        deadline = time.monotonic() + timeout_s
        try:
            while done < count and time.monotonic() < deadline:
                polled = consumer.poll(timeout_ms=500, max_records=500)
                records = [r for batch in polled.values() for r in batch]
                if not records:
                    continue
                docs = []
                for record in records:
                    headers = dict(record.headers)
                    data = json.loads(record.value)
                    docs.append({"eventId": headers["ce_id"].decode(), "username": data["username"],
                                 "userId": data["userId"], "priceCents": int(round(float(data["price"]) * 100)),
                                 "timestamp": dt.datetime.fromisoformat(headers["ce_time"].decode().replace("Z", "+00:00"))})
                collection.insert_many(docs, ordered=False)
                consumer.commit()
                done += len(records)
                last = time.monotonic()
                if first is None:
                    first, first_count = last, done
        finally:
            consumer.close(autocommit=False)
        elapsed = (last - first) if first and last and last > first else None
        return {"docs": done, "per_s": round((done - first_count) / elapsed, 1) if elapsed else None,
                "note": "poll 500 -> json + headers -> insert_many(ordered=False) -> commit(), one thread"}

    def section_persist(self) -> None:
        from tools.kafka_lag import LagReader

        count = self.sizes["prefill"]
        raw_names, fn_names = self.names("raw"), self.names("persist")
        self.topic(fn_names["topic"])
        self.prefill(fn_names["topic"], count)
        say("raw consume + insert_many baseline")
        raw = self.raw_consume_insert(fn_names["topic"], count, raw_names["database"], timeout_s=900)
        say("persist_purchase consumer on the same topic (its own group and database)")
        reader = LagReader(self.stack.kafka_bootstrap, timeout_ms=5000)
        consumer = self.start_consumer(fn_names)
        first = first_count = last = None
        done = 0
        deadline = time.monotonic() + 900
        profiled = False
        try:
            while time.monotonic() < deadline:
                done = self.committed_total(reader, fn_names["topic"], fn_names["group"])
                now = time.monotonic()
                if done and first is None:
                    first, first_count = now, done
                if first is not None and not profiled:
                    self.profiler.start("persist-consumer", consumer.proc.pid, min(10, self.sizes["level_s"] + 2))
                    profiled = True
                if done >= count:
                    last = now
                    break
                if consumer.proc.poll() is not None:
                    raise RuntimeError(f"consumer exited with {consumer.proc.returncode}; see {consumer.log}")
                time.sleep(0.1)
        finally:
            reader.close()
        stored = self.mongo[fn_names["database"]]["purchases"].estimated_document_count()
        self.results["rss"]["persist-purchase"] = peak_rss_mb(consumer.proc.pid)
        self.stop_process(consumer)
        elapsed = (last - first) if first and last else None
        fn = {"docs": done, "stored": stored, "per_s": round((done - first_count) / elapsed, 1) if elapsed else None,
              "note": "consumer.py, CONSUMER_BATCH_MAX=500; measured from its first commit to the last"}
        ratio = round(fn["per_s"] / raw["per_s"], 3) if fn["per_s"] and raw["per_s"] else None
        self.results["persist"] = {"records": count, "raw": raw, "function": fn, "ratio": ratio}

    # -- e2e: buy -> stored/committed, and -> visible in history ----------------------------
    def section_e2e(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from tools.kafka_lag import LagReader

        names = self.names("e2e")
        self.topic(names["topic"])
        buy, consumer, history = self.start_buy(names), self.start_consumer(names), self.start_history(names)
        rate, seconds = self.sizes["e2e_rate"], self.sizes["e2e_s"]
        target = loadgen.Target(f"http://127.0.0.1:{buy.port}", None)
        loadgen.PythonLoad(target, requests=20, concurrency=2, duration_s=10).run()  # connect the producer
        reader = LagReader(self.stack.kafka_bootstrap, timeout_ms=2000)
        # Wait (bounded) until the consumer owns its partitions and has caught up with the warm-up.
        end_wait = time.monotonic() + 60
        while time.monotonic() < end_wait and self.committed_total(reader, names["topic"], names["group"]) < 20:
            time.sleep(0.2)

        sent: dict = {}
        probes: list = []
        probe_every = max(rate // 2, 1)  # about two history probes per second

        def body(index: int) -> bytes:
            user = f"probe-{self.run}-{index}" if index % probe_every == 0 else f"e2e-{index % 1000}"
            return json.dumps({"username": "e2e", "userId": user, "price": 9.99}).encode()

        def on_response(index, status, raw_body, sent_at):
            if status == 202:
                event_id = json.loads(raw_body)["id"]
                sent[event_id] = sent_at
                if index % probe_every == 0:
                    probes.append((f"probe-{self.run}-{index}", event_id, sent_at))

        # Committed offsets every 20 ms: a record is stored once the group committed past it.
        series, stop = [], threading.Event()

        def watch():
            while not stop.is_set():
                try:
                    offsets = reader.read(names["topic"], names["group"])
                    series.append((time.monotonic(), {p.partition: p.committed or 0 for p in offsets}))
                except Exception:
                    pass
                stop.wait(0.02)

        history_results: list = []

        def probe_worker():
            session_target = loadgen.Target(f"http://127.0.0.1:{history.port}", None)
            conn = loadgen.HttpConnection(session_target, 10)
            handled = 0
            while not stop.is_set() or handled < len(probes):
                if handled >= len(probes):
                    time.sleep(0.01)
                    continue
                user, event_id, sent_at = probes[handled]
                handled += 1
                found_at, polls = None, 0
                give_up = time.monotonic() + 15
                while time.monotonic() < give_up:
                    polls += 1
                    raw = (f"GET /api/user/{user}/purchases HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").encode()
                    try:
                        status, payload = loadgen.PythonLoad.request_with_one_retry(conn, raw)
                    except OSError:
                        conn.close()
                        continue
                    if status == 200 and event_id.encode() in payload:
                        found_at = time.monotonic()
                        break
                    time.sleep(0.02)
                history_results.append({"latency": None if found_at is None else found_at - sent_at, "polls": polls})
            conn.close()

        watcher = threading.Thread(target=watch, daemon=True)
        prober = threading.Thread(target=probe_worker, daemon=True)
        watcher.start()
        prober.start()
        say(f"e2e: {rate} req/s offered for {seconds}s")
        load = loadgen.PythonLoad(target, requests=rate * seconds, concurrency=self.sizes["e2e_threads"],
                                  duration_s=seconds + 5, timeout_s=10, rate=rate, on_response=on_response, body=body)
        result = load.run()
        # Bounded wait for the consumer to store everything that was accepted.
        end_wait = time.monotonic() + 60
        while time.monotonic() < end_wait:
            if series and sum(series[-1][1].values()) >= len(sent) + 20:
                break
            time.sleep(0.1)
        stop.set()
        watcher.join(timeout=10)
        prober.join(timeout=30)
        reader.close()

        # Map event ids to (partition, offset) by reading the topic back.
        positions = {}
        observer = KafkaConsumer(bootstrap_servers=self.stack.kafka_bootstrap, enable_auto_commit=False,
                                 consumer_timeout_ms=3000)
        tps = [TopicPartition(names["topic"], p) for p in range(config.TOPIC_PARTITIONS)]
        observer.assign(tps)
        observer.seek_to_beginning()
        for record in observer:
            positions[dict(record.headers)["ce_id"].decode()] = (record.partition, record.offset)
            if len(positions) >= len(sent) + 20:
                break
        observer.close()
        latencies, missing = [], 0
        for event_id, sent_at in sent.items():
            where = positions.get(event_id)
            seen = next((t for t, committed in series if where and committed.get(where[0], 0) > where[1]), None)
            if seen is None:
                missing += 1
            else:
                latencies.append(max(seen - sent_at, 0))
        counts = result.counts()
        hist = [r["latency"] for r in history_results if r["latency"] is not None]
        self.results["e2e"] = {
            "offered_rate": rate, "seconds": seconds, "accepted": counts["accepted"], "failed": counts["failed"],
            "achieved_rate": round(counts["accepted"] / result.wall_s, 1),
            "buy_latency": pct([lat for _, lat, s in result.records if s == 202]),
            "stored": {"count": len(latencies), "missing": missing, **pct(latencies)},
            "history_probes": {"count": len(history_results), "found": len(hist), **pct(hist),
                               "mean_polls": round(statistics.mean(r["polls"] for r in history_results), 1)
                               if history_results else None},
            "note": "stored = the consumer group committed past the record (after insert_many), sampled every 20 ms; "
                    "history probes = a probe user's purchase appears in GET /api/user/<id>/purchases, polled every 20 ms",
        }
        self.results["rss"]["e2e-buy"] = peak_rss_mb(buy.proc.pid)
        self.results["rss"]["e2e-persist-purchase"] = peak_rss_mb(consumer.proc.pid)
        self.results["rss"]["e2e-history"] = peak_rss_mb(history.proc.pid)
        for process in (history, consumer, buy):
            self.stop_process(process)

    # -- history: pymongo vs the function as the collection grows ---------------------------
    def load_history_docs(self, collection, upto: int, done: int) -> int:
        users, heavy = self.sizes["history_users"], self.sizes["heavy_docs"]
        heavy_every = max(self.sizes["history_docs"] // heavy, 1)
        base = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
        batch = 10_000
        started = time.monotonic()
        while done < upto:
            n = min(batch, upto - done)
            collection.insert_many(bench_docs(done, n, users, heavy_every, base), ordered=False)
            done += n
        say(f"history collection at {done} documents ({(time.monotonic() - started):.0f}s for this step)")
        return done

    def timed_history(self, history_port: int, collection, users: list[str], budget_s: float, samples: int) -> dict:
        target = loadgen.Target(f"http://127.0.0.1:{history_port}", None)
        conn = loadgen.HttpConnection(target, 60)
        raw_lat, fn_lat, statuses = [], [], {}
        deadline = time.monotonic() + budget_s
        for i in range(samples):
            if time.monotonic() > deadline:
                break
            user = random.choice(users)
            started = time.perf_counter()
            storage.find_user_purchases(collection, user, storage.HISTORY_DEFAULT_LIMIT)
            raw_lat.append(time.perf_counter() - started)
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            try:
                # gunicorn drops keep-alive connections idle > 2 s (the pymongo query runs meanwhile).
                status, _ = loadgen.PythonLoad.request_with_one_retry(
                    conn, f"GET /api/user/{user}/purchases HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            except OSError:
                conn.close()
                status = 0
            fn_lat.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
        conn.close()
        return {"raw": {"n": len(raw_lat), **pct(raw_lat)},
                "function": {"n": len(fn_lat), **pct(fn_lat), "statuses": {str(k): v for k, v in statuses.items()}}}

    def paged_history(self, history_port: int, collection, user: str, budget_s: float) -> dict:
        target = loadgen.Target(f"http://127.0.0.1:{history_port}", None)
        conn = loadgen.HttpConnection(target, 60)
        latencies, items, cursor, statuses = [], 0, None, {}
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            query = f"?limit={storage.HISTORY_DEFAULT_LIMIT}" + (f"&before={cursor}" if cursor else "")
            raw = f"GET /api/user/{user}/purchases{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            started = time.perf_counter()
            try:
                code, headers, payload = conn.request_with_headers(raw)
            except OSError:
                conn.close()
                statuses[0] = statuses.get(0, 0) + 1
                break
            latencies.append(time.perf_counter() - started)
            statuses[code] = statuses.get(code, 0) + 1
            if code != 200:
                break
            items += len(json.loads(payload))
            cursor = headers.get("x-next-cursor")
            if not cursor:
                break
        conn.close()
        # Raw pymongo paging baseline: the same queries, same budget.
        raw_lat, raw_items, before = [], 0, None
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            started = time.perf_counter()
            docs = storage.find_user_purchases(collection, user, storage.HISTORY_DEFAULT_LIMIT, before)
            raw_lat.append(time.perf_counter() - started)
            raw_items += len(docs)
            if len(docs) < storage.HISTORY_DEFAULT_LIMIT:
                break
            before = storage.encode_cursor(docs[-1])
        return {"function": {"pages": len(latencies), "items": items, "complete": cursor is None and items > 0,
                             **pct(latencies), "statuses": {str(k): v for k, v in statuses.items()}},
                "raw": {"pages": len(raw_lat), "items": raw_items, **pct(raw_lat)}}

    def section_history(self) -> None:
        names = self.names("history")
        collection = storage.connect(self.stack.mongodb_uri, timeout_ms=120_000)[names["database"]]["purchases"]
        storage.ensure_indexes(collection)
        history = self.start_history(names)
        users = [f"u{i:05d}" for i in range(self.sizes["history_users"])]
        steps, done = [], 0
        budget = self.sizes["history_budget_s"]
        checkpoints = list(self.sizes["history_checkpoints"]) + [self.sizes["history_docs"]]
        load_started = time.monotonic()
        for upto in checkpoints:
            done = self.load_history_docs(collection, upto, done)
            final = upto == checkpoints[-1]
            say(f"history at {done} documents: pymongo vs the function (budget {budget if final else budget // 3}s)")
            step = self.timed_history(history.port, collection, users, budget if final else budget // 3,
                                      self.sizes["history_samples"])
            steps.append({"documents": done, **step})
        load_s = time.monotonic() - load_started
        say("history: paging the heavy user")
        paged = self.paged_history(history.port, collection, "heavy-user", min(budget, 60))
        explain = collection.find({"userId": "u00001"}).sort([("timestamp", -1), ("eventId", -1)]).limit(50).explain()
        self.results["history"] = {
            "documents": done, "users": self.sizes["history_users"], "heavy_user_docs": self.sizes["heavy_docs"],
            "steps": steps, "heavy_paged": paged,
            "server_plan": {k: explain.get(k) for k in ("filterPushdown", "sortPushdown", "limitPushdown")},
            "load_and_measure_s": round(load_s, 1),
        }
        self.results["rss"]["history"] = peak_rss_mb(history.proc.pid)
        self.stop_process(history)

    # -- all -------------------------------------------------------------------------------
    def run_all(self) -> dict:
        started = time.monotonic()
        self.results["meta"] = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                "quick": self.args.quick, "cpus": os.cpu_count(), "python": platform.python_version(),
                                "function_log_level": "WARNING", "profiler": self.profiler.tool or "none"}
        sections = [("produce", self.section_produce), ("persist", self.section_persist),
                    ("e2e", self.section_e2e), ("history", self.section_history)]
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


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------

def verdict(ok) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def table(results: dict) -> str:
    rows = [("measure", "function", "raw baseline", "ratio", "target")]
    produce = results.get("produce")
    if produce:
        for fn, raw in zip(produce["buy"], produce["raw"]):
            ratio = round(fn["per_s"] / raw["per_s"], 2) if raw["per_s"] else None
            ok = None
            if fn["concurrency"] == max(l["concurrency"] for l in produce["buy"]):
                ok = fn["per_s"] >= TARGETS["buy_rps"] and (fn["p99"] or 1e9) < TARGETS["buy_p99_ms"]
            rows.append((f"buy c={fn['concurrency']} req/s (p50/p99 ms)",
                         f"{fn['per_s']:.0f} ({fn['p50']}/{fn['p99']})",
                         f"{raw['per_s']:.0f} ({raw['p50']}/{raw['p99']})", ratio,
                         f">=2000/s p99<50ms: {verdict(ok)}" if ok is not None else ""))
        rows.append(("raw produce pipelined msgs/s", "", f"{produce['raw_pipelined']['per_s']:.0f}", "", ""))
    persist = results.get("persist")
    if persist:
        ok = persist["ratio"] >= TARGETS["persist_ratio"] if persist["ratio"] is not None else None
        rows.append((f"persist docs/s ({persist['records']} records)", persist["function"]["per_s"],
                     persist["raw"]["per_s"], persist["ratio"], f">=0.90 of raw: {verdict(ok)}"))
    e2e = results.get("e2e")
    if e2e:
        s = e2e["stored"]
        ok = (s["p99"] or 1e9) < TARGETS["e2e_p99_ms"] and e2e["offered_rate"] >= TARGETS["e2e_rate"] \
            and e2e["achieved_rate"] >= 0.95 * e2e["offered_rate"]
        rows.append((f"e2e buy->stored p50/p99 ms @{e2e['offered_rate']}/s offered ({e2e['achieved_rate']}/s done)",
                     f"{s['p50']}/{s['p99']} (n={s['count']}, missing {s['missing']})", "", "",
                     f"p99<1s at 1000/s: {verdict(ok)}"))
        h = e2e["history_probes"]
        rows.append(("e2e buy->visible in history p50/p99 ms (probes)", f"{h['p50']}/{h['p99']} (n={h['found']}/{h['count']})",
                     "", "", ""))
    history = results.get("history")
    if history:
        for step in history["steps"]:
            fn, raw = step["function"], step["raw"]
            ratio = round(fn["p50"] / raw["p50"], 2) if fn.get("p50") and raw.get("p50") else None
            ok = (fn["p99"] or 1e9) < TARGETS["history_p99_ms"] if step is history["steps"][-1] else None
            rows.append((f"history p50/p99 ms, {step['documents']:,} docs",
                         f"{fn['p50']}/{fn['p99']} (n={fn['n']}, {fn['statuses']})", f"{raw['p50']}/{raw['p99']} (n={raw['n']})",
                         ratio, f"p99<20ms: {verdict(ok)}" if ok is not None else ""))
        paged = history["heavy_paged"]
        rows.append((f"history heavy user ({history['heavy_user_docs']:,}) paged p50/p99 ms",
                     f"{paged['function']['p50']}/{paged['function']['p99']} ({paged['function']['pages']} pages, "
                     f"{paged['function']['items']} items)",
                     f"{paged['raw']['p50']}/{paged['raw']['p99']} ({paged['raw']['pages']} pages)", "", ""))
        rows.append(("FerretDB plan for the history query", str(history["server_plan"]), "", "", ""))
    for name, rss in results.get("rss", {}).items():
        rows.append((f"peak RSS {name} MiB (max process / tree)", f"{rss['max_process_mib']} / {rss['tree_sum_mib']}",
                     "", "", ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    lines = []
    for index, row in enumerate(rows):
        lines.append(" | ".join(str("" if v is None else v).ljust(widths[i]) for i, v in enumerate(row)).rstrip())
        if index == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in about two minutes")
    parser.add_argument("--json", default=str(ROOT / "bench-results.json"), help="where to write the JSON results")
    parser.add_argument("--no-profile", action="store_true", help="do not run py-spy even when it is installed")
    parser.add_argument("--only", nargs="*", choices=("produce", "persist", "e2e", "history"),
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
