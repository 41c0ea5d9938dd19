"""The three handlers in process, as functions-framework serves them
(``create_app(target, source).test_client()``): no Kafka, no MongoDB, milliseconds per case.
The same refusal tables run against the real servers in tests/integration/test_http_contract.py."""
from __future__ import annotations

import datetime as dt
import importlib
import logging
import sys
import threading
from types import SimpleNamespace

import functions_framework
import pytest
from cloudevents_reference import build_event, to_kafka_record
from http_cases import BAD_BUYS, BAD_HISTORY, PADDED_USER_CASES, UNKNOWN_METHODS, UNROUTABLE
from purchase_common import batch_consumer, config, idempotency, storage
from purchase_common.events import PurchaseEvent
from purchase_common.producer import Delivery, KafkaUnavailable
from purchase_common.schema import Purchase
from pymongo.errors import ServerSelectionTimeoutError
from starlette.applications import Starlette
from starlette.testclient import TestClient

from tools.common import ROOT

# The instances under test are built from settings of their own, not from this process's environment.
SETTINGS = config.load({"RETRY_AFTER_S": "7", "PURCHASES_TOPIC": "handlers-test"})
RETRY_AFTER = "7"
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


def entry_point(function: str, signature_type: str = "http"):
    """The test client of functions-framework serving the function's entry point, and its main
    module. The framework loads a source once per process (the metrics register globally), so each
    test hands the entry point an object of its own: ``main.function.use(...)``."""
    app = functions_framework.create_app(function, str(ROOT / "functions" / function / "main.py"), signature_type)
    client = AsgiClient(app) if isinstance(app, Starlette) else app.test_client()
    return client, sys.modules["main"]


@pytest.fixture(scope="session")
def buy_entry():
    return entry_point("buy")


@pytest.fixture(scope="session")
def history_entry():
    return entry_point("history")


@pytest.fixture(scope="session")
def persist_entry():
    return entry_point("persist_purchase", "cloudevent")


class FakeProducer:
    def __init__(self, fail: bool = False):
        self.fail, self.sent, self.started = fail, [], False

    def start(self):
        self.started = True

    def close(self):
        pass

    async def send(self, topic, key, value, headers):
        if self.fail:
            raise KafkaUnavailable("_MSG_TIMED_OUT")
        self.sent.append((topic, key, value, headers))
        return Delivery(partition=0, offset=len(self.sent))


def serve_buy(buy_entry, tmp_path, producer=None, window_s=3600):
    client, main = buy_entry
    function = main.Buy(SETTINGS, producer=producer or FakeProducer(),
                        fingerprints=idempotency.FingerprintStore(str(tmp_path / "keys.sqlite3"), window_s=window_s))
    function.start()
    main.function.use(function)
    return client, function


@pytest.fixture
def buy(buy_entry, tmp_path):
    return serve_buy(buy_entry, tmp_path)


@pytest.fixture
def producer(buy):
    return buy[1].producer


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
    assert topic == "handlers-test" and key == b"555"
    assert dict(headers)["ce_id"] == response.json["id"].encode()


def test_unacknowledged_buy_is_503_with_retry_after_from_settings(buy_entry, tmp_path):
    buy = serve_buy(buy_entry, tmp_path, producer=FakeProducer(fail=True))
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


def test_started_buy_has_started_its_producer(buy, producer):
    assert producer.started


