"""purchase_common.auth without a provider: who may read and buy for whom, the RFC 6750 header
and challenge, and the verifier's key cache driven by a fake JWKS endpoint and a fake clock."""
from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from purchase_common import auth
from purchase_common.auth import (
    INVALID_REQUEST,
    INVALID_TOKEN,
    READ_ANY_SCOPE,
    WRITE_ANY_SCOPE,
    InvalidToken,
    KeysUnavailable,
    Principal,
    TokenMissing,
    TokenVerifier,
    may_buy_for,
    may_read,
    www_authenticate,
)

ISSUER = "https://id.example/realms/purchase"
AUDIENCE = "purchase-api"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_jwk(key, kid: str, **extra) -> dict:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, **extra}


def signed(claims: dict | None = None, key=RSA_KEY, alg: str = "RS256", kid: str | None = "k1", **overrides) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "555", "iat": now, "nbf": now, "exp": now + 300,
            **(claims or {}), **overrides}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


class FakeIssuer:
    """A JWKS endpoint in memory: counts fetches, can be down."""

    def __init__(self, keys: list[dict]) -> None:
        self.keys = keys
        self.fetches = 0
        self.down = False

    def __call__(self, url: str, timeout_s: float) -> bytes:
        self.fetches += 1
        if self.down:
            raise ConnectionRefusedError(f"{url}: refused")
        return json.dumps({"keys": self.keys}).encode()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier(issuer: FakeIssuer, clock: FakeClock | None = None, **kwargs) -> TokenVerifier:
    # The JWKS tests look at every verification: no verified-token memory unless a test asks for it.
    settings = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": ISSUER + "/jwks", "verified_max": 0, **kwargs}
    return TokenVerifier(fetch=issuer, clock=clock or FakeClock(), **settings)


ALICE = Principal("555")
BOB = Principal("556")
SUPPORT = Principal("support-1", frozenset({READ_ANY_SCOPE}))
SHOP = Principal("shop-backend", frozenset({WRITE_ANY_SCOPE}), client_id="shop")


@pytest.mark.parametrize("principal, user_id, reads, buys", [
    (ALICE, "555", True, True),
    (ALICE, "556", False, False),
    (BOB, "555", False, False),
    (SUPPORT, "555", True, False),
    (SHOP, "555", False, True),
    (Principal("555", frozenset({"purchases:read"})), "556", False, False),  # only the :any scopes widen
    (ALICE, "555 ", False, False),  # the rule compares exact strings; callers pass the canonical userId
])
def test_who_may_read_and_buy_for_whom(principal, user_id, reads, buys):
    assert may_read(principal, user_id) is reads
    assert may_buy_for(principal, user_id) is buys


def test_www_authenticate_is_rfc_6750_and_never_breaks_its_quoting():
    assert www_authenticate() == "Bearer"
    assert www_authenticate(INVALID_TOKEN, "token expired") == \
        'Bearer error="invalid_token", error_description="token expired"'
    assert www_authenticate(realm="purchases") == 'Bearer realm="purchases"'
    hostile = www_authenticate(INVALID_TOKEN, 'a "quoted"\\ line\r\nSet-Cookie: x=1 é')
    assert hostile == 'Bearer error="invalid_token", error_description="a ?quoted?? line??Set-Cookie: x=1 ?"'


@pytest.mark.parametrize("header, error, status", [
    (None, None, 401),
    ("", None, 401),
    ("Basic dXNlcjpwYXNz", None, 401),  # not bearer credentials: a challenge without an error code
    ("Bearer", INVALID_REQUEST, 400),
    ("Bearer ", INVALID_REQUEST, 400),
    ("Bearer a b", INVALID_REQUEST, 400),
])
def test_authorization_headers_without_a_usable_bearer_token(header, error, status):
    with pytest.raises(InvalidToken) as refused:
        auth.bearer_token(header)
    assert (refused.value.error, refused.value.status) == (error, status)
    assert isinstance(refused.value, TokenMissing) is (error is None)
    assert refused.value.challenge == ("Bearer" if error is None else
                                       f'Bearer error="{error}", error_description="{refused.value.description}"')


