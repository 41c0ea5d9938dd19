"""The Kafka protocol binding v1.0.2 in binary mode: every attribute, extensions included, is a
header (§3.2.3) and the key mapper leaves the event whole (§3.1); older records without
ce_partitionkey still decode."""
import datetime as dt

import pytest
from cloudevents.kafka import to_binary
from cloudevents_reference import build_event, from_kafka_record, to_kafka_record
from purchase_common.events import encode_data, purchase_from_event, purchase_from_kafka_record, purchase_record
from purchase_common.schema import Purchase

PURCHASE = Purchase("elad", "555", 1200)
NOW = dt.datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=dt.UTC)


def test_every_attribute_is_a_header_and_the_key_is_the_user():
    event = build_event(PURCHASE, now=NOW)
    key, _, headers = to_kafka_record(event)
    names = [name for name, _ in headers]
    assert len(names) == len(set(names)), "no header twice"
    header_map = dict(headers)
    for attribute, value in event.get_attributes().items():
        # §3.2.1: datacontenttype travels as content-type; every other attribute as ce_<name>.
        name = "content-type" if attribute == "datacontenttype" else f"ce_{attribute}"
        assert header_map[name] == value.encode("utf-8"), attribute
    assert key == b"555"
    assert header_map["ce_partitionkey"] == key


def test_partitionkey_header_is_the_same_bytes_object_as_the_key():
    key, _, headers = to_kafka_record(build_event(PURCHASE, now=NOW))
    assert dict(headers)["ce_partitionkey"] is key, "encoded once, not a second time"


def test_records_with_and_without_the_partitionkey_header_decode_alike():
    event = build_event(PURCHASE, now=NOW)
    new_form = to_kafka_record(event)
    old = to_binary(event, data_marshaller=encode_data)
    old_form = (old.key.encode(), old.value, list(old.headers.items()))
    assert "ce_partitionkey" not in dict(old_form[2])
    for record in (new_form, old_form):
        decoded = from_kafka_record(*record)
        assert decoded["partitionkey"] in ("555", b"555")
        assert purchase_from_event(decoded).purchase == PURCHASE
        assert purchase_from_event(decoded).event_id == event["id"]


def test_a_record_without_a_key_keeps_partitionkey_from_its_header():
    key, value, headers = to_kafka_record(build_event(PURCHASE, now=NOW))
    decoded = from_kafka_record(None, value, headers)
    assert decoded["partitionkey"] == "555"
    assert purchase_from_event(decoded).purchase == PURCHASE


@pytest.mark.parametrize("purchase", [PURCHASE, Purchase("Dana Ö \"x\" 漢字", "user_9-Z", 0),
                                      Purchase("a", "u", 100000000)])
@pytest.mark.parametrize("idempotency_key", [None, "order-7"])
def test_buys_direct_record_is_the_sdks_record_byte_for_byte(purchase, idempotency_key):
    record = purchase_record(purchase, idempotency_key, now=NOW)
    event = build_event(purchase, idempotency_key, now=NOW)
    if idempotency_key is None:  # a random id: take the direct record's, to compare the rest
        event["id"] = record.event_id
    assert (record.key, record.value, record.headers) == to_kafka_record(event)
    assert dict(record.headers)["ce_id"] == record.event_id.encode()
    decoded = purchase_from_event(from_kafka_record(record.key, record.value, record.headers))
    assert (decoded.event_id, decoded.time, decoded.purchase) == (record.event_id, NOW, purchase)


@pytest.mark.parametrize("buyer", ["555", "checkout-service", "Dana Ö 漢字"])
def test_the_buyer_is_the_auth_context_extension_as_the_sdk_writes_and_reads_it(buyer):
    record = purchase_record(PURCHASE, "order-7", now=NOW, buyer=buyer)
    assert (record.key, record.value, record.headers) == to_kafka_record(build_event(PURCHASE, "order-7", NOW, buyer))
    assert dict(record.headers)["ce_authid"] == buyer.encode() and dict(record.headers)["ce_authtype"] == b"user"
    sdk = from_kafka_record(record.key, record.value, record.headers)
    assert sdk["authid"] == buyer and purchase_from_event(sdk).buyer == buyer
    assert purchase_from_kafka_record(record.key, record.value, record.headers).buyer == buyer


def test_without_a_buyer_the_record_is_as_before():
    record = purchase_record(PURCHASE, "order-7", now=NOW)
    assert not any(name.startswith("ce_auth") for name, _ in record.headers)
    assert purchase_from_kafka_record(record.key, record.value, record.headers).buyer is None