def test_same_key_same_purchase_gets_the_original_answer(buy, producer):
    first = buy[0].post("/api/buy", json={"username": "elad", "userId": "555", "price": 12},
                        headers={"Idempotency-Key": "order-7"})
    # The same purchase written differently (padding, 12 vs 12.00) is the same purchase.
    again = buy[0].post("/api/buy", data=b'{"price": 12.00, "userId": " 555", "username": "elad "}',
                        headers={**JSON_HEADERS, "Idempotency-Key": "order-7"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json == again.json
    assert {dict(headers)["ce_id"] for *_, headers in producer.sent} == {first.json["id"].encode()}


@pytest.mark.parametrize("changed", [{"price": 13}, {"username": "someone else"}])
def test_same_key_different_purchase_is_422_and_not_produced(buy, producer, changed):
    original = {"username": "elad", "userId": "555", "price": 12}
    assert buy[0].post("/api/buy", json=original, headers={"Idempotency-Key": "k"}).status_code == 202
    response = buy[0].post("/api/buy", json={**original, **changed}, headers={"Idempotency-Key": "k"})
    assert response.status_code == 422
    assert response.json["field"] == "Idempotency-Key" and response.json["error"]
    assert len(producer.sent) == 1
    # The key is per user: another user may use the same one.
    assert buy[0].post("/api/buy", json={**original, "userId": "556"},
                       headers={"Idempotency-Key": "k"}).status_code == 202


def test_an_expired_key_may_carry_a_new_purchase(buy_entry, tmp_path):
    buy = serve_buy(buy_entry, tmp_path, window_s=0)
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

class FakeStore:
    """Stands in for storage.Store: answers history's query from documents, records persist's inserts."""

    def __init__(self, documents=(), down=False):
        self.documents, self.down, self.queried, self.inserted = list(documents), down, [], []

    def _check(self):
        if self.down:
            raise ServerSelectionTimeoutError("no server")

    def find_user_purchases(self, user_id, limit, before=None):
        self._check()
        self.queried.append(user_id)
        return self.documents[:limit]

    def insert(self, documents):
        self._check()
        self.inserted.append((threading.current_thread().name, documents))
        return storage.WriteResult(len(documents), 0)

    def collection(self):
        self._check()

    def reachable(self):
        return not self.down

    def close(self):
        pass


def serve_history(history_entry, store):
    client, main = history_entry
    function = main.History(SETTINGS, store=store)
    function.start()
    main.function.use(function)
    return client


@pytest.fixture
def history(history_entry):
    return serve_history(history_entry, FakeStore()), None


@pytest.mark.parametrize("path,field", BAD_HISTORY, ids=[case[0] for case in BAD_HISTORY])
def test_bad_history_query_is_refused(history_entry, path, field):
    response = serve_history(history_entry, FakeStore(down=True)).get(path)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["field"] == field


def test_history_pages_through_headers(history_entry):
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    documents = [storage.to_document(PurchaseEvent(f"e{i}", when, Purchase("a", "u1", 100 + i))) for i in range(2)]
    client = serve_history(history_entry, FakeStore(documents))
    response = client.get("/api/user/u1/purchases?limit=2")
    assert response.status_code == 200
    assert [p["price"] for p in response.json] == [1.0, 1.01]
    assert response.headers["X-Next-Cursor"] == storage.encode_cursor(documents[-1])
    assert "X-Next-Cursor" not in client.get("/api/getAllUserBuys/u1?limit=3").headers


@pytest.mark.parametrize("raw,link", PADDED_USER_CASES, ids=[case[0] for case in PADDED_USER_CASES])
def test_padded_user_id_is_trimmed_for_the_query_and_the_links(history_entry, raw, link):
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    store = FakeStore([storage.to_document(PurchaseEvent("e1", when, Purchase("a", "555", 100)))])
    response = serve_history(history_entry, store).get(raw.replace("{uid}", "555"))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert store.queried == ["555"]
    cursor = response.headers["X-Next-Cursor"]
    assert response.headers["Link"] == f'<{link.replace("{uid}", "555")}{cursor}>; rel="next"'


def test_history_with_the_database_down_is_503_and_not_ready(history_entry):
    client = serve_history(history_entry, FakeStore(down=True))
    response = client.get("/api/purchases?userId=u1")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == RETRY_AFTER
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_history_refuses_writes(history):
    assert history[0].post("/api/user/u1/purchases", json={}).status_code == 405


# --- persist_purchase ---------------------------------------------------------------------

def persist_function(store, **env):
    """persist_purchase's object (persist.py, beside main.py) on settings of its own."""
    persist = sys.modules.get("persist") or importlib.import_module("persist")
    return persist.PersistPurchase(config.load({"CONSUMER_BATCH_MAX": "500", "WRITE_RETRY_DEADLINE_S": "0", **env}),
                                   store=store)


def test_cloudevent_is_stored(persist_entry):
    client, main = persist_entry
    store = FakeStore()
    function = persist_function(store)
    function.start()
    main.function.use(function)
    event = build_event(Purchase("via http", "u1", 4200))
    headers = {"ce-id": event["id"], "ce-type": event["type"], "ce-source": event["source"],
               "ce-specversion": "1.0", "ce-time": event["time"]}
    response = client.post("/", json=event.data, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [(d["eventId"], d["priceCents"]) for _, docs in store.inserted for d in docs] == [(event["id"], 4200)]


class FakeKafka:
    """The consumer's KafkaConsumer: these batches from partition 0, then a stop; commits recorded."""

    def __init__(self, batches, stop, calls):
        self.batches, self.stop, self.calls = list(batches), stop, calls

    def poll(self, timeout_ms=0, max_records=None):
        if not self.batches:
            self.stop.set()
            return {}
        return {("t", 0): self.batches.pop(0)}

    def commit(self, offsets, timeout_ms=None):
        self.calls.append(("commit", {tp.partition: meta.offset for tp, meta in offsets.items()}))

    def assignment(self):
        return set()

    def pause(self, *partitions):
        pass

    def resume(self, *partitions):
        pass

    def paused(self):
        return set()

    def close(self, autocommit=False):
        self.calls.append(("close", None))


class FakeDeadLetters:
    def __init__(self, calls):
        self.calls = calls

    def send(self, topic, key, value, headers):
        self.calls.append(("dead_letter", dict(headers)["dlq_reason"].decode()))
        return SimpleNamespace(get=lambda timeout: None)

    def close(self, timeout=None):
        pass


class RecordingStore(FakeStore):
    def __init__(self, calls, down=False):
        super().__init__(down=down)
        self.calls = calls

    def insert(self, documents):
        self._check()
        behind = threading.current_thread().name.startswith("mongodb-writer")
        self.calls.append(("write behind" if behind else "write", [d["eventId"] for d in documents]))
        return storage.WriteResult(len(documents), 0)


def consume(*batches, batch_max=500, write_fails=False, calls=None):
    """The runtime's consumer loop over persist_purchase's decode and write, on fake Kafka and
    MongoDB: what it did, in order (into ``calls``, when given, for a loop that raises)."""
    calls, stop = [] if calls is None else calls, threading.Event()
    function = persist_function(RecordingStore(calls, down=write_fails), CONSUMER_BATCH_MAX=str(batch_max))
    consumer = batch_consumer.BatchConsumer(function, function.settings, stop, logging.getLogger("test"),
                                            kafka=FakeKafka(batches, stop, calls), dead_letters=FakeDeadLetters(calls))
    try:
        consumer.consume()
    finally:
        consumer.close()
    return calls


def kafka_record(offset, key, value, headers):
    return SimpleNamespace(topic="t", partition=0, offset=offset, key=key, value=value, headers=headers)


def purchase_records(count):
    return [kafka_record(i, *to_kafka_record(build_event(Purchase("a", f"u{i}", 100)))) for i in range(count)]


def test_consumer_loop_dead_letters_writes_then_commits():
    event = build_event(Purchase("a", "u1", 100))
    good = kafka_record(0, *to_kafka_record(event))
    poison = kafka_record(1, b"k", b"not an event", [])
    calls = consume([good, poison])
    assert [name for name, _ in calls] == ["dead_letter", "write", "commit", "close"]
    assert calls[1] == ("write", [event["id"]]) and calls[2] == ("commit", {0: 2})


def test_consumer_loop_never_commits_a_batch_it_could_not_write():
    calls = []
    with pytest.raises(batch_consumer.GaveUp):
        consume(purchase_records(1), write_fails=True, calls=calls)
    assert calls == [("close", None)]


def test_a_full_batch_is_written_behind_and_committed_before_the_next_is_written():
    records = purchase_records(5)
    calls = consume(records[:2], records[2:4], records[4:], batch_max=2)
    assert [name for name, _ in calls] == ["write behind", "commit", "write behind", "commit", "write", "commit",
                                           "close"]
    assert [offsets for name, offsets in calls if name == "commit"] == [{0: 2}, {0: 4}, {0: 5}]


def test_a_batch_written_behind_that_could_not_be_stored_is_never_committed():
    records = purchase_records(4)
    calls = []
    with pytest.raises(batch_consumer.GaveUp):
        consume(records[:2], records[2:], batch_max=2, write_fails=True, calls=calls)
    assert calls == [("close", None)]


def test_a_stop_commits_the_batch_written_behind_and_ends_the_loop():
    records = purchase_records(2)
    calls = consume(records, batch_max=2)
    assert [name for name, _ in calls] == ["write behind", "commit", "close"]


@pytest.mark.parametrize("body", [{"message": "Purchase accepted", "id": "5f0c3f5e"},
                                  {"error": "é \"x\"", "field": "a"},
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
