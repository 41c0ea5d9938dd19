"""What every benchmark section shares: targets, sizes, output, and how purchases are made up."""
from __future__ import annotations

import datetime as dt
import time
import uuid

from purchase_common import storage
from purchase_common.config import TOPIC_PARTITIONS
from purchase_common.events import purchase_record as encode_purchase
from purchase_common.schema import validate_purchase
from pymongo.errors import PyMongoError

from load import loadgen
from tools.common import ROOT, speaker

OUT_DIR = ROOT / ".run" / "bench"
TARGETS = {
    "persist_ratio": 0.90, "buy_rps": 2000, "buy_p99_ms": 50, "e2e_p99_ms": 1000, "e2e_rate": 1000,
    "history_p50_ms": 10, "history_p99_ms": 50,
}
FULL = dict(level_s=8, levels=(1, 16, 64), prefill=100_000, e2e_rate=1000, e2e_s=10, e2e_threads=96,
            history_docs=1_000_000, history_users=100_000, heavy_docs=10_000, history_checkpoints=(10_000, 100_000),
            history_budget_s=90, history_samples=200, cold_rounds=5)
QUICK = dict(level_s=2, levels=(1, 16, 64), prefill=10_000, e2e_rate=200, e2e_s=4, e2e_threads=32,
             history_docs=50_000, history_users=5_000, heavy_docs=1_000, history_checkpoints=(5_000,),
             history_budget_s=20, history_samples=50, cold_rounds=2)


say = speaker("bench", clock=True)


def pct(values, points=(50, 99)) -> dict:
    result = loadgen.percentiles(list(values), points)
    return {k: (None if v is None else round(v * 1000, 2)) for k, v in result.items()}


def purchase_record(index: int, users: int = 1000) -> tuple[bytes, bytes, list]:
    purchase = validate_purchase({"username": f"bench user {index % users}", "userId": f"bench-{index % users}",
                                  "price": round(1 + (index % 9999) / 100, 2)})
    record = encode_purchase(purchase)
    return record.key, record.value, record.headers


def count_all(uri: str, database: str, collection: str, timeout_s: float = 600) -> tuple[int | str, float]:
    """Every document of a collection, exactly, and the seconds it took. FerretDB reads each
    document to count them and ignores maxTimeMS, so a client of its own bounds the wait."""
    with storage.connect(uri, timeout_ms=int(timeout_s * 1000)) as client:
        started = time.perf_counter()
        try:
            return client[database][collection].estimated_document_count(), time.perf_counter() - started
        except PyMongoError as exc:
            return f"{type(exc).__name__} after {time.perf_counter() - started:.0f} s", time.perf_counter() - started


def bench_docs(start: int, count: int, users: int, heavy_every: int, base: dt.datetime) -> list[dict]:
    docs = []
    for i in range(start, start + count):
        user = "heavy-user" if heavy_every and i % heavy_every == 0 else f"u{i % users:05d}"
        docs.append({"eventId": f"{i:012d}-{uuid.uuid4().hex[:8]}", "username": f"user {user}", "userId": user,
                     "priceCents": 100 + i % 10000, "timestamp": base + dt.timedelta(milliseconds=i)})
    return docs


def record_positions(bootstrap: str, topic: str, start: dict[int, int] | None = None,
                     partitions: int = TOPIC_PARTITIONS, idle_ms: int = 3000) -> dict[str, tuple[int, int]]:
    """Each record's CloudEvents id -> (partition, offset), read back from `topic` from the `start`
    offsets (else the beginning) up to its end offsets as they are now; nothing for `idle_ms`
    ends the read early."""
    from kafka import KafkaConsumer, TopicPartition

    observer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False,
                             consumer_timeout_ms=idle_ms)
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        observer.assign(assigned)
        ends = observer.end_offsets(assigned)
        for tp in assigned:
            if start and tp.partition in start:
                observer.seek(tp, start[tp.partition])
            else:
                observer.seek_to_beginning(tp)
        remaining = {tp for tp in assigned if observer.position(tp) < ends[tp]}
        positions: dict[str, tuple[int, int]] = {}
        for record in observer if remaining else ():
            event_id = dict(record.headers).get("ce_id")
            if event_id is not None:
                positions[event_id.decode()] = (record.partition, record.offset)
            tp = TopicPartition(record.topic, record.partition)
            if record.offset + 1 >= ends[tp]:
                remaining.discard(tp)
            if not remaining:
                break
        return positions
    finally:
        observer.close()
