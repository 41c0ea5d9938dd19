"""persist: raw consume + insert_many + commit vs the persist_purchase consumer"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import statistics
import time

from purchase_common import storage

from bench.common import count_all, purchase_record, say
from bench.profiling import cpu_seconds, peak_rss_mb
from tools.lag_reader import LagReader


def drain_figures(done: int, first_count: int, elapsed: float | None, cpu_s: float | None) -> dict:
    """One drain's records, rate and CPU µs per record, counted from its first commit."""
    records = done - first_count
    return {"docs": done, "per_s": round(records / elapsed, 1) if elapsed else None,
            "cpu_us_per_record": round(cpu_s * 1e6 / records, 1) if elapsed and cpu_s is not None and records > 0
            else None}


class PersistSection:
    """persist: raw consume + insert_many + commit vs the persist_purchase consumer (a part of bench.run.Bench)."""

    def prefill(self, topic: str, count: int) -> None:
        say(f"pre-filling {topic} with {count} purchase CloudEvents")
        producer = self.producer(linger_ms=20, batch_size=262144, enable_idempotence=False)
        for i in range(count):
            key, value, headers = purchase_record(i)
            producer.send(topic, key=key, value=value, headers=headers)
        producer.flush(timeout=120)
        producer.close(timeout=10)

    def raw_consume_insert(self, topic: str, count: int, names: dict, timeout_s: float) -> dict:
        from kafka import KafkaConsumer

        collection = self.mongo[names["database"]]["purchases"]
        storage.ensure_indexes(collection)
        consumer = KafkaConsumer(topic, bootstrap_servers=self.stack.kafka_bootstrap, group_id=names["group"],
                                 enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=500)
        done, first, first_count, last = 0, None, 0, None
        first_cpu = last_cpu = None
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
                                 "timestamp": dt.datetime.fromisoformat(
                                     headers["ce_time"].decode().replace("Z", "+00:00"))})
                collection.insert_many(docs, ordered=False)
                consumer.commit()
                done += len(records)
                last, last_cpu = time.monotonic(), time.process_time()
                if first is None:
                    first, first_count, first_cpu = last, done, last_cpu
        finally:
            consumer.close(autocommit=False)
        elapsed = (last - first) if first and last and last > first else None
        return drain_figures(done, first_count, elapsed, last_cpu - first_cpu if elapsed else None)

    def consumer_drain(self, topic: str, count: int, names: dict, profile: bool = False) -> dict:
        """The persist_purchase consumer (its own group and database) drains the topic; measured
        from its first commit to the one that covers every record, as the raw loop is."""
        reader = LagReader(self.stack.kafka_bootstrap, timeout_ms=5000)
        consumer = self.start_consumer({**names, "topic": topic})
        first = first_count = last = first_cpu = last_cpu = None
        done = 0
        deadline = time.monotonic() + 900
        try:
            while time.monotonic() < deadline:
                done = self.committed_total(reader, topic, names["group"])
                now = time.monotonic()
                if done and first is None:
                    first, first_count, first_cpu = now, done, cpu_seconds(consumer.proc.pid)
                    if profile:
                        self.profiler.start("persist-consumer", consumer.proc.pid, min(10, self.sizes["level_s"] + 2))
                if done >= count:
                    last, last_cpu = now, cpu_seconds(consumer.proc.pid)
                    break
                if consumer.proc.poll() is not None:
                    raise RuntimeError(f"consumer exited with {consumer.proc.returncode}; see {consumer.log}")
                time.sleep(0.05)
        finally:
            reader.close()
        stored, _ = count_all(self.stack.mongodb_uri, names["database"], "purchases")
        rss = peak_rss_mb(consumer.proc.pid)
        self.stop_process(consumer)
        elapsed = (last - first) if first and last else None
        return {**drain_figures(done, first_count or 0, elapsed, last_cpu - first_cpu if elapsed else None),
                "stored": stored, "peak_rss": rss}

    def section_persist(self) -> None:
        count = self.sizes["prefill"]
        topic = self.names("persist")["topic"]
        self.topic(topic)
        self.prefill(topic, count)
        # Raw, function, function, raw: each drains the whole topic with its own group into its own
        # empty database, so a drift in the box's load or in FerretDB's state falls on both sides
        # alike, and each pair gives a ratio. When the bench started its own store, every drain is
        # also run, right after, on FerretDB with SQLite (the store before issue 23), so the new
        # store's throughput is measured beside the old one's under the same conditions.
        sqlite_uri = self.sqlite_store()
        stores = {"persist": None, **({"persist_sqlite": sqlite_uri} if sqlite_uri else {})}
        runs = {store: {"raw": [], "function": []} for store in stores}
        for index, side in enumerate(("raw", "function", "function", "raw")):
            for store, uri in stores.items():
                names = self.names(f"{store.replace('_', '-')}{index}")
                say(f"persist drain {index + 1}/4 ({store}): "
                    f"{'raw consume + insert_many' if side == 'raw' else 'persist_purchase consumer'}")
                with self.store(uri) if uri else contextlib.nullcontext():
                    if side == "raw":
                        runs[store]["raw"].append(self.raw_consume_insert(topic, count, names, timeout_s=900))
                    else:
                        runs[store]["function"].append(self.consumer_drain(topic, count, names))
        # py-spy never samples a measured drain (it slows what it samples): the profile comes from
        # an extra drain that is not counted.
        if self.profiler.tool:
            say("persist drain, profiled (not counted)")
            self.consumer_drain(topic, count, self.names("persist-profiled"), profile=True)
        for store in stores:
            self.results[store] = persist_figures(runs[store], count)
        self.results["rss"]["persist-purchase"] = max((r["peak_rss"] for r in runs["persist"]["function"]),
                                                      key=lambda rss: rss["max_process_mib"] or 0)


def persist_figures(runs: dict[str, list[dict]], count: int) -> dict:
    pairs = [(runs["function"][0], runs["raw"][0]), (runs["function"][1], runs["raw"][1])]
    ratios = [round(fn["per_s"] / raw["per_s"], 3) for fn, raw in pairs if fn["per_s"] and raw["per_s"]]
    return {
        "records": count, "ratio": round(statistics.median(ratios), 3) if ratios else None, "pair_ratios": ratios,
        "raw": _median_run(runs["raw"], "poll 500 -> json + headers -> insert_many(ordered=False) -> commit(), "
                                        "one thread; the bench's own process"),
        "function": _median_run(runs["function"], "consumer.py, CONSUMER_BATCH_MAX=500; from its first commit "
                                                  "to the last"),
    }


def _median_run(runs: list[dict], note: str) -> dict:
    """Both drains of one side as one row: the median rate and CPU, each drain kept."""
    def median(key):
        values = [r[key] for r in runs if r.get(key) is not None]
        return round(statistics.median(values), 1) if values else None
    return {"docs": min(r["docs"] for r in runs), "per_s": median("per_s"),
            "cpu_us_per_record": median("cpu_us_per_record"), "runs": runs, "note": note}
