"""Issue 13's hostile inputs against the real functions, through the gateway and directly:
each answer is JSON, 4xx, prompt, and the paging links use the canonical userId.
The same tables run in process in tests/unit/test_handlers.py."""
from __future__ import annotations

import json
import uuid

import pytest
import requests
from http_cases import BAD_FRAMING, PADDED_USER_CASES, UNKNOWN_METHODS, UNKNOWN_METHODS_THE_GATEWAY_REFUSES, UNROUTABLE
from support import ANSWER_WITHIN_S, raw_exchange, wait_until

pytestmark = pytest.mark.integration


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def stored_user(pipeline):
    """A user with one stored purchase, so a limit=1 page is full and carries the links."""
    user_id = "pad-" + uuid.uuid4().hex[:8]
    response = requests.post(f"{pipeline.gateway}/api/buy", json={"username": "padded", "userId": user_id,
                                                                  "price": 1}, timeout=10)
    assert response.status_code == 202
    collection = pipeline.collection()
    wait_until(lambda: collection.count_documents({"userId": user_id}) == 1, 30, message="purchase stored")
    return user_id


@pytest.mark.parametrize("raw,link", PADDED_USER_CASES, ids=[case[0] for case in PADDED_USER_CASES])
def test_padded_user_id_pages_with_canonical_links(pipeline, stored_user, raw, link):
    path = raw.replace("{uid}", stored_user)
    status, headers, body, _ = raw_exchange(port_of(pipeline.gateway),
                                            f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status == 200, body
    assert [p["userId"] for p in json.loads(body)] == [stored_user]
    assert headers["link"] == f'<{link.replace("{uid}", stored_user)}{headers["x-next-cursor"]}>; rel="next"'
    # The link is a working URI: following it gives the (empty) next page.
    follow = requests.get(pipeline.gateway + headers["link"][1:].split(">", 1)[0], timeout=10)
    assert follow.status_code == 200 and follow.json() == []


@pytest.mark.parametrize("path", UNROUTABLE)
@pytest.mark.parametrize("server", ["gateway", "buy", "history"])
def test_routing_failures_are_json_404(pipeline, server, path):
    status, headers, body, elapsed = raw_exchange(
        port_of(getattr(pipeline, server)), f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status == 404 and headers["content-type"].startswith("application/json"), body
    assert json.loads(body)["error"]


@pytest.mark.parametrize("method,path", UNKNOWN_METHODS)
@pytest.mark.parametrize("server", ["gateway", "function"])
def test_unknown_methods_are_json_405(pipeline, server, method, path):
    """The gateway forwards them and the function answers, except what the gateway refuses itself."""
    expected = UNKNOWN_METHODS_THE_GATEWAY_REFUSES.get(method, 405) if server == "gateway" else 405
    if server == "function":
        server = "buy" if path == "/api/buy" else "history"
    status, headers, body, _ = raw_exchange(
        port_of(getattr(pipeline, server)),
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
    assert status == expected and headers["content-type"].startswith("application/json"), body
    assert json.loads(body)["error"] and (status != 405 or headers["allow"])


@pytest.mark.parametrize("case", BAD_FRAMING, ids=[case[0] for case in BAD_FRAMING])
def test_gateway_refuses_bad_framing_promptly_as_json(pipeline, case):
    _, request = case
    status, headers, body, elapsed = raw_exchange(port_of(pipeline.gateway), request)
    assert status == 400 and headers["content-type"].startswith("application/json"), body
    # Envoy's HTTP/1 codec says only that the request is malformed, not which header.
    assert json.loads(body) == {"error": "malformed request: http1.codec_error"}
    assert elapsed < ANSWER_WITHIN_S
