"""CloudEvent building and the Kafka binary binding, without a broker."""
import datetime as dt
import json

import pytest
from cloudevents_reference import build_event, from_kafka_record, to_kafka_record
from purchase_common.events import (
    EVENT_SOURCE,
    EVENT_TYPE,
    PoisonRecord,
    event_id_for,
    purchase_from_event,
    validate_idempotency_key,
)
from purchase_common.schema import Purchase, ValidationError

PURCHASE = Purchase("elad", "555", 1200)
NOW = dt.datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=dt.UTC)


def test_binary_mode_record_has_ce_headers_and_user_key():
    event = build_event(PURCHASE, now=NOW)
    key, value, headers = to_kafka_record(event)
    header_map = dict(headers)
    assert key == b"555"
    assert header_map["ce_specversion"] == b"1.0"
    assert header_map["ce_type"] == EVENT_TYPE.encode()
    assert header_map["ce_source"] == EVENT_SOURCE.encode()
    assert header_map["ce_id"] == event["id"].encode()
    assert header_map["ce_time"] == b"2026-11-25T12:00:00.123456Z"
    assert header_map["content-type"] == b"application/json"
    assert json.loads(value) == {"username": "elad", "userId": "555", "price": 12.0}


def test_record_decodes_back_to_the_same_purchase():
    event = build_event(PURCHASE, now=NOW)
    decoded = purchase_from_event(from_kafka_record(*to_kafka_record(event)))
    assert decoded.event_id == event["id"]
    assert decoded.purchase == PURCHASE
    assert decoded.time == NOW


def test_idempotency_key_maps_to_a_stable_id_scoped_to_the_user():
    assert event_id_for("555", "k1") == event_id_for("555", "k1")
    assert event_id_for("555", "k1") != event_id_for("556", "k1")
    assert event_id_for("555", None) != event_id_for("555", None)


@pytest.mark.parametrize("key", ["", " ", "x" * 201, "tab\there", "ünï"])
def test_bad_idempotency_keys_are_refused(key):
    with pytest.raises(ValidationError) as caught:
        validate_idempotency_key(key)
    assert caught.value.field == "Idempotency-Key"


def _headers(**overrides):
    key, value, headers = to_kafka_record(build_event(PURCHASE, now=NOW))
    header_map = dict(headers)
    header_map.update({k: v for k, v in overrides.items() if v is not None})
    for name in [k for k, v in overrides.items() if v is None]:
        header_map.pop(name, None)
    return key, value, list(header_map.items())


@pytest.mark.parametrize("mutate", [
    lambda k, v, h: (k, b"not json", h),
    lambda k, v, h: (k, b'{"username":"a"}', h),
    lambda k, v, h: (k, b'{"username":"a","userId":"u","price":"1"}', h),
    lambda k, v, h: (k, v, []),
    lambda k, v, h: _headers(ce_type=b"com.other"),
    lambda k, v, h: _headers(ce_time=b"yesterday"),
    lambda k, v, h: (k, b"\xff\xfe", h),
])
def test_poison_records_are_recognised(mutate):
    key, value, headers = _headers()
    with pytest.raises(PoisonRecord):
        purchase_from_event(from_kafka_record(*mutate(key, value, headers)))
