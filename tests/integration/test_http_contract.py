"""HTTP contract of buy and history: every refusal is a 4xx JSON naming the field, and nothing
refused ever reaches Kafka. The hostile inputs here run against the real functions."""
from __future__ import annotations

import time

import pytest
import requests
from kafka import KafkaConsumer, TopicPartition

from support import wait_until
from devstack import stack as devstack
from devstack.servers import free_port

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/json"}

BAD_BUYS = [
    # (description, body bytes, headers, expected status, expected field)
    ("missing username", b'{"userId":"u1","price":1}', JSON, 400, "username"),
    ("missing userId", b'{"username":"a","price":1}', JSON, 400, "userId"),
    ("missing price", b'{"username":"a","userId":"u1"}', JSON, 400, "price"),
    ("null username", b'{"username":null,"userId":"u1","price":1}', JSON, 400, "username"),
    ("null userId", b'{"username":"a","userId":null,"price":1}', JSON, 400, "userId"),
    ("null price", b'{"username":"a","userId":"u1","price":null}', JSON, 400, "price"),
    ("extra field", b'{"username":"a","userId":"u1","price":1,"isAdmin":true}', JSON, 400, "isAdmin"),
    ("numeric userId", b'{"username":"a","userId":555,"price":1}', JSON, 400, "userId"),
    ("numeric username", b'{"username":7,"userId":"u1","price":1}', JSON, 400, "username"),
    ("price as string", b'{"username":"a","userId":"u1","price":"12"}', JSON, 400, "price"),
    ("price true", b'{"username":"a","userId":"u1","price":true}', JSON, 400, "price"),
    ("price list", b'{"username":"a","userId":"u1","price":[]}', JSON, 400, "price"),
    ("price object", b'{"username":"a","userId":"u1","price":{}}', JSON, 400, "price"),
    ("price NaN", b'{"username":"a","userId":"u1","price":NaN}', JSON, 400, "price"),
    ("price Infinity", b'{"username":"a","userId":"u1","price":Infinity}', JSON, 400, "price"),
    ("price -Infinity", b'{"username":"a","userId":"u1","price":-Infinity}', JSON, 400, "price"),
    ("negative price", b'{"username":"a","userId":"u1","price":-1}', JSON, 400, "price"),
    ("huge price", b'{"username":"a","userId":"u1","price":1e308}', JSON, 400, "price"),
    ("overflowing price", b'{"username":"a","userId":"u1","price":1e999}', JSON, 400, "price"),
    ("three decimals", b'{"username":"a","userId":"u1","price":1.005}', JSON, 400, "price"),
    ("empty username", b'{"username":"","userId":"u1","price":1}', JSON, 400, "username"),
    ("blank userId", b'{"username":"a","userId":"   ","price":1}', JSON, 400, "userId"),
    ("operator userId", b'{"username":"a","userId":{"$ne":null},"price":1}', JSON, 400, "userId"),
    ("dollar in userId", b'{"username":"a","userId":"$where","price":1}', JSON, 400, "userId"),
    ("dot in userId", b'{"username":"a","userId":"a.b","price":1}', JSON, 400, "userId"),
    ("long username", b'{"username":"' + b"x" * 5000 + b'","userId":"u1","price":1}', JSON, 400, "username"),
    ("long userId", b'{"username":"a","userId":"' + b"u" * 65 + b'","price":1}', JSON, 400, "userId"),
    ("control char", b'{"username":"a\\u0007","userId":"u1","price":1}', JSON, 400, "username"),
    ("array body", b'[{"username":"a","userId":"u1","price":1}]', JSON, 400, "body"),
    ("string body", b'"buy"', JSON, 400, "body"),
    ("empty body", b"", JSON, 400, "body"),
    ("whitespace body", b"   ", JSON, 400, "body"),
    ("truncated JSON", b'{"username":"a",', JSON, 400, "body"),
    ("invalid UTF-8", b'{"username":"\xff\xfe","userId":"u1","price":1}', JSON, 400, "body"),
    ("deeply nested", b"[" * 100000 + b"]" * 100000, JSON, 413, "body"),
    ("nested within limit", b'{"username":"a","userId":"u1","price":1,"x":' + b"[" * 50 + b"]" * 50 + b"}",
     JSON, 400, "body"),
    ("1 MB body", b'{"username":"' + b"a" * (1024 * 1024) + b'","userId":"u1","price":1}', JSON, 413, "body"),
    ("text/plain", b'{"username":"a","userId":"u1","price":1}', {"Content-Type": "text/plain"}, 415,
     "Content-Type"),
    ("form encoded", b"username=a&userId=u1&price=1", {"Content-Type": "application/x-www-form-urlencoded"},
     415, "Content-Type"),
    ("no content type", b'{"username":"a","userId":"u1","price":1}', {}, 415, "Content-Type"),
    ("bad idempotency key", b'{"username":"a","userId":"u1","price":1}',
     {**JSON, "Idempotency-Key": "x" * 300}, 400, "Idempotency-Key"),
]


