"""buy and history with AUTH_MODE=jwt, over real HTTP through the gateway, against the real
provider (mock-oauth2-server): the hostile table answers 401 (never 500) and produces nothing,
another user's data is a 403, scopes allow, a JWKS that is down is a 503 within the timeout,
and AUTH_MODE=off (the `pipeline` fixture) is the original open API.

The provider accepts any client secret, so what is tested is what the functions verify."""
from __future__ import annotations

import time
import uuid

import pytest
import requests
from auth_tokens import HOSTILE, STRANGER_KEY, forged
from purchase_common.auth import READ_ANY_SCOPE, WRITE_ANY_SCOPE
from support import end_offsets, wait_until

pytestmark = pytest.mark.integration

HISTORY_ROUTES = ("/api/user/{}/purchases", "/api/getAllUserBuys/{}", "/api/purchases?userId={}")
# What the Authorization header itself can get wrong, beside the tokens of HOSTILE.
BAD_HEADERS = {
    "no Authorization": None,
    "empty Authorization": "",
    "Basic scheme": "Basic dXNlcjpwYXNz",
    "Bearer and nothing": "Bearer ",
    "two tokens": "Bearer a.b.c d.e.f",
}
REJECTED_REASONS = {"unauthenticated", "forbidden", "auth_unavailable"}


def user() -> str:
    return "u" + uuid.uuid4().hex[:12]


def buy(pipeline, authorization: str | None, user_id: str, price: float = 12.5) -> requests.Response:
    headers = {"Content-Type": "application/json", "Host": "purchase.local"}
    if authorization is not None:
        headers["Authorization"] = authorization
    return requests.post(pipeline.gateway + "/api/buy", json={"username": "elad", "userId": user_id, "price": price},
                         headers=headers, timeout=15)


def history(pipeline, authorization: str | None, user_id: str, route: str = HISTORY_ROUTES[0]) -> requests.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return requests.get(pipeline.gateway + route.format(user_id), headers=headers, timeout=15)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def assert_unauthorized(answer: requests.Response, case: str) -> None:
    assert answer.status_code == 401, (case, answer.status_code, answer.text)
    assert answer.headers["Content-Type"] == "application/json", case
    assert answer.headers["WWW-Authenticate"].startswith("Bearer"), case
    assert "error" in answer.json(), case


