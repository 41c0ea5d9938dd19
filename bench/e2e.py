"""e2e: buy request -> stored and committed, and -> visible in the history API"""
from __future__ import annotations

import json
import statistics
import threading
import time

from bench.common import pct, record_positions, say
from bench.profiling import peak_rss_mb
from load import loadgen
from tools.lag_reader import LagReader


class EndToEndSection:
    """e2e: buy request -> stored and committed, and -> visible in the history API (a part of bench.run.Bench)."""

    def section_e2e(self) -> None:
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
        positions = record_positions(self.stack.kafka_bootstrap, names["topic"])
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
                    "history probes = a probe user's purchase appears in GET /api/user/<id>/purchases, "
                    "polled every 20 ms",
        }
        self.results["rss"]["e2e-buy"] = peak_rss_mb(buy.proc.pid)
        self.results["rss"]["e2e-persist-purchase"] = peak_rss_mb(consumer.proc.pid)
        self.results["rss"]["e2e-history"] = peak_rss_mb(history.proc.pid)
        for process in (history, consumer, buy):
            self.stop_process(process)
