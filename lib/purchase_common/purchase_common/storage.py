"""How purchases live in MongoDB: one document per event, prices in integer cents.

Document: {eventId, username, userId, priceCents (int64), timestamp (BSON date, the event
time)}, and boughtBy (the buyer's token subject) when buy verified one. Integer cents keep
prices exact on every MongoDB-wire server (FerretDB has no Decimal128). Indexes: unique
eventId (redelivery never duplicates) and (userId, timestamp desc, eventId desc) for the
history query.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pymongo
import pymongo.collection
from pymongo.errors import BulkWriteError, PyMongoError

from .config import Settings
from .events import PurchaseEvent

DUPLICATE_KEY = 11000
HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 500
EVENT_ID_INDEX = "eventId_unique"
HISTORY_INDEX = "userId_timestamp_desc"


Document = dict[str, Any]
Collection = pymongo.collection.Collection[Document]


def connect(
    uri: str, timeout_ms: int = Settings.mongodb_timeout_ms, listeners: Sequence[Any] = ()
) -> pymongo.MongoClient[Document]:
    """``listeners``: pymongo command listeners for this client only (the tracer's)."""
    return pymongo.MongoClient(
        uri,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms, 10000),
        tz_aware=True,
        appname="purchase-functions",
        event_listeners=list(listeners),
    )


class Store:
    """One function's purchases collection, named by its settings (pymongo pools connections
    underneath). Connected on first use, with the indexes ensured then; if the database is
    down, that use raises a PyMongoError and the next one tries again."""

    def __init__(self, settings: Settings, listeners: Sequence[Any] = ()):
        self.settings = settings
        self.listeners = listeners
        self._collection: Collection | None = None
        self._lock = threading.Lock()

    def collection(self) -> Collection:
        if self._collection is None:
            with self._lock:
                if self._collection is None:
                    s = self.settings
                    collection = connect(s.mongodb_uri, s.mongodb_timeout_ms, self.listeners)[s.mongodb_database][
                        s.mongodb_collection
                    ]
                    ensure_indexes(collection)
                    self._collection = collection
        return self._collection

    def reachable(self) -> bool:
        """Whether the collection answers a ping (connecting, and ensuring the indexes, first)."""
        try:
            self.collection().database.client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    def insert(self, documents: list[Document]) -> WriteResult:
        return insert_purchases(self.collection(), documents)

    def find_user_purchases(self, user_id: str, limit: int, before: str | None = None) -> list[Document]:
        return find_user_purchases(self.collection(), user_id, limit, before)

    def close(self) -> None:
        with self._lock:
            collection, self._collection = self._collection, None
        if collection is not None:
            collection.database.client.close()


def ensure_indexes(collection: Collection) -> None:
    """Idempotent: creating an index that already exists with the same spec is a no-op."""
    collection.create_index([("eventId", pymongo.ASCENDING)], unique=True, name=EVENT_ID_INDEX)
    collection.create_index(
        [("userId", pymongo.ASCENDING), ("timestamp", pymongo.DESCENDING), ("eventId", pymongo.DESCENDING)],
        name=HISTORY_INDEX,
    )


def to_document(event: PurchaseEvent) -> Document:
    # BSON dates hold milliseconds; truncate explicitly so cursors compare exactly.
    timestamp = event.time.replace(microsecond=event.time.microsecond // 1000 * 1000)
    document: Document = {
        "eventId": event.event_id,
        "username": event.purchase.username,
        "userId": event.purchase.user_id,
        "priceCents": event.purchase.price_cents,
        "timestamp": timestamp,
    }
    if event.buyer is not None:
        # Who bought (the token's subject): differs from userId only for a write:any client.
        document["boughtBy"] = event.buyer
    return document


@dataclass
class WriteResult:
    inserted: int
    duplicates: int
    # Which of the batch's documents (by position) were already stored: a batch may hold
    # two copies of one event, one stored and one not.
    duplicate_indexes: frozenset[int] = frozenset()


def insert_purchases(collection: Collection, documents: list[Document]) -> WriteResult:
    """Insert a batch; documents whose eventId is already stored count as done.

    Any other write error propagates, so the caller does not commit the Kafka offsets.
    pymongo adds an ``_id`` to each dict: build the documents anew for a retry (as
    PersistPurchase.write does), so a retried batch never carries the first attempt's ids.
    """
    if not documents:
        return WriteResult(0, 0)
    try:
        result = collection.insert_many(documents, ordered=False)
        return WriteResult(len(result.inserted_ids), 0)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        other = [err for err in errors if err.get("code") != DUPLICATE_KEY]
        if other or exc.details.get("writeConcernErrors"):
            raise
        duplicate_indexes = frozenset(err["index"] for err in errors if "index" in err)
        return WriteResult(exc.details.get("nInserted", len(documents) - len(errors)), len(errors), duplicate_indexes)


def isoformat_utc(value: dt.datetime) -> str:
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def to_api(document: Document) -> dict[str, Any]:
    return {
        "id": document["eventId"],
        "username": document["username"],
        "userId": document["userId"],
        "price": document["priceCents"] / 100,
        "timestamp": isoformat_utc(document["timestamp"]),
    }


class InvalidCursor(ValueError):
    pass


def encode_cursor(document: Document) -> str:
    millis = int(document["timestamp"].timestamp() * 1000)
    raw = f"{millis}|{document['eventId']}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        millis, event_id = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8").split("|", 1)
        when = dt.datetime.fromtimestamp(int(millis) / 1000, tz=dt.UTC)
    except (ValueError, UnicodeError, OverflowError, OSError):
        raise InvalidCursor("cursor is not one this API returned") from None
    if not event_id or len(event_id) > 128:
        raise InvalidCursor("cursor is not one this API returned")
    return when, event_id


def find_user_purchases(collection: Collection, user_id: str, limit: int, before: str | None = None) -> list[Document]:
    """Newest first; ``before`` is a cursor from a previous page (exclusive)."""
    query: dict[str, Any] = {"userId": user_id}
    if before:
        when, event_id = decode_cursor(before)
        query = {
            "userId": user_id,
            "$or": [{"timestamp": {"$lt": when}}, {"timestamp": when, "eventId": {"$lt": event_id}}],
        }
    cursor = (
        collection.find(query, projection={"_id": False})
        .sort([("timestamp", pymongo.DESCENDING), ("eventId", pymongo.DESCENDING)])
        .limit(limit)
    )
    return list(cursor)
