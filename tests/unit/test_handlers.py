"""The three handlers in process, as functions-framework serves them
(``create_app(target, source).test_client()``): no Kafka, no MongoDB, milliseconds per case.
The same refusal tables run against the real servers in tests/integration/test_http_contract.py."""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from types import SimpleNamespace

import functions_framework
import pytest
from pymongo.errors import ServerSelectionTimeoutError
from starlette.applications import Starlette
from starlette.testclient import TestClient

from http_cases import BAD_BUYS, BAD_HISTORY, PADDED_USER_CASES, UNKNOWN_METHODS, UNROUTABLE
from purchase_common import batch_consumer, config, idempotency, storage
from purchase_common.events import PurchaseEvent, build_event, to_kafka_record
from purchase_common.producer import Delivery, KafkaUnavailable
from purchase_common.schema import Purchase

ROOT = Path(__file__).resolve().parents[2]
RETRY_AFTER = str(config.settings().retry_after_s)
JSON_HEADERS = {"Content-Type": "application/json"}


class AsgiClient:
    """Starlette's TestClient for an ASGI function (buy), answering with the surface of Flask's
    test client that these tests use, so one table of cases drives both kinds of function."""

    def __init__(self, app):
        self.client = TestClient(app, raise_server_exceptions=False)

    def open(self, path, method="GET", data=None, json=None, headers=None):
        response = self.client.request(method, path, content=data, json=json, headers=headers)
        return SimpleNamespace(status_code=response.status_code, headers=response.headers, data=response.content,
                               json=_json_or_none(response), get_data=lambda as_text=False: (
                                   response.text if as_text else response.content))

    def get(self, path, **kwargs):
        return self.open(path, "GET", **kwargs)

    def post(self, path, **kwargs):
        return self.open(path, "POST", **kwargs)


def _json_or_none(response):
    try:
        return response.json()
    except ValueError:
        return None


def load(function: str, signature_type: str = "http"):
    """The function's test client and its main module (each main.py loads once per session:
    its Prometheus metrics register globally)."""
    app = functions_framework.create_app(function, str(ROOT / "functions" / function / "main.py"), signature_type)
    client = AsgiClient(app) if isinstance(app, Starlette) else app.test_client()
    return client, sys.modules["main"]


@pytest.fixture(scope="session")
def buy():
    return load("buy")


@pytest.fixture(scope="session")
def history():
    return load("history")


@pytest.fixture(scope="session")
def persist():
    return load("persist_purchase", "cloudevent")


class FakeProducer:
    def __init__(self, fail: bool = False):
        self.fail, self.sent = fail, []

    async def send(self, topic, key, value, headers):
        if self.fail:
            raise KafkaUnavailable("_MSG_TIMED_OUT")
        self.sent.append((topic, key, value, headers))
        return Delivery(partition=0, offset=len(self.sent))


@pytest.fixture
def producer(buy, monkeypatch, fresh_keys):
    fake = FakeProducer()
    monkeypatch.setattr(buy[1], "producer", fake)
    return fake


