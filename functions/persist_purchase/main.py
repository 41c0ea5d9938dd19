"""persist_purchase: store purchase CloudEvents in MongoDB, each event id exactly once.

``persist_purchase`` is the CloudEvent function (one event, e.g. delivered over HTTP by a
Knative/Kafka source); ``consume`` is the Kafka consumer's loop over batches of the same
events, run by ``python consumer.py``.
"""
from __future__ import annotations

import logging

import functions_framework
from prometheus_client import Counter, Histogram

from purchase_common import batch_consumer, config, storage
from purchase_common.events import PoisonRecord, PurchaseEvent, purchase_from_event, purchase_from_kafka_record
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


@functions_framework.cloud_event
def persist_purchase(cloud_event):
    """Store one purchase event. Invalid events raise PoisonRecord (a ValueError)."""
    persist_batch([purchase_from_event(cloud_event)])


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
    """Until told to stop: decode, dead-letter the poison, write, and only then commit."""
    while batches.running:
        records = batches.poll()
        if not records:
            continue
        events, poison = decode(records)
        batches.dead_letter(poison)
        batches.write(persist_batch, events)
        batches.commit(records)


def run_consumer() -> int:
    return batch_consumer.run(consume, open_store=storage.shared_collection, settings=settings, logger=logger)
