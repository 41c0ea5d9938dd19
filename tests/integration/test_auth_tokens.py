"""The token verifier against a real OpenID Connect provider (mock-oauth2-server, devstack/oidc.py).

Real tokens from the provider's token endpoint must verify; every hostile token must be refused
as an InvalidToken carrying RFC 6750's `invalid_token` (never another exception), the JWKS
endpoint being down must be KeysUnavailable within the HTTP timeout, and unknown `kid`s must not
make the verifier fetch the JWKS per request (counted by a proxy in front of the provider).

The provider accepts any client secret, so nothing here relies on a login being refused: the
hostile tokens are forged with PyJWT, most of them with the issuer's own signing key so that
exactly one property is wrong.
"""
from __future__ import annotations

import logging
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from auth_tokens import HOSTILE, STRANGER_KEY, CountingProxy, forged
from purchase_common import config
from purchase_common.auth import (
    INVALID_TOKEN,
    READ_ANY_SCOPE,
    InvalidToken,
    KeysUnavailable,
    Principal,
    TokenVerifier,
    may_buy_for,
    may_read,
    readiness,
    start_verifier,
)
from support import wait_until

from devstack import oidc
from tools.common import free_port

pytestmark = pytest.mark.integration

HTTP_TIMEOUT_S = 1.0


@pytest.fixture(scope="session")
def provider(oidc_provider):
    return oidc_provider


@pytest.fixture
def proxy(provider):
    counting = CountingProxy(provider.base_url)
    yield counting
    counting.close()


def verifier_for(provider, jwks_url: str | None = None, **kwargs) -> TokenVerifier:
    return TokenVerifier(issuer=provider.issuer, audience=oidc.AUDIENCE, jwks_url=jwks_url or provider.jwks_url,
                         http_timeout_s=HTTP_TIMEOUT_S, **kwargs)


@pytest.fixture(scope="session")
def verifier(provider):
    return verifier_for(provider)


