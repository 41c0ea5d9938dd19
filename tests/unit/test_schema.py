"""The purchase schema: every validation rule, without any server."""
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from purchase_common.schema import (
    MAX_BODY_BYTES,
    PRICE_MAX,
    Purchase,
    ValidationError,
    parse_json_body,
    validate_purchase,
    validate_user_id,
)


def body(text: str):
    return validate_purchase(parse_json_body(text.encode("utf-8")))


def test_valid_purchase_is_normalised():
    purchase = body('{"username": "  elad ", "userId": "555", "price": 12.00}')
    assert purchase == Purchase(username="elad", user_id="555", price_cents=1200)


@pytest.mark.parametrize("price,cents", [("0", 0), ("0.00", 0), ("19.99", 1999), ("1e2", 10000),
                                         ("1000000", 100000000), ("0.1", 10), ("7", 700)])
def test_prices_are_exact_cents(price, cents):
    assert body(f'{{"username":"a","userId":"u","price":{price}}}').price_cents == cents


@pytest.mark.parametrize("payload,field", [
    ('{"userId":"u","price":1}', "username"),
    ('{"username":"a","price":1}', "userId"),
    ('{"username":"a","userId":"u"}', "price"),
    ('{"username":null,"userId":"u","price":1}', "username"),
    ('{"username":"a","userId":"u","price":null}', "price"),
    ('{"username":"a","userId":555,"price":1}', "userId"),
    ('{"username":"a","userId":"u","price":"12"}', "price"),
    ('{"username":"a","userId":"u","price":true}', "price"),
    ('{"username":"a","userId":"u","price":[]}', "price"),
    ('{"username":"a","userId":"u","price":{}}', "price"),
    ('{"username":"a","userId":"u","price":NaN}', "price"),
    ('{"username":"a","userId":"u","price":Infinity}', "price"),
    ('{"username":"a","userId":"u","price":-Infinity}', "price"),
    ('{"username":"a","userId":"u","price":-0.01}', "price"),
    ('{"username":"a","userId":"u","price":1000000.01}', "price"),
    ('{"username":"a","userId":"u","price":1e400}', "price"),
    ('{"username":"a","userId":"u","price":12.001}', "price"),
    ('{"username":"   ","userId":"u","price":1}', "username"),
    ('{"username":"a","userId":"","price":1}', "userId"),
    ('{"username":"a","userId":{"$ne":null},"price":1}', "userId"),
    ('{"username":"a","userId":"a$b","price":1}', "userId"),
    ('{"username":"a","userId":"a.b","price":1}', "userId"),
    ('{"username":"a","userId":"u","price":1,"admin":true}', "admin"),
    ('{"username":"' + "x" * 101 + '","userId":"u","price":1}', "username"),
    ('{"username":"a","userId":"' + "u" * 65 + '","price":1}', "userId"),
    ('{"username":"a\\u0000b","userId":"u","price":1}', "username"),
    ('[1,2]', "body"),
    ('"text"', "body"),
    ('{"username":"a",', "body"),
    ('', "body"),
    ('[' * 5000 + ']' * 5000, "body"),
    ('{"username":"a","userId":"u","price":1,"x":' + '[' * 20 + ']' * 20 + '}', "body"),
])
def test_invalid_purchases_name_the_field(payload, field):
    with pytest.raises(ValidationError) as caught:
        body(payload)
    assert caught.value.field == field
    assert caught.value.status == 400
    assert caught.value.as_json() == {"error": caught.value.message, "field": field}


def test_invalid_utf8_is_a_body_error():
    with pytest.raises(ValidationError) as caught:
        parse_json_body(b'{"username":"\xff","userId":"u","price":1}')
    assert caught.value.field == "body"


def test_unicode_username_is_kept_exactly():
    name = "אלעד 🛒 Zoë"
    assert body(f'{{"username":"{name}","userId":"u","price":1}}').username == name


def test_event_data_price_reads_back_exactly():
    purchase = Purchase("a", "u", 1999)
    assert Decimal(repr(purchase.event_data()["price"])) == Decimal("19.99")


@given(st.integers(min_value=0, max_value=int(PRICE_MAX * 100)))
def test_any_cent_amount_round_trips_through_event_data(cents):
    data = Purchase("a", "u", cents).event_data()
    text = f'{{"username":"a","userId":"u","price":{data["price"]!r}}}'
    assert body(text).price_cents == cents


@given(st.dictionaries(st.text(max_size=10), st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                       max_size=5))
def test_validator_never_raises_anything_but_validation_error(payload):
    try:
        validate_purchase(payload)
    except ValidationError as exc:
        assert exc.status == 400 and exc.field


@given(st.text(max_size=80))
def test_user_ids_accepted_only_from_the_safe_alphabet(text):
    try:
        accepted = validate_user_id(text)
    except ValidationError:
        return
    assert accepted and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in accepted)
    assert "$" not in accepted and "." not in accepted


def test_body_limit_constant_is_sane():
    assert 1024 <= MAX_BODY_BYTES <= 1024 * 1024


def test_control_character_scan_matches_unicode_categories():
    import unicodedata

    from purchase_common.schema import _CONTROL_OR_SURROGATE
    disagree = [cp for cp in range(0x110000)
                if (unicodedata.category(chr(cp)) in ("Cc", "Cs")) != bool(_CONTROL_OR_SURROGATE.search(chr(cp)))]
    assert disagree == []