def end_offsets(bootstrap, topic) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def produced_nothing(pipeline):
    before = end_offsets(pipeline.stack.kafka_bootstrap, pipeline.topic)
    yield
    assert end_offsets(pipeline.stack.kafka_bootstrap, pipeline.topic) == before, "a refused purchase was produced"


@pytest.mark.parametrize("case", BAD_BUYS, ids=[case[0] for case in BAD_BUYS])
def test_bad_buy_is_refused_with_a_json_error(pipeline, produced_nothing, case):
    _, body, headers, status, field = case
    response = requests.post(f"{pipeline.gateway}/api/buy", data=body, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["field"] == field
    assert response.json()["error"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_buy_are_405(pipeline, produced_nothing, method):
    response = requests.request(method, f"{pipeline.gateway}/api/buy", timeout=10)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert response.json()["error"]


BAD_HISTORY = [
    ("/api/purchases?userId[$ne]=x", "userId"),
    ("/api/purchases?userId=a&userId=b", "userId"),
    ("/api/purchases", "userId"),
    ("/api/purchases?userId=%24ne", "userId"),
    ("/api/user/a.b/purchases", "userId"),
    ("/api/user/a%2Fb/purchases", "userId"),
    ("/api/getAllUserBuys/" + "x" * 65, "userId"),
    ("/api/user/u1/purchases?limit=100000000000", "limit"),
    ("/api/user/u1/purchases?limit=501", "limit"),
    ("/api/user/u1/purchases?limit=-1", "limit"),
    ("/api/user/u1/purchases?limit=0", "limit"),
    ("/api/user/u1/purchases?limit=ten", "limit"),
    ("/api/user/u1/purchases?before=garbage", "before"),
]


@pytest.mark.parametrize("path,field", BAD_HISTORY, ids=[case[0] for case in BAD_HISTORY])
def test_bad_history_query_is_refused(pipeline, path, field):
    response = requests.get(f"{pipeline.gateway}{path}", timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


def test_history_refuses_writes(pipeline):
    response = requests.post(f"{pipeline.gateway}/api/user/u1/purchases", json={}, timeout=10)
    assert response.status_code == 405


def test_unreachable_kafka_answers_503_quickly(servers, tmp_path):
    """A buy function whose broker does not exist answers 503 + Retry-After, never hangs."""
    env = devstack.function_env(servers, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    port = free_port()
    process = devstack.start_buy(env, port, tmp_path)
    try:
        for _ in range(3):
            started = time.monotonic()
            response = requests.post(f"http://127.0.0.1:{port}/api/buy", json={"username": "a", "userId": "u1",
                                     "price": 1}, timeout=30)
            elapsed = time.monotonic() - started
            assert response.status_code == 503
            assert int(response.headers["Retry-After"]) > 0
            assert "error" in response.json() and "Traceback" not in response.text
            assert elapsed < 5, f"503 took {elapsed:.1f}s"
        assert wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).ok, 5)
    finally:
        process.stop()
