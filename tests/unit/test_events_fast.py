"""The product's one decoder (purchase_from_kafka_record) against the SDK's reference path
(tests/cloudevents_reference.py): the same purchase from every record that is one, poison with
the same reason from every record that is not."""
import datetime as dt
import re

import pytest
from cloudevents_reference import build_event, sdk_purchase, to_kafka_record
from purchase_common.events import PoisonRecord, UndecodableEvent, purchase_from_kafka_record
from purchase_common.schema import Purchase

PURCHASE = Purchase("elad", "555", 1200)
NOW = dt.datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=dt.UTC)
KEY, VALUE, HEADERS = to_kafka_record(build_event(PURCHASE, now=NOW))


def headers(drop=(), **changes):
    """The valid record's headers with some dropped, replaced (name=bytes) or added."""
    changed = [(name, changes.pop(name, raw)) for name, raw in HEADERS if name not in drop]
    return changed + list(changes.items())


RECORDS = {
    "valid": (KEY, VALUE, HEADERS),
    "no key": (None, VALUE, HEADERS),
    "no partitionkey header": (KEY, VALUE, headers(drop=("ce_partitionkey",))),
    "no content-type": (KEY, VALUE, headers(drop=("content-type",))),
    "other content-type": (KEY, VALUE, headers(**{"content-type": b"text/plain"})),
    "upper-case header names": (KEY, VALUE, headers(drop=("ce_type", "ce_id"), CE_TYPE=b"com.purchase.created",
                                                    Ce_Id=b"upper-id")),
    "a header twice, the last one wins": (KEY, VALUE, HEADERS + [("ce_id", b"second")]),
    "an undecodable header the last one replaces": (KEY, VALUE, [("ce_id", b"\xff")] + HEADERS),
    "an extension header": (KEY, VALUE, headers(ce_traceparent=b"00-abc")),
    "an unrelated header": (KEY, VALUE, headers(trace=b"\xff\xfe")),
    "specversion 0.3": (KEY, VALUE, headers(ce_specversion=b"0.3")),
    "data as a JSON string": (KEY, b'"{\\"username\\":\\"elad\\",\\"userId\\":\\"555\\",\\"price\\":12}"', HEADERS),
    "price 0": (KEY, b'{"username":"elad","userId":"555","price":0}', HEADERS),
    "padded strings": (KEY, b'{"username":" elad ","userId":" 555 ","price":12.00}', HEADERS),
    "time with an offset": (KEY, VALUE, headers(ce_time=b"2026-11-25T14:00:00.5+02:00")),
    "time with microseconds": (KEY, VALUE, headers(ce_time=b"2026-11-25T12:00:00.123456Z")),
    # poison
    "no headers": (KEY, VALUE, []),
    "headers None": (KEY, VALUE, None),
    "no specversion": (KEY, VALUE, headers(drop=("ce_specversion",))),
    "upper-case specversion only": (KEY, VALUE, headers(drop=("ce_specversion",), CE_SPECVERSION=b"1.0")),
    "specversion 2.0": (KEY, VALUE, headers(ce_specversion=b"2.0")),
    "no source": (KEY, VALUE, headers(drop=("ce_source",))),
    "no id": (KEY, VALUE, headers(drop=("ce_id",))),
    "no id, no source": (KEY, VALUE, headers(drop=("ce_id", "ce_source"))),
    "no id, undecodable extension": (KEY, VALUE, headers(drop=("ce_id",), ce_other=b"\xff")),
    "no type": (KEY, VALUE, headers(drop=("ce_type",))),
    "no source, no type": (KEY, VALUE, headers(drop=("ce_source", "ce_type"))),
    "other type": (KEY, VALUE, headers(ce_type=b"com.other")),
    "empty id": (KEY, VALUE, headers(ce_id=b"")),
    "long id": (KEY, VALUE, headers(ce_id=b"x" * 129)),
    "undecodable id": (KEY, VALUE, headers(ce_id=b"\xff")),
    "undecodable content-type": (KEY, VALUE, headers(**{"content-type": b"\xc3"})),
    "undecodable extension": (KEY, VALUE, headers(ce_other=b"\xff")),
    "a null header value": (KEY, VALUE, headers(ce_source=None)),
    "bad time": (KEY, VALUE, headers(ce_time=b"yesterday")),
    "time without zone": (KEY, VALUE, headers(ce_time=b"2026-11-25T12:00:00")),
    "empty time": (KEY, VALUE, headers(ce_time=b"")),
    "not JSON": (KEY, b"not json", HEADERS),
    "not UTF-8": (KEY, b"\xff\xfe", HEADERS),
    "value None": (KEY, None, HEADERS),
    "empty value": (KEY, b"", HEADERS),
    "a byte-order mark": (KEY, b"\xef\xbb\xbf" + VALUE, HEADERS),
    "JSON string that is not JSON": (KEY, b'"not json"', HEADERS),
    "JSON array": (KEY, b"[1, 2]", HEADERS),
    "JSON null": (KEY, b"null", HEADERS),
    "missing field": (KEY, b'{"username":"a"}', HEADERS),
    "unknown field": (KEY, b'{"username":"a","userId":"u","price":1,"admin":true}', HEADERS),
    "price a string": (KEY, b'{"username":"a","userId":"u","price":"1"}', HEADERS),
    "price 3 decimals": (KEY, b'{"username":"a","userId":"u","price":1.001}', HEADERS),
    "price negative": (KEY, b'{"username":"a","userId":"u","price":-1}', HEADERS),
    "price NaN": (KEY, b'{"username":"a","userId":"u","price":NaN}', HEADERS),
    "price huge exponent": (KEY, b'{"username":"a","userId":"u","price":1E+999999999999999999999}', HEADERS),
    "price 5000 digits": (KEY, b'{"username":"a","userId":"u","price":' + b"9" * 5000 + b"}", HEADERS),
    "userId operator": (KEY, b'{"username":"a","userId":"$ne","price":1}', HEADERS),
    "username control character": (KEY, b'{"username":"a\\u0000","userId":"u","price":1}', HEADERS),
    "username lone surrogate": (KEY, b'{"username":"\\ud800","userId":"u","price":1}', HEADERS),
    "deeply nested": (KEY, b"[" * 100000 + b"]" * 100000, HEADERS),
}