def ids(answer: requests.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [purchase["id"] for purchase in answer.json()]


def stored(pipeline, user_id: str) -> list[dict]:
    return list(pipeline.collection().find({"userId": user_id}, projection={"_id": False}))


def test_a_token_buys_for_its_subject_reads_its_history_and_the_store_keeps_the_buyer(auth_pipeline):
    me = user()
    token = bearer(auth_pipeline.provider.token(me))
    answer = buy(auth_pipeline, token, me)
    assert answer.status_code == 202, answer.text
    event_id = answer.json()["id"]
    wait_until(lambda: ids(history(auth_pipeline, token, me)) == [event_id], 30,
               message="the purchase in the buyer's history")
    for route in HISTORY_ROUTES:
        assert ids(history(auth_pipeline, token, me, route)) == [event_id]
    assert stored(auth_pipeline, me)[0]["boughtBy"] == me


def test_hostile_tokens_and_headers_are_401_and_produce_nothing(auth_pipeline):
    victim = user()
    before = end_offsets(auth_pipeline.stack.kafka_bootstrap, auth_pipeline.topic)
    cases = {case: bearer(make(auth_pipeline.provider)) for case, (make, _) in HOSTILE.items()}
    cases.update(BAD_HEADERS)
    for case, authorization in cases.items():
        assert_unauthorized(buy(auth_pipeline, authorization, "555"), f"buy: {case}")
        assert_unauthorized(buy(auth_pipeline, authorization, victim), f"buy: {case}")
        for route in HISTORY_ROUTES:
            assert_unauthorized(history(auth_pipeline, authorization, "555", route), f"history {route}: {case}")
    # Missing credentials carry no error code (RFC 6750 §3.1); bad ones name invalid_token.
    assert buy(auth_pipeline, None, victim).headers["WWW-Authenticate"] == "Bearer"
    assert 'error="invalid_token"' in buy(auth_pipeline, bearer("a.b.c"), victim).headers["WWW-Authenticate"]
    assert end_offsets(auth_pipeline.stack.kafka_bootstrap, auth_pipeline.topic) == before
    assert stored(auth_pipeline, victim) == []


def test_another_users_data_is_403_and_produces_nothing(auth_pipeline):
    owner, other = user(), user()
    before = end_offsets(auth_pipeline.stack.kafka_bootstrap, auth_pipeline.topic)
    stranger = bearer(auth_pipeline.provider.token(other))
    answer = buy(auth_pipeline, stranger, owner)
    assert answer.status_code == 403 and answer.json()["error"]
    assert 'error="insufficient_scope"' in answer.headers["WWW-Authenticate"]
    assert f'scope="{WRITE_ANY_SCOPE}"' in answer.headers["WWW-Authenticate"]
    # A reader's scope does not let it buy.
    assert buy(auth_pipeline, bearer(auth_pipeline.provider.token(other, [READ_ANY_SCOPE])), owner).status_code == 403
    for route in HISTORY_ROUTES:
        answer = history(auth_pipeline, stranger, owner, route)
        assert answer.status_code == 403, (route, answer.text)
        assert f'scope="{READ_ANY_SCOPE}"' in answer.headers["WWW-Authenticate"]
    assert end_offsets(auth_pipeline.stack.kafka_bootstrap, auth_pipeline.topic) == before
    assert stored(auth_pipeline, owner) == []


def test_scopes_let_support_read_and_a_trusted_client_buy_for_anyone(auth_pipeline):
    owner = user()
    client = bearer(auth_pipeline.provider.token("checkout-service", [WRITE_ANY_SCOPE]))
    answer = buy(auth_pipeline, client, owner)
    assert answer.status_code == 202, answer.text
    support = bearer(auth_pipeline.provider.token("support-1", [READ_ANY_SCOPE]))
    wait_until(lambda: len(ids(history(auth_pipeline, support, owner))) == 1, 30, message="support reads it")
    assert stored(auth_pipeline, owner)[0]["boughtBy"] == "checkout-service"


def test_jwks_down_is_503_within_the_timeout_not_401_and_cached_keys_keep_working(auth_pipeline):
    me = user()
    good = bearer(auth_pipeline.provider.token(me))
    assert buy(auth_pipeline, good, me).status_code == 202  # keys fetched by now (at least in one worker)
    rotated = bearer(forged(auth_pipeline.provider, key=STRANGER_KEY, kid="rotated-" + uuid.uuid4().hex[:6], sub=me))
    jwks = auth_pipeline.jwks
    try:
        for down, delay_s in ((True, 0.0), (False, 30.0)):  # refusing, then never answering in time
            jwks.down, jwks.delay_s = down, delay_s
            time.sleep(0.6)  # past AUTH_REFRESH_INTERVAL_S: the next unknown kid fetches
            for send in (lambda: buy(auth_pipeline, rotated, me), lambda: history(auth_pipeline, rotated, me)):
                started = time.monotonic()
                answer = send()
                assert answer.status_code == 503, answer.text
                assert answer.headers["Retry-After"] and "error" in answer.json()
                assert time.monotonic() - started < 4, "a JWKS outage must not hang a request"
    finally:
        jwks.down, jwks.delay_s = False, 0.0
    time.sleep(0.6)
    assert_unauthorized(buy(auth_pipeline, rotated, me), "a stranger's key once the JWKS answers again")
    assert history(auth_pipeline, good, me).status_code == 200


def test_probes_metrics_and_the_contract_stay_open_and_labels_stay_fixed(auth_pipeline):
    for base in (auth_pipeline.buy, auth_pipeline.history):
        for path in ("/healthz", "/metrics", "/openapi.json"):
            assert requests.get(base + path, timeout=10).status_code == 200, (base, path)

    def rejected_reasons() -> set[str]:
        # Each of buy's workers counts its own requests: refuse one more until the worker that
        # answers /metrics is one that refused.
        buy(auth_pipeline, bearer("x" * 20000), "555")
        metrics = requests.get(auth_pipeline.buy + "/metrics", timeout=10).text
        found = {line.split('reason="')[1].split('"')[0] for line in metrics.splitlines()
                 if line.startswith("purchases_rejected_total{")}
        return found if "unauthenticated" in found else set()

    reasons = wait_until(rejected_reasons, 20, 0.05, "a refused token counted as unauthenticated")
    assert reasons <= REJECTED_REASONS | {"method", "not_found", "content_type", "idempotency_key_reused",
                                          "kafka_unavailable"} | {r for r in reasons if r.startswith("invalid_")}


def test_auth_mode_off_is_the_original_open_api_and_says_so(pipeline):
    me = user()
    answer = buy(pipeline, None, me)
    assert answer.status_code == 202, answer.text
    wait_until(lambda: len(ids(history(pipeline, None, me))) == 1, 30, message="stored")
    assert "boughtBy" not in stored(pipeline, me)[0]
    for name in ("buy", "history"):
        assert "AUTH_MODE=off" in (pipeline.log_dir / f"{name}.log").read_text(), name
