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

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from purchase_common.auth import (
    INVALID_TOKEN,
    READ_ANY_SCOPE,
    InvalidToken,
    KeysUnavailable,
    Principal,
    TokenVerifier,
    may_buy_for,
    may_read,
)

from devstack import oidc
from tools.common import free_port

pytestmark = pytest.mark.integration

HTTP_TIMEOUT_S = 1.0
STRANGER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def provider(tmp_path_factory):
    started = oidc.start(tmp_path_factory.mktemp("oidc"))
    yield started
    started.stop()


class CountingProxy:
    """A plain HTTP forwarder in front of the provider that counts the GETs per path and can
    pretend the provider is down (answering 503)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.hits: Counter[str] = Counter()
        self.down = False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                proxy.hits[self.path] += 1
                if proxy.down:
                    self.send_error(503)
                    return
                with urllib.request.urlopen(proxy.upstream + self.path, timeout=5) as answer:
                    body = answer.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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


def forged(provider, key=None, alg: str = "RS256", kid: str | None = oidc.ISSUER_ID, **claims) -> str:
    """A token signed with the issuer's own key (or `key`), with these claims changed."""
    now = int(time.time())
    body = {"iss": provider.issuer, "aud": oidc.AUDIENCE, "sub": "555", "iat": now, "nbf": now, "exp": now + 300,
            **claims}
    body = {name: value for name, value in body.items() if value is not None}
    signing_key = key if key is not None else jwt.PyJWK(provider.signing_jwk(), algorithm=alg).key
    return jwt.encode(body, signing_key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def with_parts(token: str, header: dict | None = None, payload: dict | None = None) -> str:
    """The token with its header or payload replaced, its signature kept."""
    parts = token.split(".")
    for index, part in ((0, header), (1, payload)):
        if part is not None:
            parts[index] = b64(json.dumps(part).encode())
    return ".".join(parts)


def hs256_with_public_key(provider) -> str:
    """The key-confusion attack: HS256 keyed with the issuer's RSA public key (PEM), which anyone
    can download from the JWKS. PyJWT refuses to make one, so it is made by hand."""
    public_pem = jwt.PyJWK(provider.signing_jwk(), algorithm="RS256").key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    signing_input = (b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": oidc.ISSUER_ID}).encode()) + "."
                     + b64(json.dumps({"iss": provider.issuer, "aud": oidc.AUDIENCE, "sub": "555",
                                       "exp": now + 300}).encode()))
    return signing_input + "." + b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())


def unsigned(provider) -> str:
    return jwt.encode({"iss": provider.issuer, "aud": oidc.AUDIENCE, "sub": "555", "exp": int(time.time()) + 300},
                      None, algorithm="none")


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

HOSTILE = {
    "expired": (lambda p: forged(p, exp=int(time.time()) - 120), "token expired"),
    "not yet valid": (lambda p: forged(p, nbf=int(time.time()) + 300), "token not yet valid"),
    "issued in the future": (lambda p: forged(p, iat=int(time.time()) + 300), "token not yet valid"),
    "without exp": (lambda p: forged(p, exp=None), "lacks the exp claim"),
    "without sub": (lambda p: forged(p, sub=None), "lacks the sub claim"),
    "wrong issuer": (lambda p: forged(p, iss=p.issuer.replace("/purchase", "/other")), "token of another issuer"),
    "another issuer of the provider": (lambda p: oidc.request_token(p.base_url + "/other/token", "555"),
                                       "not the issuer's"),
    "wrong audience": (lambda p: p.token("555", audience="another-api"), "not meant for this API"),
    "alg none": (unsigned, "algorithm not allowed"),
    "HS256 keyed with the RSA public key": (hs256_with_public_key, "algorithm not allowed"),
    "issuer's kid, a stranger's key": (lambda p: forged(p, key=STRANGER_KEY), "signature does not verify"),
    "signature of another token": (lambda p: p.token("555").rsplit(".", 1)[0] + "." + p.token("556").rsplit(".", 1)[1],
                                   "signature does not verify"),
    "claims swapped under a valid signature": (
        lambda p: with_parts(p.token("555"), payload={"sub": "556", "iss": p.issuer, "aud": oidc.AUDIENCE,
                                                       "exp": int(time.time()) + 300}), "signature does not verify"),
    "malformed: not a JWT": (lambda p: "not-a-token", "malformed token"),
    "malformed: three garbage parts": (lambda p: "a.b.c", "malformed token"),
    "malformed: header is not JSON": (lambda p: b64(b"{not json") + ".e30.sig", "malformed token"),
    "malformed: kid is a number": (lambda p: with_parts(forged(p), header={"alg": "RS256", "kid": 7}),
                                   "malformed token"),
    "16 KiB long": (lambda p: forged(p, padding="x" * 16384), "token too long"),
    "16 KiB of junk": (lambda p: "e" * 16384, "token too long"),
}


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
