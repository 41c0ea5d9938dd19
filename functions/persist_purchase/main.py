"""persist_purchase: store purchase CloudEvents in MongoDB, each event id exactly once.

``persist_purchase`` is the CloudEvent function (one event, e.g. delivered over HTTP by
a Knative/Kafka source); ``persist_batch`` is the same write for a batch, used by the
Kafka consumer runner in consumer.py.
"""
from __future__ import annotations

import logging

import functions_framework
from prometheus_client import Counter, Histogram

from purchase_common import storage
from purchase_common.events import PurchaseEvent, purchase_from_event
from purchase_common.logs import get_logger, log

logger = get_logger("persist-purchase")
WRITTEN = Counter("purchases_written_total", "Purchases inserted into MongoDB")
DUPLICATES = Counter("purchases_duplicates_total", "Redelivered purchases already stored (skipped)")
BATCH_SIZE = Histogram("persist_batch_size", "Purchases per MongoDB write",
                       buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000))

get_collection = storage.shared_collection


def persist_batch(events: list[PurchaseEvent]) -> storage.WriteResult:
    """Write validated purchase events; raises on any database error (nothing is committed then)."""
    if not events:
        return storage.WriteResult(0, 0)
    result = storage.insert_purchases(get_collection(), [storage.to_document(event) for event in events])
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