# --- buy ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", BAD_BUYS, ids=[case[0] for case in BAD_BUYS])
def test_bad_buy_is_refused_before_kafka(buy, producer, case):
    _, body, headers, status, field = case
    response = buy[0].post("/api/buy", data=body, headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json["field"] == field and response.json["error"]
    assert producer.sent == []


def test_valid_buy_is_sent_and_answered_202(buy, producer):
    response = buy[0].post("/api/buy", json={"username": "elad", "userId": "555", "price": 12.0},
                           headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 202
    assert response.json == {"message": "Purchase accepted", "id": response.json["id"]}
    ((topic, key, _, headers),) = producer.sent
    assert topic == config.settings().purchases_topic and key == b"555"
    assert dict(headers)["ce_id"] == response.json["id"].encode()


def test_unacknowledged_buy_is_503_with_retry_after_from_settings(buy, monkeypatch):
    monkeypatch.setattr(buy[1], "producer", FakeProducer(fail=True))
    response = buy[0].post("/api/buy", json={"username": "a", "userId": "u1", "price": 1})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == RETRY_AFTER
    assert response.json["error"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_buy_are_405(buy, producer, method):
    response = buy[0].open("/api/buy", method=method)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"


def test_buy_probes_and_metrics(buy):
    client = buy[0]
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").status_code == 200, "Kafka down still means serving (503s)"
    assert b"purchases_rejected_total" in client.get("/metrics").data
    assert client.get("/nope").status_code == 404


@pytest.fixture
def fresh_keys(buy, monkeypatch, tmp_path):
    store = idempotency.FingerprintStore(str(tmp_path / "keys.sqlite3"), window_s=3600)
    monkeypatch.setattr(buy[1], "fingerprints", store)
    return store


def test_same_key_same_purchase_gets_the_original_answer(buy, producer, fresh_keys):
    first = buy[0].post("/api/buy", json={"username": "elad", "userId": "555", "price": 12},
                        headers={"Idempotency-Key": "order-7"})
    # The same purchase written differently (padding, 12 vs 12.00) is the same purchase.
    again = buy[0].post("/api/buy", data=b'{"price": 12.00, "userId": " 555", "username": "elad "}',
                        headers={**JSON_HEADERS, "Idempotency-Key": "order-7"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json == again.json
    assert {dict(headers)["ce_id"] for *_, headers in producer.sent} == {first.json["id"].encode()}


@pytest.mark.parametrize("changed", [{"price": 13}, {"username": "someone else"}])
def test_same_key_different_purchase_is_422_and_not_produced(buy, producer, fresh_keys, changed):
    original = {"username": "elad", "userId": "555", "price": 12}
    assert buy[0].post("/api/buy", json=original, headers={"Idempotency-Key": "k"}).status_code == 202
    response = buy[0].post("/api/buy", json={**original, **changed}, headers={"Idempotency-Key": "k"})
    assert response.status_code == 422
    assert response.json["field"] == "Idempotency-Key" and response.json["error"]
    assert len(producer.sent) == 1
    # The key is per user: another user may use the same one.
    assert buy[0].post("/api/buy", json={**original, "userId": "556"},
                       headers={"Idempotency-Key": "k"}).status_code == 202


def test_an_expired_key_may_carry_a_new_purchase(buy, producer, monkeypatch, tmp_path):
    monkeypatch.setattr(buy[1], "fingerprints", idempotency.FingerprintStore(str(tmp_path / "k.db"), window_s=0))
    for price in (1, 2):
        assert buy[0].post("/api/buy", json={"username": "a", "userId": "u1", "price": price},
                           headers={"Idempotency-Key": "k"}).status_code == 202


@pytest.mark.parametrize("path", UNROUTABLE)
def test_routing_failures_are_json_404(buy, history, path):
    for client, _ in (buy, history):
        response = client.get(path)
        assert response.status_code == 404, (path, response.get_data(as_text=True))
        assert response.headers["Content-Type"].startswith("application/json") and response.json["error"]


@pytest.mark.parametrize("method,path", UNKNOWN_METHODS)
def test_unknown_methods_are_json_405(buy, history, producer, method, path):
    client = buy[0] if path == "/api/buy" else history[0]
    response = client.open(path, method=method)
    assert response.status_code == 405 and response.headers["Allow"]
    assert response.json["error"]


@pytest.mark.parametrize("name", ["buy", "history"])
def test_each_http_function_serves_the_openapi_document(buy, history, name):
    response = {"buy": buy, "history": history}[name][0].get("/openapi.json")
    assert response.status_code == 200 and response.json["openapi"].startswith("3.1")
    assert set(response.json["paths"]) >= {"/api/buy", "/api/user/{userId}/purchases", "/api/purchases",
                                           "/api/getAllUserBuys/{userId}"}


# --- history ------------------------------------------------------------------------------

def unreachable_database():
    raise ServerSelectionTimeoutError("no server")


@pytest.mark.parametrize("path,field", BAD_HISTORY, ids=[case[0] for case in BAD_HISTORY])
def test_bad_history_query_is_refused(history, monkeypatch, path, field):
    monkeypatch.setattr(storage, "shared_collection", unreachable_database)
    response = history[0].get(path)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["field"] == field


def test_history_pages_through_headers(history, monkeypatch):
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    documents = [storage.to_document(PurchaseEvent(f"e{i}", when, Purchase("a", "u1", 100 + i))) for i in range(2)]
    monkeypatch.setattr(storage, "shared_collection", lambda: None)
    monkeypatch.setattr(storage, "find_user_purchases", lambda collection, user, limit, before: documents[:limit])
    response = history[0].get("/api/user/u1/purchases?limit=2")
    assert response.status_code == 200
    assert [p["price"] for p in response.json] == [1.0, 1.01]
    assert response.headers["X-Next-Cursor"] == storage.encode_cursor(documents[-1])
    assert "X-Next-Cursor" not in history[0].get("/api/getAllUserBuys/u1?limit=3").headers


@pytest.mark.parametrize("raw,link", PADDED_USER_CASES, ids=[case[0] for case in PADDED_USER_CASES])
def test_padded_user_id_is_trimmed_for_the_query_and_the_links(history, monkeypatch, raw, link):
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    queried = []

    def find(collection, user, limit, before):
        queried.append(user)
        return [storage.to_document(PurchaseEvent("e1", when, Purchase("a", user, 100)))]

    monkeypatch.setattr(storage, "shared_collection", lambda: None)
    monkeypatch.setattr(storage, "find_user_purchases", find)
    response = history[0].get(raw.replace("{uid}", "555"))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert queried == ["555"]
    cursor = response.headers["X-Next-Cursor"]
    assert response.headers["Link"] == f'<{link.replace("{uid}", "555")}{cursor}>; rel="next"'


def test_history_with_the_database_down_is_503_and_not_ready(history, monkeypatch):
    monkeypatch.setattr(storage, "shared_collection", unreachable_database)
    response = history[0].get("/api/purchases?userId=u1")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == RETRY_AFTER
    assert history[0].get("/readyz").status_code == 503
    assert history[0].get("/healthz").status_code == 200


def test_history_refuses_writes(history):
    assert history[0].post("/api/user/u1/purchases", json={}).status_code == 405


# --- persist_purchase ---------------------------------------------------------------------

def test_cloudevent_is_stored(persist, monkeypatch):
    stored = []
    monkeypatch.setattr(storage, "shared_collection", lambda: None)
    monkeypatch.setattr(storage, "insert_purchases",
                        lambda collection, docs: stored.extend(docs) or storage.WriteResult(len(docs), 0))
    event = build_event(Purchase("via http", "u1", 4200))
    headers = {"ce-id": event["id"], "ce-type": event["type"], "ce-source": event["source"],
               "ce-specversion": "1.0", "ce-time": event["time"]}
    response = persist[0].post("/", json=event.data, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [(d["eventId"], d["priceCents"]) for d in stored] == [(event["id"], 4200)]


class FakeBatches:
    """Records what the consumer loop asks of its BatchConsumer: these batches, then stop."""

    def __init__(self, *batches, write_fails: bool = False, batch_max: int = 500):
        self.batches, self.write_fails, self.batch_max = list(batches), write_fails, batch_max
        self.calls, self.behind = [], None

    @property
    def running(self):
        return bool(self.batches)

    def poll(self):
        return self.batches.pop(0)

    def full(self, records):
        return len(records) >= self.batch_max

    def dead_letter(self, poison):
        if poison:
            self.calls.append(("dead_letter", [reason for _, reason in poison]))

    def write(self, store, events):
        if self.write_fails:
            raise batch_consumer.GaveUp("mongodb write abandoned")
        self.calls.append(("write", [e.event_id for e in events]))

    def write_behind(self, store, events, records):
        assert self.behind is None, "a second batch written behind before the first was committed"
        self.calls.append(("write behind", [e.event_id for e in events]))
        self.behind = records

    def commit_written(self):
        if self.behind is not None:
            if self.write_fails:
                raise batch_consumer.GaveUp("mongodb write abandoned")
            self.commit(self.behind)
            self.behind = None

    def commit(self, records):
        self.calls.append(("commit", len(records)))


def kafka_record(offset, key, value, headers):
    return SimpleNamespace(topic="t", partition=0, offset=offset, key=key, value=value, headers=headers)


def test_consumer_loop_dead_letters_writes_then_commits(persist):
    event = build_event(Purchase("a", "u1", 100))
    good = kafka_record(0, *to_kafka_record(event))
    poison = kafka_record(1, b"k", b"not an event", [])
    batches = FakeBatches([good, poison])
    persist[1].consume(batches)
    assert [name for name, _ in batches.calls] == ["dead_letter", "write", "commit"]
    assert batches.calls[1] == ("write", [event["id"]]) and batches.calls[2] == ("commit", 2)


def test_consumer_loop_never_commits_a_batch_it_could_not_write(persist):
    batches = FakeBatches([kafka_record(0, *to_kafka_record(build_event(Purchase("a", "u1", 100))))],
                          write_fails=True)
    with pytest.raises(batch_consumer.GaveUp):
        persist[1].consume(batches)
    assert ("commit", 1) not in batches.calls


def purchase_records(count):
    return [kafka_record(i, *to_kafka_record(build_event(Purchase("a", f"u{i}", 100)))) for i in range(count)]


def test_a_full_batch_is_written_behind_and_committed_before_the_next_is_written(persist):
    records = purchase_records(5)
    batches = FakeBatches(records[:2], records[2:4], records[4:], batch_max=2)
    persist[1].consume(batches)
    assert [name for name, _ in batches.calls] == ["write behind", "commit", "write behind", "commit", "write", "commit"]
    assert [n for name, n in batches.calls if name == "commit"] == [2, 2, 1]


def test_a_batch_written_behind_that_could_not_be_stored_is_never_committed(persist):
    records = purchase_records(4)
    batches = FakeBatches(records[:2], records[2:], batch_max=2, write_fails=True)
    with pytest.raises(batch_consumer.GaveUp):
        persist[1].consume(batches)
    assert not [call for call in batches.calls if call[0] == "commit"]


@pytest.mark.parametrize("body", [{"message": "Purchase accepted", "id": "5f0c3f5e"}, {"error": "é \"x\"", "field": "a"},
                                  [{"price": 12.34, "userId": "u", "timestamp": "2026-01-01T00:00:00.000Z"}], []])
def test_json_answers_are_the_bytes_jsonify_writes(body):
    """answers' JSON skips flask.jsonify's per-request cost, not its output, in both frameworks."""
    import flask

    from purchase_common import answers

    with flask.Flask("bytes").app_context():
        expected = flask.jsonify(body)
        answer = answers.WSGI.json(body, 202)
    assert (answer.status_code, answer.get_data(), answer.mimetype) == (202, expected.get_data(), expected.mimetype)
    asgi = answers.ASGI.json(body, 202)
    assert (asgi.status_code, asgi.body, asgi.media_type) == (202, expected.get_data(), expected.mimetype)
