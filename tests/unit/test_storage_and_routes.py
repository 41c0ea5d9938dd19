"""Pure helpers: document mapping, paging cursors, gateway routing."""
import datetime as dt

import pytest

from devstack.gateway import route
from purchase_common import storage
from purchase_common.events import PurchaseEvent
from purchase_common.schema import Purchase


def test_document_and_api_shapes():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)
    document = storage.to_document(PurchaseEvent("id-1", when, Purchase("elad", "555", 1999)))
    assert document == {"eventId": "id-1", "username": "elad", "userId": "555", "priceCents": 1999,
                        "timestamp": when.replace(microsecond=678000)}
    assert storage.to_api(document) == {"id": "id-1", "username": "elad", "userId": "555", "price": 19.99,
                                        "timestamp": "2026-01-02T03:04:05.678Z"}


def test_cursor_round_trip():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc)
    cursor = storage.encode_cursor({"timestamp": when, "eventId": "abc"})
    assert storage.decode_cursor(cursor) == (when, "abc")


@pytest.mark.parametrize("cursor", ["", "!!!", "bm90LWEtY3Vyc29y", "MTIz"])
def test_garbage_cursors_are_refused(cursor):
    with pytest.raises(storage.InvalidCursor):
        storage.decode_cursor(cursor)


@pytest.mark.parametrize("path,backend", [
    ("/api/buy", "buy"), ("/api/buy/", "buy"), ("/api/user/555/purchases", "history"),
    ("/api/purchases", "history"), ("/api/getAllUserBuys/555", "history"),
    ("/api/buyer", None), ("/", None), ("/api/users", None),
])
def test_gateway_routes_like_the_ingress(path, backend):
    assert route(path) == backend
