"""persist_purchase's storing, without functions-framework: the Kafka consumer's loop over
batches (``consume``, run by ``python consumer.py``) and the write both it and the CloudEvent
function in main.py use (``persist_batch``).

The consumer process imports this module, not main.py: functions-framework (Flask, werkzeug)
would cost it ~7 MiB of RSS and a slower cold start for a decorator it never serves.
"""
from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram

from purchase_common import batch_consumer, config, storage
from purchase_common.events import PoisonRecord, PurchaseEvent, purchase_from_kafka_record
from purchase_common.logs import get_logger, log

settings = config.settings()
logger = get_logger("persist-purchase")
WRITTEN = Counter("purchases_written_total", "Purchases inserted into MongoDB")
DUPLICATES = Counter("purchases_duplicates_total", "Redelivered purchases already stored (skipped)")
BATCH_SIZE = Histogram("persist_batch_size", "Purchases per MongoDB write",
                       buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000))


def persist_batch(events: list[PurchaseEvent]) -> storage.WriteResult:
    """Write validated purchase events; raises on any database error (nothing is committed then)."""
    if not events:
        return storage.WriteResult(0, 0)
    result = storage.insert_purchases(storage.shared_collection(), [storage.to_document(event) for event in events])
    BATCH_SIZE.observe(len(events))
    WRITTEN.inc(result.inserted)
    DUPLICATES.inc(result.duplicates)
    if logger.isEnabledFor(logging.INFO):
        for event in events:
            log(logger, logging.INFO, "purchase stored", eventId=event.event_id, userId=event.purchase.user_id)
    return result


def decode(records) -> tuple[list[PurchaseEvent], list[tuple[object, str]]]:
    """Each Kafka record as a purchase event, or as (record, reason) when it can never be one."""
    events, poison = [], []
    for record in records:
        try:
            events.append(purchase_from_kafka_record(record.key, record.value, record.headers))
        except PoisonRecord as exc:
            poison.append((record, str(exc)))
    return events, poison


def consume(batches: batch_consumer.BatchConsumer) -> None:
    """Until told to stop: decode, dead-letter the poison, write, and only then commit.

    Behind a backlog (a full batch) the write of one batch overlaps the poll and decode of the
    next: +10-15 % records/s (bench/README.md). Each batch is still committed only once it is
    stored, and before the next one is written. A partial batch is written and committed at
    once, so a quiet topic's commit never waits for the next poll."""
    while batches.running:
        records = batches.poll()
        events, poison = decode(records)
        batches.dead_letter(poison)
        batches.commit_written()  # the batch before, if it was written behind
        if not records:
            continue
        if batches.full(records):
            batches.write_behind(persist_batch, events, records)
        else:
            batches.write(persist_batch, events)
            batches.commit(records)
    batches.commit_written()


def run_consumer() -> int:
    return batch_consumer.run(consume, open_store=storage.shared_collection, settings=settings, logger=logger)
