"""persist_purchase as an object: decode a Kafka record into a purchase event, write events to
MongoDB, each event id exactly once. Built from Settings; nothing is opened before ``start``.

The consumer's loop that runs ``decode`` and ``write`` is the runtime's
(purchase_common.batch_consumer); the CloudEvent function in main.py runs ``handle``. The
consumer process imports this module, not main.py: functions-framework (Flask, werkzeug) would
cost it RSS and cold-start time for a decorator it never serves.
"""

from __future__ import annotations

import logging

from cloudevents.abstract import CloudEvent
from prometheus_client import Counter, Histogram
from purchase_common import storage
from purchase_common.batch_consumer import ConsumerRecord
from purchase_common.config import Settings
from purchase_common.events import PurchaseEvent, purchase_from_event, purchase_from_kafka_record
from purchase_common.logs import get_logger, log
from purchase_common.tracing import Tracing
from pymongo.errors import PyMongoError

WRITTEN = Counter("purchases_written_total", "Purchases inserted into MongoDB")
DUPLICATES = Counter("purchases_duplicates_total", "Redelivered purchases already stored (skipped)")
BATCH_SIZE = Histogram(
    "persist_batch_size", "Purchases per MongoDB write", buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000)
)


class PersistPurchase:
    def __init__(self, settings: Settings, store: storage.Store | None = None):
        self.settings = settings
        self.logger = get_logger("persist-purchase", settings)
        # The consumer's loop makes the per-record and per-batch spans; the store's client its own.
        self.tracing = Tracing(settings, "persist-purchase")
        self.store = store or storage.Store(settings, self.tracing.mongodb_listeners())
        self._db_ready = False

    def start(self) -> None:
        """Connect and ensure the indexes; with the database down, the first write tries again."""
        try:
            self.store.collection()
            self._db_ready = True
        except PyMongoError as exc:
            log(self.logger, logging.WARNING, "mongodb unreachable at start-up; will retry on write", error=str(exc))

    def stop(self) -> None:
        self.store.close()
        self.tracing.shutdown()

    def alive(self) -> bool:
        return True

    def ready(self) -> dict[str, bool]:
        """Whether the last use of the database (start or write) succeeded."""
        return {"mongodb": self._db_ready}

    def decode(self, record: ConsumerRecord) -> PurchaseEvent:
        """One Kafka record as a purchase event; PoisonRecord when it can never be one."""
        return purchase_from_kafka_record(record.key, record.value, record.headers)

    def write(self, events: list[PurchaseEvent]) -> storage.WriteResult:
        """Store validated purchase events; raises on any database error (nothing is committed then).
        The documents are built anew on every call, so a retried batch carries no _id of the last try."""
        if not events:
            return storage.WriteResult(0, 0)
        try:
            result = self.store.insert([storage.to_document(event) for event in events])
        except PyMongoError:
            self._db_ready = False
            raise
        self._db_ready = True
        BATCH_SIZE.observe(len(events))
        WRITTEN.inc(result.inserted)
        DUPLICATES.inc(result.duplicates)
        if self.logger.isEnabledFor(logging.INFO):
            for event in events:
                log(self.logger, logging.INFO, "purchase stored", eventId=event.event_id, userId=event.purchase.user_id)
        return result

    def handle(self, event: CloudEvent) -> None:
        """Store one purchase CloudEvent (delivered over HTTP); PoisonRecord (a ValueError) if it is not one."""
        self.write([purchase_from_event(event)])