def outcome(decode, record):
    try:
        return decode(*record)
    except PoisonRecord as exc:
        # The SDK names missing keys as a set in string-hash order; the product sorts them.
        return "poison: " + re.sub(r"\{([^}]*)\}", lambda m: "{" + ", ".join(sorted(m[1].split(", "))) + "}", str(exc))


sdk_path = sdk_purchase


@pytest.mark.parametrize("name", RECORDS)
def test_the_one_pass_decode_agrees_with_the_sdk_path(name):
    record = RECORDS[name]
    assert outcome(purchase_from_kafka_record, record) == outcome(sdk_path, record)


def test_the_valid_record_is_the_purchase_it_was_built_from():
    decoded = purchase_from_kafka_record(KEY, VALUE, HEADERS)
    assert decoded.purchase == PURCHASE and decoded.time == NOW
    assert decoded.event_id == dict(HEADERS)["ce_id"].decode()


@pytest.mark.parametrize("name", ["valid", "upper-case specversion only", "no type", "bad time", "not JSON",
                                  "price a string", "no id"])
def test_poison_or_not_as_before(name):
    expected_poison = name != "valid"
    assert isinstance(outcome(purchase_from_kafka_record, RECORDS[name]), str) == expected_poison


def test_a_missing_time_is_the_time_of_reading_as_in_the_sdk():
    before = dt.datetime.now(dt.UTC)
    decoded = purchase_from_kafka_record(KEY, VALUE, headers(drop=("ce_time",)))
    assert before <= decoded.time <= dt.datetime.now(dt.UTC)
    assert decoded.purchase == PURCHASE


def test_a_record_without_an_id_is_poison_not_stored_under_a_made_up_one():
    """The SDK would give it a fresh uuid4 on every read: each redelivery stored once more."""
    for decode in (purchase_from_kafka_record, sdk_path):
        with pytest.raises(PoisonRecord, match="ce_id header missing"):
            decode(*RECORDS["no id"])


@pytest.mark.parametrize("name", ["no source", "no source, no type", "specversion 2.0", "not JSON", "undecodable id"])
def test_the_decoders_refusals_are_its_own_exception_not_the_sdks(name):
    with pytest.raises(UndecodableEvent) as caught:
        purchase_from_kafka_record(*RECORDS[name])
    assert type(caught.value).__module__ == "purchase_common.events"
    assert caught.value.__cause__ is None and caught.value.__context__ is None or \
        type(caught.value.__context__).__module__ in ("builtins", "json.decoder")
