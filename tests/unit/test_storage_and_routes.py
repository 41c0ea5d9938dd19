"""Pure helpers: document mapping, paging cursors; the gateway's Envoy configuration."""
import datetime as dt
import json
import subprocess

import pytest
from purchase_common import storage
from purchase_common.events import PurchaseEvent
from purchase_common.schema import Purchase

from devstack import gateway


def test_document_and_api_shapes():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    document = storage.to_document(PurchaseEvent("id-1", when, Purchase("elad", "555", 1999)))
    assert document == {"eventId": "id-1", "username": "elad", "userId": "555", "priceCents": 1999,
                        "timestamp": when.replace(microsecond=678000)}
    assert storage.to_api(document) == {"id": "id-1", "username": "elad", "userId": "555", "price": 19.99,
                                        "timestamp": "2026-01-02T03:04:05.678Z"}


def test_cursor_round_trip():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    cursor = storage.encode_cursor({"timestamp": when, "eventId": "abc"})
    assert storage.decode_cursor(cursor) == (when, "abc")


@pytest.mark.parametrize("cursor", ["", "!!!", "bm90LWEtY3Vyc29y", "MTIz"])
def test_garbage_cursors_are_refused(cursor):
    with pytest.raises(storage.InvalidCursor):
        storage.decode_cursor(cursor)


def test_gateway_config_is_one_that_envoy_accepts(tmp_path):
    """What each route does is asked of Envoy itself in tests/integration/test_gateway.py."""
    config = gateway.write_config(tmp_path / "gateway.json", 8080, {"buy": "127.0.0.1:1", "history": "127.0.0.1:2"})
    result = subprocess.run([*gateway.command(config), "--mode", "validate"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    bootstrap = json.loads(config.read_text())
    assert "admin" not in bootstrap
    [listener] = bootstrap["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8080}
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert tuple((r["match"]["path_separated_prefix"], r["route"]["cluster"]) for r in routes if "route" in r) \
        == gateway.ROUTES