def refused(check: TokenVerifier, token: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as caught:
        check.verify(token)
    assert caught.value.error == INVALID_TOKEN and caught.value.status == 401
    assert caught.value.challenge.startswith('Bearer error="invalid_token", error_description="')
    return caught.value


# --- real tokens ----------------------------------------------------------------------------------

def test_a_real_token_verifies_as_its_subject_with_its_scopes(provider, verifier):
    assert verifier.verify(provider.token("555")) == Principal("555", frozenset(), oidc.CLIENT_ID)
    assert verifier.verify(provider.token("support-1", [READ_ANY_SCOPE])) == \
        Principal("support-1", frozenset({READ_ANY_SCOPE}), oidc.CLIENT_ID)


def test_discovery_finds_the_same_keys(provider):
    check = TokenVerifier(issuer=provider.issuer, audience=oidc.AUDIENCE, discovery_url=provider.discovery_url,
                          http_timeout_s=HTTP_TIMEOUT_S)
    assert check.verify(provider.token("555")).subject == "555"
    other = TokenVerifier(issuer=provider.issuer + "-not", audience=oidc.AUDIENCE,
                          discovery_url=provider.discovery_url, http_timeout_s=HTTP_TIMEOUT_S)
    with pytest.raises(KeysUnavailable, match="not the issuer"):  # discovery of another issuer is not trusted
        other.verify(provider.token("555"))


def test_another_users_token_verifies_but_grants_nothing_on_their_data(provider, verifier):
    bob = verifier.verify(provider.token("556"))
    assert not may_read(bob, "555") and not may_buy_for(bob, "555")
    assert may_read(bob, "556") and may_buy_for(bob, "556")
    support = verifier.verify(provider.token("support-1", [READ_ANY_SCOPE]))
    assert may_read(support, "555") and not may_buy_for(support, "555")


# --- the hostile table ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_tokens_are_refused_as_invalid_token(provider, verifier, case):
    make, why = HOSTILE[case]
    assert why in refused(verifier, make(provider)).description


def test_unknown_kid_refetches_once_then_refuses(provider, proxy):
    check = verifier_for(provider, proxy.url + "/purchase/jwks", min_refresh_interval_s=1.0)
    check.verify(provider.token("555"))
    assert proxy.hits["/purchase/jwks"] == 1
    time.sleep(1.1)
    assert "not the issuer's" in refused(check, forged(provider, key=STRANGER_KEY, kid="attacker-1")).description
    assert proxy.hits["/purchase/jwks"] == 2
    assert "not the issuer's" in refused(check, forged(provider, key=STRANGER_KEY, kid="attacker-2")).description
    assert proxy.hits["/purchase/jwks"] == 2  # within the interval: no second refetch


def test_a_burst_of_random_kids_costs_a_bounded_number_of_fetches(provider, proxy):
    interval = 0.5
    check = verifier_for(provider, proxy.url + "/purchase/jwks", min_refresh_interval_s=interval)
    check.verify(provider.token("555"))
    time.sleep(interval)  # the next unknown kid may refetch: the burst starts with a refetch allowed
    tokens = [forged(provider, key=STRANGER_KEY, kid=f"random-{n}") for n in range(100)]
    started = time.monotonic()

    def attempt(token: str) -> str:
        try:
            check.verify(token)
        except InvalidToken as exc:
            return exc.error or ""
        return "accepted"

    with ThreadPoolExecutor(8) as pool:
        outcomes = Counter(pool.map(attempt, tokens))
    elapsed = time.monotonic() - started
    assert outcomes == {INVALID_TOKEN: 100}
    assert 2 <= proxy.hits["/purchase/jwks"] <= 2 + int(elapsed / interval) + 1, (proxy.hits, elapsed)
    assert check.verify(provider.token("555")).subject == "555"  # the real key is still cached


def test_jwks_endpoint_refusing_connections_is_unavailable_within_the_timeout(provider):
    check = verifier_for(provider, f"http://127.0.0.1:{free_port()}/purchase/jwks")
    token = provider.token("555")
    started = time.monotonic()
    with pytest.raises(KeysUnavailable):
        check.verify(token)
    assert time.monotonic() - started < HTTP_TIMEOUT_S + 0.5
    started = time.monotonic()
    with pytest.raises(KeysUnavailable):  # within the refresh interval: at once, no second wait
        check.verify(token)
    assert time.monotonic() - started < 0.1


def test_jwks_endpoint_that_never_answers_is_unavailable_within_the_timeout(provider):
    # A listener that never accepts: the connection completes in the kernel, no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        check = verifier_for(provider, f"http://127.0.0.1:{silent.getsockname()[1]}/purchase/jwks")
        started = time.monotonic()
        with pytest.raises(KeysUnavailable):
            check.verify(provider.token("555"))
        assert time.monotonic() - started < 2 * HTTP_TIMEOUT_S + 0.5


def test_provider_going_down_keeps_cached_keys_and_refuses_unknown_ones_as_unavailable(provider, proxy):
    check = verifier_for(provider, proxy.url + "/purchase/jwks", cache_ttl_s=0.5, min_refresh_interval_s=0.5)
    check.verify(provider.token("555"))
    proxy.down = True
    time.sleep(0.6)
    assert check.verify(provider.token("556")).subject == "556"  # stale cache, refresh failed: still verifies
    assert proxy.hits["/purchase/jwks"] == 2
    time.sleep(0.6)
    with pytest.raises(KeysUnavailable):
        check.verify(forged(provider, key=STRANGER_KEY, kid="rotated-while-down"))
    proxy.down = False
    time.sleep(0.6)
    rotated = forged(provider, key=STRANGER_KEY, kid="rotated-while-down")
    assert "not the issuer's" in refused(check, rotated).description


def test_a_function_started_while_the_provider_is_down_is_ready_soon_after_it_answers(provider, proxy):
    """What buy and history do at start (start_verifier) and report as readiness: not Ready
    without keys, retried in the background well within AUTH_REFRESH_INTERVAL_S, Ready once
    the provider answers, and still Ready when it goes down again."""
    proxy.down = True
    settings = config.Settings(auth_mode="jwt", auth_issuer=provider.issuer, auth_audience=oidc.AUDIENCE,
                               auth_jwks_url=proxy.url + "/purchase/jwks", auth_http_timeout_s=HTTP_TIMEOUT_S,
                               auth_refresh_interval_s=60.0)
    check = start_verifier(settings, logging.getLogger("test"))
    wait_until(lambda: proxy.hits["/purchase/jwks"] >= 2, 5, 0.05, "a second try while the provider is down")
    assert readiness(check) == {"issuer_keys": False}
    with pytest.raises(KeysUnavailable):
        check.verify(provider.token("555"))
    proxy.down = False
    answered = time.monotonic()
    wait_until(lambda: readiness(check)["issuer_keys"], 10, 0.05, "keys fetched after the provider came back")
    assert time.monotonic() - answered < 8, "the background retry, not the next request, fetched the keys"
    assert check.verify(provider.token("555")).subject == "555"
    tries = proxy.hits["/purchase/jwks"]
    proxy.down = True
    time.sleep(0.6)
    assert readiness(check) == {"issuer_keys": True} and proxy.hits["/purchase/jwks"] == tries, \
        "the retry stops at the first success; an outage afterwards unreadies nothing"
    assert readiness(None) == {}, "AUTH_MODE=off has no token condition"


def test_provider_restart_on_its_folder_keeps_its_key(provider, tmp_path):
    second = oidc.start(tmp_path / "second")
    try:
        token = second.token("555")
        key_before = second.signing_jwk()
    finally:
        second.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(second.jwks_url, timeout=2)
    again = oidc.start(tmp_path / "second", port=second.process.port)
    try:
        assert again.signing_jwk() == key_before
        assert verifier_for(again).verify(token).subject == "555"
    finally:
        again.stop()
