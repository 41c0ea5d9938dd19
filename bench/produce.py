"""produce: raw kafka-python send().get() vs the buy function"""
from __future__ import annotations

import threading
import time

from bench.common import pct, purchase_record, say
from bench.profiling import peak_rss_mb, process_tree
from load import loadgen


class ProduceSection:
    """produce: raw kafka-python send().get() vs the buy function (a part of bench.run.Bench)."""

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
