"""persist: raw consume + insert_many + commit vs the persist_purchase consumer"""
from __future__ import annotations

import datetime as dt
import json
import time

from bench.common import purchase_record, say
from bench.profiling import cpu_seconds, peak_rss_mb
from purchase_common import storage
from tools.lag_reader import LagReader


def cpu_us_per_record(cpu_s: float | None, records: int) -> float | None:
    return round(cpu_s * 1e6 / records, 1) if cpu_s is not None and records > 0 else None


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

    def raw_consume_insert(self, topic: str, count: int, database: str, timeout_s: float) -> dict:
        from kafka import KafkaConsumer

        collection = self.mongo[database]["purchases"]
        storage.ensure_indexes(collection)
        consumer = KafkaConsumer(topic, bootstrap_servers=self.stack.kafka_bootstrap, group_id=f"raw-{self.run}",
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
                                 "timestamp": dt.datetime.fromisoformat(headers["ce_time"].decode().replace("Z", "+00:00"))})
                collection.insert_many(docs, ordered=False)
                consumer.commit()
                done += len(records)
                last, last_cpu = time.monotonic(), time.process_time()
                if first is None:
                    first, first_count, first_cpu = last, done, last_cpu
        finally:
            consumer.close(autocommit=False)
        elapsed = (last - first) if first and last and last > first else None
        return {"docs": done, "per_s": round((done - first_count) / elapsed, 1) if elapsed else None,
                "cpu_us_per_record": cpu_us_per_record(last_cpu - first_cpu if elapsed else None, done - first_count),
                "note": "this process's CPU (the loop and its consumer's threads); poll 500 -> json + headers -> insert_many(ordered=False) -> commit(), one thread"}

    def section_persist(self) -> None:
        count = self.sizes["prefill"]
        raw_names, fn_names = self.names("raw"), self.names("persist")
        self.topic(fn_names["topic"])
        self.prefill(fn_names["topic"], count)
        say("raw consume + insert_many baseline")
        raw = self.raw_consume_insert(fn_names["topic"], count, raw_names["database"], timeout_s=900)
        say("persist_purchase consumer on the same topic (its own group and database)")
        reader = LagReader(self.stack.kafka_bootstrap, timeout_ms=5000)
        consumer = self.start_consumer(fn_names)
        first = first_count = last = first_cpu = last_cpu = None
        done = 0
        deadline = time.monotonic() + 900
        profiled = False
        try:
            while time.monotonic() < deadline:
                done = self.committed_total(reader, fn_names["topic"], fn_names["group"])
                now = time.monotonic()
                if done and first is None:
                    first, first_count, first_cpu = now, done, cpu_seconds(consumer.proc.pid)
                if first is not None and not profiled:
                    self.profiler.start("persist-consumer", consumer.proc.pid, min(10, self.sizes["level_s"] + 2))
                    profiled = True
                if done >= count:
                    last, last_cpu = now, cpu_seconds(consumer.proc.pid)
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
              "cpu_us_per_record": cpu_us_per_record(last_cpu - first_cpu if elapsed else None, done - first_count),
              "note": "consumer.py, CONSUMER_BATCH_MAX=500; measured from its first commit to the last"}
        ratio = round(fn["per_s"] / raw["per_s"], 3) if fn["per_s"] and raw["per_s"] else None
        self.results["persist"] = {"records": count, "raw": raw, "function": fn, "ratio": ratio}
