"""The purchase CloudEvent and its Kafka binding (binary content mode): one encoder
(``purchase_record``, buy's) and one decoder (``purchase_from_kafka_record``, the consumer's).

The CloudEvents SDK's own pair (``to_binary``/``from_binary``) is the reference these are held to,
byte for byte and reason for reason, in tests/cloudevents_reference.py; the product does not use it.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

from .schema import Purchase, ValidationError, decode_json_text, validate_purchase

if TYPE_CHECKING:
    from cloudevents.abstract import CloudEvent

EVENT_TYPE = "com.purchase.created"
EVENT_SOURCE = "/purchase/buy"
DATA_CONTENT_TYPE = "application/json"
# The spec versions a binary-mode record may carry (those the SDK reads too).
SPEC_VERSIONS = ("1.0", "0.3")
REQUIRED_ATTRIBUTES = frozenset({"id", "source", "type", "specversion"})
# The SDK makes an id up for a record without one (a fresh uuid4 on every read), so a redelivered
# copy would be stored again: such a record is poison instead.
MISSING_ID = "not a binary-mode CloudEvent: ce_id header missing"
# The headers buy writes, by their attribute: the names the binding derives for them.
_HEADER_ATTRIBUTES = {
    "content-type": "datacontenttype",
    **{
        f"ce_{name}": name
        for name in ("specversion", "id", "type", "source", "time", "partitionkey", "authtype", "authid")
    },
}
# Fixed namespace so that (userId, Idempotency-Key) always maps to the same event id.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1f4c0e-6a36-4f4e-9a57-3c1d2b8e2a11")
IDEMPOTENCY_KEY_MAX_CHARS = 200
# Who bought: the CloudEvents Auth Context extension (authtype, authid), the verified token's
# subject as authid. Absent when buy runs with AUTH_MODE=off, as before.
AUTH_TYPE_USER = "user"
AUTH_ID_MAX_CHARS = 255

Headers = list[tuple[str, bytes]]


class PoisonRecord(ValueError):
    """A Kafka record that can never become a purchase; it goes to the dead-letter topic."""


class UndecodableEvent(PoisonRecord):
    """A record that is no valid binary-mode CloudEvent. ``kind`` names the rule it broke in the
    words the SDK's reference decoder uses, so a dead letter's reason reads as it always has."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"undecodable CloudEvent: {kind}: {detail}")
        self.kind = kind


def event_id_for(user_id: str, idempotency_key: str | None) -> str:
    if idempotency_key is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{user_id}\n{idempotency_key}"))


def validate_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > IDEMPOTENCY_KEY_MAX_CHARS or not value.isprintable() or not value.isascii():
        raise ValidationError(
            "Idempotency-Key",
            f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX_CHARS} printable ASCII characters",
        )
    return value


# json.dumps with any option set builds a new encoder per call; this one is built once.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_data(data: object) -> bytes:
    """The event's data as the record's value: compact UTF-8 JSON."""
    return _JSON_ENCODER.encode(data).encode("utf-8")


# json.loads(text, parse_float=Decimal) would build this decoder anew for every record.
_JSON_DECODER = json.JSONDecoder(parse_float=Decimal)


def decode_data(raw: bytes) -> Any:
    """json.loads(raw.decode("utf-8"), parse_float=Decimal), the same answers and errors."""
    return decode_json_text(_JSON_DECODER, raw.decode("utf-8"))


class PurchaseRecord(NamedTuple):
    event_id: str
    key: bytes
    value: bytes
    headers: Headers


def event_time(now: dt.datetime) -> str:
    return now.isoformat().replace("+00:00", "Z")


# The attributes every purchase carries alike, encoded once.
_CONTENT_TYPE_HEADER = ("content-type", DATA_CONTENT_TYPE.encode())
_TYPE_SOURCE_VERSION_HEADERS = (
    ("ce_type", EVENT_TYPE.encode()),
    ("ce_source", EVENT_SOURCE.encode()),
    ("ce_specversion", b"1.0"),
)


def purchase_record(
    purchase: Purchase, idempotency_key: str | None = None, now: dt.datetime | None = None, buyer: str | None = None
) -> PurchaseRecord:
    """The purchase's Kafka record: every attribute a ce_* header (datacontenttype as
    content-type), the data as the value, the userId as the key and, because the Kafka binding
    v1.0.2 maps every attribute to a header (§3.2.3, extensions too), as ce_partitionkey as well,
    so consumers that read attributes from headers alone (the Go SDK) see the whole event.
    ``buyer``, the verified caller's subject, becomes the Auth Context extension's authid."""
    event_id = event_id_for(purchase.user_id, idempotency_key)
    key = purchase.user_id.encode("utf-8")
    headers = [
        _CONTENT_TYPE_HEADER,
        ("ce_id", event_id.encode()),
        *_TYPE_SOURCE_VERSION_HEADERS,
        ("ce_time", event_time(now or dt.datetime.now(dt.UTC)).encode()),
    ]
    if buyer is not None:
        headers += [("ce_authtype", AUTH_TYPE_USER.encode()), ("ce_authid", buyer.encode("utf-8"))]
    headers.append(("ce_partitionkey", key))
    return PurchaseRecord(event_id, key, encode_data(purchase.event_data()), headers)