def test_bearer_scheme_is_case_insensitive():
    assert auth.bearer_token("bearer abc.def.ghi") == auth.bearer_token("Bearer  abc.def.ghi ") == "abc.def.ghi"


@pytest.mark.parametrize("kwargs", [
    {"algorithms": ["HS256"]},
    {"algorithms": ["RS256", "none"]},
    {"algorithms": []},
    {"audience": ""},
    {"audience": []},
    {"discovery_url": ISSUER + "/.well-known/openid-configuration"},  # with jwks_url as well
    {"http_timeout_s": 0},
])
def test_a_verifier_cannot_be_built_unsafe(kwargs):
    with pytest.raises(ValueError):
        verifier(FakeIssuer([]), **kwargs)


def test_valid_tokens_give_the_principal_with_scopes_in_either_claim():
    issuer = FakeIssuer([public_jwk(RSA_KEY, "k1"), public_jwk(EC_KEY, "e1")])
    check = verifier(issuer)
    assert check.verify(signed({"scope": "purchases:read:any openid", "client_id": "cli"})) == \
        Principal("555", frozenset({READ_ANY_SCOPE, "openid"}), "cli")
    assert check.verify(signed({"scp": [WRITE_ANY_SCOPE], "azp": "spa"}, key=EC_KEY, alg="ES256", kid="e1")) == \
        Principal("555", frozenset({WRITE_ANY_SCOPE}), "spa")
    assert check.verify_header("Bearer " + signed(sub="556")).subject == "556"
    assert issuer.fetches == 1


def test_refused_before_any_key_is_fetched():
    issuer = FakeIssuer([public_jwk(RSA_KEY, "k1")])
    check = verifier(issuer)
    deep = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode().rstrip("=")
    for token in ("x" * 16384, jwt.encode({"sub": "555"}, None, algorithm="none"), "not.a.jwt", "a" * 40,
                  f"{deep}.e30.c2ln", "W10.e30.c2ln", "/w.e30.c2ln"):  # nested too deep, a JSON list, bad UTF-8
        with pytest.raises(InvalidToken) as refused:
            check.verify(token)
        assert refused.value.error == INVALID_TOKEN
    assert issuer.fetches == 0


