"""HTTP contract of buy and history: every refusal is a 4xx JSON naming the field, and nothing
refused ever reaches Kafka. The hostile inputs here run against the real functions."""
from __future__ import annotations

import time

import pytest
import requests
from http_cases import BAD_BUYS, BAD_HISTORY
from support import end_offsets, wait_until

from devstack import stack as devstack
from devstack.servers import free_port

pytestmark = pytest.mark.integration


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
