"""The purchase schema: the single definition of what a valid purchase is.

Used by buy (HTTP input), by persist_purchase (event data read back from Kafka) and by
history (userId in paths and query strings), so the three can never disagree.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

FIELDS = ("username", "userId", "price")
_FIELD_SET = frozenset(FIELDS)
USERNAME_MAX_CHARS = 100
USER_ID_MAX_CHARS = 64
# userId is used as a Kafka key and a MongoDB equality value: a conservative alphabet
# keeps "$"/"." (operator and path syntax) and whitespace out entirely.
USER_ID_PATTERN = re.compile(rf"[A-Za-z0-9_-]{{1,{USER_ID_MAX_CHARS}}}")
# Unicode categories Cc (C0, DEL, C1) and Cs (lone surrogates), as one scan instead of a
# unicodedata lookup per character.
_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
PRICE_MAX = Decimal("1000000.00")
CENT = Decimal("0.01")
MAX_BODY_BYTES = 16 * 1024
MAX_JSON_DEPTH = 8


class ValidationError(ValueError):
    """A client error: ``field`` names what was wrong, ``status`` is the HTTP status."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status

    def as_json(self) -> dict[str, str]:
        return {"error": self.message, "field": self.field}


@dataclass(frozen=True)
class Purchase:
    username: str
    user_id: str
    price_cents: int

    @property
    def price(self) -> Decimal:
        return Decimal(self.price_cents) / 100

    def event_data(self) -> dict[str, Any]:
        # cents/100 as a float has an exact shortest repr for two decimals in range,
        # so the JSON number reads back to the same Decimal.
        return {"username": self.username, "userId": self.user_id, "price": self.price_cents / 100}


class _NonFinite:
    """Stands in for a number literal that has no usable value (NaN, Infinity, or an exponent
    beyond what Decimal can hold), so validation can name the field it was in."""

    def __init__(self, literal: str):
        self.literal = literal


def _decimal_or_marker(literal: str) -> Decimal | _NonFinite:
    try:
        return Decimal(literal)
    except InvalidOperation:  # e.g. 1E+999999999999999999999: not a ValueError, would escape json
        return _NonFinite(literal[:32])


def _check_depth(value: object, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ValidationError("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, dict):
        for item in value.values():
            _check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(item, depth + 1)


def decode_json_text(decoder: json.JSONDecoder, text: str) -> Any:
    """json.loads(text) for a decoder built once (json.loads with options builds one per call):
    the same BOM refusal first, then the decoder's answers and errors."""
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return decoder.decode(text)


# Integers as Decimal too: int() refuses literals over 4300 digits with a bare ValueError.
# Built once: json.loads with these options would build a decoder per request.
_BODY_DECODER = json.JSONDecoder(
    parse_float=_decimal_or_marker, parse_int=_decimal_or_marker, parse_constant=_NonFinite
)


def parse_json_body(raw: bytes) -> Any:
    """Decode a request body strictly: UTF-8, JSON, bounded depth, exact decimals."""
    if not raw or not raw.strip():
        raise ValidationError("body", "request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("body", "request body is not valid UTF-8") from None
    try:
        value = decode_json_text(_BODY_DECODER, text)
    except RecursionError:
        raise ValidationError("body", "JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValidationError("body", f"request body is not valid JSON: {exc.msg}") from None
    except ValueError:
        raise ValidationError("body", "request body is not valid JSON") from None
    _check_depth(value)
    return value


def _clean_text(field: str, value: object, max_chars: int) -> str:
    if value is None:
        raise ValidationError(field, f"{field} is required")
    if not isinstance(value, str):
        raise ValidationError(field, f"{field} must be a string")
    value = value.strip()
    if not value:
        raise ValidationError(field, f"{field} must not be empty")
    if len(value) > max_chars:
        raise ValidationError(field, f"{field} must be at most {max_chars} characters")
    if _CONTROL_OR_SURROGATE.search(value):
        raise ValidationError(field, f"{field} must not contain control characters")
    return value


def validate_user_id(value: object, field: str = "userId") -> str:
    value = _clean_text(field, value, USER_ID_MAX_CHARS)
    if not USER_ID_PATTERN.fullmatch(value):
        raise ValidationError(field, f"{field} may contain only letters, digits, '_' and '-'")
    return value


def validate_price(value: object) -> int:
    """Return the price in integer cents."""
    if value is None:
        raise ValidationError("price", "price is required")
    if isinstance(value, _NonFinite):
        raise ValidationError("price", f"price must be a finite number from 0 to {PRICE_MAX}, not {value.literal}")
    # bool is an int subclass in Python; JSON true is not a price.
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, float)):
        raise ValidationError("price", "price must be a JSON number")
    try:
        amount = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise ValidationError("price", "price must be a number") from None
    if not amount.is_finite():
        raise ValidationError("price", "price must be a finite number")
    if amount < 0:
        raise ValidationError("price", "price must not be negative")
    if amount > PRICE_MAX:
        raise ValidationError("price", f"price must be at most {PRICE_MAX}")
    if amount != amount.quantize(CENT):
        raise ValidationError("price", "price must have at most 2 decimal places")
    return int(amount * 100)


def validate_purchase(payload: object) -> Purchase:
    """Validate a decoded purchase object. Unknown fields are rejected, not ignored."""
    if not isinstance(payload, dict):
        raise ValidationError("body", "request body must be a JSON object")
    if payload.keys() - _FIELD_SET:
        unknown = sorted(payload.keys() - _FIELD_SET)
        shown = unknown[0][:64] or '""'  # echo a bounded, non-empty name back
        raise ValidationError(shown, f"unknown field {shown!r}; allowed: {', '.join(FIELDS)}")
    for name in FIELDS:
        if name not in payload:
            raise ValidationError(name, f"{name} is required")
    username = _clean_text("username", payload["username"], USERNAME_MAX_CHARS)
    user_id = validate_user_id(payload["userId"])
    price_cents = validate_price(payload["price"])
    return Purchase(username=username, user_id=user_id, price_cents=price_cents)