def test_keys_of_the_wrong_kind_in_the_jwks_are_ignored():
    oct_key = {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"}
    encryption_key = public_jwk(RSA_KEY, "enc", use="enc")
    rs512_only = public_jwk(RSA_KEY, "k512", alg="RS512")
    check = verifier(FakeIssuer([oct_key, encryption_key, rs512_only, public_jwk(RSA_KEY, "k1")]))
    for token, why in ((signed(kid="enc"), "not the issuer's"),
                       (signed(kid="k512"), "not the issuer's"),  # RS512 is not allowed by this verifier
                       (signed(kid="k1", alg="RS384"), "not allowed")):
        with pytest.raises(InvalidToken, match=why):
            check.verify(token)
    wide = verifier(FakeIssuer([rs512_only, public_jwk(EC_KEY, "e1")]), algorithms=["RS256", "RS512", "ES256"])
    with pytest.raises(InvalidToken, match="does not match its key"):
        wide.verify(signed(kid="k512", alg="RS256"))  # the key says RS512
    with pytest.raises(InvalidToken, match="does not match its key"):
        wide.verify(signed(kid="e1", alg="RS256"))  # an EC key cannot verify RS256
    assert wide.verify(signed(kid="k512", alg="RS512")).subject == "555"


def test_unknown_kids_refetch_at_most_once_per_interval():
    issuer = FakeIssuer([public_jwk(RSA_KEY, "k1")])
    clock = FakeClock()
    check = verifier(issuer, clock, min_refresh_interval_s=10)
    check.verify(signed())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for n in range(100):  # within the interval of the first fetch: no fetch at all
        with pytest.raises(InvalidToken, match="not the issuer's"):
            check.verify(signed(key=stranger, kid=f"random-{n}"))
    assert issuer.fetches == 1
    clock.now += 10
    for n in range(100):
        with pytest.raises(InvalidToken, match="not the issuer's"):
            check.verify(signed(key=stranger, kid=f"again-{n}"))
    assert issuer.fetches == 2
    # A key the issuer has just published is found by that refetch.
    issuer.keys.append(public_jwk(stranger, "rotated"))
    clock.now += 10
    assert check.verify(signed(key=stranger, kid="rotated")).subject == "555"
    assert issuer.fetches == 3


def test_issuer_down_is_keys_unavailable_and_retried_once_per_interval():
    issuer = FakeIssuer([public_jwk(RSA_KEY, "k1")])
    issuer.down = True
    clock = FakeClock()
    check = verifier(issuer, clock, min_refresh_interval_s=10)
    for _ in range(5):
        with pytest.raises(KeysUnavailable):
            check.verify(signed())
    assert issuer.fetches == 1
    issuer.down = False
    clock.now += 10
    assert check.verify(signed()).subject == "555"


def test_a_stale_cache_keeps_verifying_known_keys_while_the_issuer_is_down():
    issuer = FakeIssuer([public_jwk(RSA_KEY, "k1")])
    clock = FakeClock()
    check = verifier(issuer, clock, cache_ttl_s=60, min_refresh_interval_s=10)
    check.verify(signed())
    issuer.down = True
    clock.now += 61
    assert check.verify(signed()).subject == "555"
    assert issuer.fetches == 2
    with pytest.raises(KeysUnavailable):  # an unknown kid cannot be told apart while it is down
        clock.now += 10
        check.verify(signed(kid="unknown"))


async def _verify_async(check: TokenVerifier, token: str) -> Principal:
    return await check.verify_async(token)


def test_verify_async_matches_verify():
    import asyncio

    issuer = FakeIssuer([public_jwk(RSA_KEY, "k1")])
    check = verifier(issuer)
    assert asyncio.run(_verify_async(check, signed())) == Principal("555")  # first call fetches in a thread
    assert asyncio.run(_verify_async(check, signed())) == Principal("555")
    with pytest.raises(InvalidToken, match="expired"):
        asyncio.run(_verify_async(check, signed(exp=int(time.time()) - 100)))
    assert issuer.fetches == 1


def test_a_verified_token_is_remembered_until_its_exp_or_the_ttl_and_the_memory_is_bounded(monkeypatch):
    issuer = FakeIssuer([public_jwk(RSA_KEY, "k1")])
    wall = FakeClock()
    wall.now = time.time()
    check = verifier(issuer, wall_clock=wall, verified_ttl_s=60, verified_max=2)
    decodes = []
    real_decode = jwt.decode
    monkeypatch.setattr(auth.jwt, "decode", lambda *a, **k: decodes.append(1) or real_decode(*a, **k))
    soon = signed(exp=int(wall.now) + 30)
    later = signed(exp=int(wall.now) + 3600, sub="556")

    assert check.verify(soon).subject == "555" and check.verify(soon).subject == "555"
    assert check.verify(later).subject == "556" and len(decodes) == 2  # each signature checked once
    wall.now += 31  # past soon's exp (but inside the leeway): checked again, not answered from memory
    assert check.verify(soon).subject == "555" and len(decodes) == 3
    wall.now += 30  # past the ttl for later: checked again
    assert check.verify(later).subject == "556" and len(decodes) == 4
    check.verify(signed(sub="557"))
    check.verify(signed(sub="558"))
    assert len(check._verified) == 2  # the oldest entries gave way

    tampered = later[:-4] + ("AAAA" if not later.endswith("AAAA") else "BBBB")
    with pytest.raises(InvalidToken):
        check.verify(tampered)  # another text is another token: never a hit
