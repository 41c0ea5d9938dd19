"""produce: buy's Kafka client alone (and kafka-python, its client before issue 12) vs the buy function"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import uvloop
from purchase_common import config
from purchase_common.producer import Producer

from bench import hey
from bench.common import pct, purchase_record, say
from bench.profiling import peak_rss_mb, process_tree
from devstack.servers import ensure_hey

# The linger measured beside buy's when buy's is 0: the default before issue 12.
OTHER_LINGER_MS = 2
CEILING_SOURCE = Path(__file__).resolve().parent / "ceiling" / "main.py"


def _closed_loop(concurrency: int, seconds: float, send_and_wait) -> dict:
    """c threads each sending one record and waiting for its acknowledgement, for `seconds`."""
    latencies, lock = [], threading.Lock()
    deadline = time.monotonic() + seconds

    def worker():
        mine = []
        while time.monotonic() < deadline:
            started = time.perf_counter()
            send_and_wait()
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
    return {"concurrency": concurrency, "count": len(latencies), "per_s": round(len(latencies) / elapsed, 1),
            **pct(latencies)}


class ProduceSection:
    """produce: buy's Kafka client alone, kafka-python, the HTTP ceiling and the buy function (a part of
    bench.run.Bench)."""

    def raw_produce(self, topic: str, concurrency: int, seconds: float, linger_ms: int) -> dict:
        producer = self.producer(linger_ms=linger_ms, metrics_enabled=False)  # as buy's (producer.py)
        key, value, headers = purchase_record(0)
        try:
            return _closed_loop(concurrency, seconds,
                                lambda: producer.send(topic, key=key, value=value, headers=headers).get(timeout=10))
        finally:
            producer.close(timeout=10)

    def raw_produce_buys_client(self, topic: str, concurrency: int, seconds: float, linger_ms: int) -> dict:
        """buy's own producer (purchase_common.producer: librdkafka bridged to asyncio, buy's
        settings but the linger), c tasks each awaiting one send at a time: buy's Kafka part
        without HTTP, on the same broker and cores."""
        settings = config.load({"KAFKA_BOOTSTRAP_SERVERS": self.stack.kafka_bootstrap,
                                "KAFKA_LINGER_MS": str(linger_ms)})
        producer = Producer(settings, logging.getLogger("bench.raw"))
        key, value, headers = purchase_record(0)

        async def closed_loop() -> dict:
            await producer.send(topic, key, value, headers)  # connect and learn the topic first
            latencies, loop = [], asyncio.get_running_loop()
            deadline = loop.time() + seconds

            async def worker():
                while loop.time() < deadline:
                    started = time.perf_counter()
                    await producer.send(topic, key, value, headers)
                    latencies.append(time.perf_counter() - started)

            started = loop.time()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = loop.time() - started
            return {"concurrency": concurrency, "count": len(latencies),
                    "per_s": round(len(latencies) / elapsed, 1), **pct(latencies)}

        try:
            return uvloop.run(closed_loop())
        finally:
            producer.close(10)

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

    def load_levels(self, process, seconds: float, profile_as: str | None = None, warm_up: bool = True) -> list[dict]:
        """hey (Go, built from the module proxy: the issue's load tool) against one HTTP function
        at each concurrency level; on two cores the Python load generator capped what it could
        measure at about 3,000 req/s."""
        binary, url = ensure_hey(), f"http://127.0.0.1:{process.port}/api/buy"
        if warm_up:
            hey.warm_up(binary, url, process.extra.get("headers", ()))
        levels = []
        for c in self.sizes["levels"]:
            say(f"{process.name} at concurrency {c} for {seconds}s (hey)")
            if profile_as and c == max(self.sizes["levels"]):
                workers = [p for p in process_tree(process.proc.pid) if p != process.proc.pid] or [process.proc.pid]
                self.profiler.start(profile_as, workers[-1], seconds)
            report = hey.load(binary, url, c, seconds, headers=process.extra.get("headers", ()))
            levels.append({"concurrency": c, "accepted": report.count(202), "failed": report.not_status(202),
                           "per_s": round(report.rate(202) or 0, 1), "p50": report.ms(50), "p99": report.ms(99)})
        return levels

    def section_produce(self) -> None:
        names = self.names("buy")
        self.topic(names["topic"])
        seconds = self.sizes["level_s"]
        buy_linger = config.load({}).kafka_linger_ms  # buy's default (KAFKA_LINGER_MS)
        # Beside buy's linger, the other one measured: 2 ms (the default until issue 12) when buy's is 0.
        other_linger = OTHER_LINGER_MS if buy_linger == 0 else 0
        raw = {}
        for linger in sorted({other_linger, buy_linger}):
            say(f"raw produce (buy's client: librdkafka on asyncio, acks=all, linger {linger} ms) "
                f"at concurrency {', '.join(map(str, self.sizes['levels']))} for {seconds}s each")
            raw[linger] = [self.raw_produce_buys_client(names["topic"], c, seconds, linger)
                           for c in self.sizes["levels"]]
        say(f"raw produce (kafka-python, buy's client before issue 12, linger {buy_linger} ms, send().get())")
        kafka_python = [self.raw_produce(names["topic"], c, seconds, linger_ms=buy_linger)
                        for c in self.sizes["levels"]]
        pipelined = self.raw_produce_pipelined(names["topic"], 20_000 if not self.args.quick else 5_000)
        # The ceiling: buy's own server stack and settings, a function that sends nothing.
        ceiling = self.start_buy(names, source=CEILING_SOURCE, target="ceiling")
        ceiling_levels = self.load_levels(ceiling, seconds)
        self.stop_process(ceiling)
        buy = self.start_buy(names)
        levels = self.load_levels(buy, seconds, profile_as="buy")
        self.results["rss"]["buy"] = peak_rss_mb(buy.proc.pid)
        self.stop_process(buy)
        self.results["produce"] = {
            "raw": raw[buy_linger], "raw_other_linger": raw[other_linger], "other_linger_ms": other_linger,
            "buy_linger_ms": buy_linger, "raw_pipelined": pipelined,
            "raw_kafka_python": kafka_python,
            "buy": levels, "ceiling": ceiling_levels,
            "note": "raw: buy's own producer (librdkafka on asyncio, acks=all), c tasks each awaiting one send - "
                    "the buy function's own pattern without HTTP, at buy's linger and at another; raw_kafka_python: "
                    "the client before issue 12, c threads each send().get(); ceiling: buy's server stack "
                    "answering 202 without Kafka; the load generator runs on the same 2 cores"}
