"""The CloudEvents SDK's own Kafka binding (to_binary / from_binary), the reference the
product's one encoder (events.purchase_record) and one decoder (events.purchase_from_kafka_record)
are held to in tests/unit/test_events*.py. Tests that need an event built the SDK's way use it too.
"""

from __future__ import annotations

import datetime as dt

from cloudevents.http import CloudEvent
from cloudevents.kafka import KafkaMessage, from_binary, to_binary
from purchase_common.events import (
    AUTH_TYPE_USER,
    DATA_CONTENT_TYPE,
    EVENT_SOURCE,
    EVENT_TYPE,
    MISSING_ID,
    PoisonRecord,
    PurchaseEvent,
    decode_data,
    encode_data,
    event_id_for,
    event_time,
    purchase_from_event,
)
from purchase_common.schema import Purchase


def build_event(purchase: Purchase, idempotency_key: str | None = None, now: dt.datetime | None = None,
                buyer: str | None = None) -> CloudEvent:
    attributes = {
        "id": event_id_for(purchase.user_id, idempotency_key),
        "type": EVENT_TYPE,
        "source": EVENT_SOURCE,
        "specversion": "1.0",
        "time": event_time(now or dt.datetime.now(dt.UTC)),
        "datacontenttype": DATA_CONTENT_TYPE,
        # The Auth Context extension: who bought, when buy verified a token.
        **({"authtype": AUTH_TYPE_USER, "authid": buyer} if buyer is not None else {}),
        "partitionkey": purchase.user_id,
    }
    return CloudEvent(attributes, purchase.event_data())


def to_kafka_record(event: CloudEvent) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Binary content mode by the SDK, plus ce_partitionkey: its to_binary moves partitionkey
    into the key only, where the binding (§3.2.3) wants every attribute as a header too."""
    message = to_binary(event, data_marshaller=encode_data)
    key = message.key.encode("utf-8") if isinstance(message.key, str) else message.key
    headers = list(message.headers.items())
    if key is not None:
        headers.append(("ce_partitionkey", key))
    return key, message.value, headers


def from_kafka_record(key, value, headers) -> CloudEvent:
    """The SDK's decode; anything that is not a binary-mode CloudEvent is poison, and a record
    without ce_id too (the SDK would make an id up)."""
    header_map = dict(headers or [])
    if "ce_specversion" not in header_map:
        raise PoisonRecord("not a binary-mode CloudEvent: ce_specversion header missing")
    try:
        event = from_binary(KafkaMessage(headers=header_map, key=key, value=value), data_unmarshaller=decode_data)
    except Exception as exc:  # Python's errors and the SDK's own GenericException subclasses
        raise PoisonRecord(f"undecodable CloudEvent: {type(exc).__name__}: {exc}") from None
    if not any(name.lower() == "ce_id" for name in header_map):
        raise PoisonRecord(MISSING_ID)
    return event


def sdk_purchase(key, value, headers) -> PurchaseEvent:
    """What the product's one-pass decoder must agree with."""
    return purchase_from_event(from_kafka_record(key, value, headers))