class PurchaseEvent(NamedTuple):
    """One stored purchase to be. Immutable like a frozen dataclass, made in a tenth of the
    time: the consumer makes one per record."""

    event_id: str
    time: dt.datetime
    purchase: Purchase
    buyer: str | None = None


def parse_event_time(value: object) -> dt.datetime:
    if not isinstance(value, str) or not value:
        raise PoisonRecord("event time missing")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PoisonRecord(f"event time is not RFC 3339: {value!r}") from None
    if parsed.tzinfo is None:
        raise PoisonRecord("event time has no timezone")
    return parsed.astimezone(dt.UTC)


def purchase_from_event(event: CloudEvent) -> PurchaseEvent:
    """A CloudEvent the framework decoded (the HTTP CloudEvent function) as a purchase event;
    PoisonRecord if it is not one."""
    return _purchase_event(event.get("type"), event.get("id"), event.get_data(), event.get("time"), event.get("authid"))


def _purchase_event(
    event_type: object, event_id: object, data: object, time: object, buyer: object = None
) -> PurchaseEvent:
    if event_type != EVENT_TYPE:
        raise PoisonRecord(f"unexpected event type {event_type!r}")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 128:
        raise PoisonRecord("event id missing or too long")
    if isinstance(data, (bytes, str)):
        try:
            data = decode_data(data.encode("utf-8") if isinstance(data, str) else data)
        except (ValueError, UnicodeDecodeError):
            raise PoisonRecord("event data is not JSON") from None
    try:
        purchase = validate_purchase(data)
    except ValidationError as exc:
        raise PoisonRecord(f"invalid purchase data: {exc.field}: {exc.message}") from None
    if buyer is not None and (not isinstance(buyer, str) or not buyer or len(buyer) > AUTH_ID_MAX_CHARS):
        raise PoisonRecord("authid empty or too long")
    return PurchaseEvent(event_id=event_id, time=parse_event_time(time), purchase=purchase, buyer=buyer)


def _attributes(headers: Mapping[str, bytes]) -> dict[str, str]:
    """The binding's header names as attributes: names lower-cased, ``content-type`` as
    datacontenttype, every ``ce_*`` header decoded as UTF-8, any other header ignored."""
    attributes = {}
    for name, raw in headers.items():
        attribute = _HEADER_ATTRIBUTES.get(name)
        if attribute is None:
            name = name.lower()
            if name == "content-type":
                attribute = "datacontenttype"
            elif name.startswith("ce_"):
                attribute = name[3:]
            else:
                continue
        attributes[attribute] = raw.decode()
    return attributes


def purchase_from_kafka_record(
    key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]] | None
) -> PurchaseEvent:
    """A consumed record as a purchase event, or PoisonRecord saying why it can never be one.

    The binding's rules (``_attributes``; the value as JSON), then the CloudEvent's (specversion
    1.0 or 0.3; time the time of reading when absent; source and type required; an absent id is
    poison, MISSING_ID), then the purchase schema. Records with and without ce_partitionkey
    (older ones have only the key) decode alike: the key is not read, since it only becomes the
    partitionkey attribute, which no rule looks at."""
    header_map = dict(headers or ())
    if "ce_specversion" not in header_map:
        raise PoisonRecord("not a binary-mode CloudEvent: ce_specversion header missing")
    try:
        attributes = _attributes(header_map)
    except Exception as exc:  # a header that is not UTF-8, or no bytes at all
        raise UndecodableEvent(type(exc).__name__, str(exc)) from None
    try:
        data = decode_data(value)  # type: ignore[arg-type]  # None is poison like any other non-JSON
    except Exception as exc:
        raise UndecodableEvent(
            "DataUnmarshallerError", f"Failed to unmarshall data with error: {type(exc).__name__}('{exc}')"
        ) from None
    if "time" not in attributes:
        attributes["time"] = dt.datetime.now(dt.UTC).isoformat()
    if attributes["specversion"] not in SPEC_VERSIONS:
        raise UndecodableEvent("MissingRequiredFields", f"Invalid specversion: {attributes['specversion']}")
    missing = sorted(REQUIRED_ATTRIBUTES - attributes.keys() - {"id"})  # a missing id is poison below
    if missing:
        # Named as a set, like the SDK's reason, but in a fixed order: the SDK's follows string hashing.
        raise UndecodableEvent(
            "MissingRequiredFields", "Missing required keys: {" + ", ".join(map(repr, missing)) + "}"
        )
    if "id" not in attributes:
        raise PoisonRecord(MISSING_ID)
    return _purchase_event(attributes["type"], attributes["id"], data, attributes["time"], attributes.get("authid"))
