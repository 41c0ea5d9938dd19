"""Bearer tokens (RFC 6750) from an OpenID Connect provider: who is calling, and what they may do.

`TokenVerifier.verify(token)` checks a JWT access token against the issuer's published keys
(its JWKS) and returns the caller as a `Principal`; `may_read` / `may_buy_for` are the rules of
issue 25; `www_authenticate` builds the challenge a 401 (or 403) carries.

What a caller gets back, so the functions can answer without knowing JWT:
- `InvalidToken` (`.error` is RFC 6750's `invalid_token` or `invalid_request`, `.status` 401 or
  400, `.description` a fixed sentence that never echoes the token): refuse the request;
- `TokenMissing` (a subclass, `.error` None): no bearer credentials at all, RFC 6750 §3.1's
  challenge without an error code;
- `KeysUnavailable`: the issuer's JWKS could not be fetched and no usable key is cached. The
  caller is not at fault, so it is a 503, answered within the bounded HTTP timeout.

Why PyJWT and not joserfc/authlib: PyJWT does only JWS-signed JWTs, which is all an access
token needs, has one dependency (`cryptography`, for RSA/EC), is typed, and is the JWT library
most Python services already run. Since 2.10 it refuses a token whose `alg` differs from the
key's (`PyJWK` binds one algorithm), which closes the RS256/HS256 key-confusion hole in the
library itself as well as here. joserfc (authlib's successor for JOSE) also covers JWE and
more JWK machinery than this needs, and authlib brings an OAuth client/server framework. Both
would do; PyJWT is the smaller surface. Its own `PyJWKClient` is not used: its refetch on an
unknown `kid` is not rate-limited, and it raises one error for "JWKS down" and "bad token".

The JWKS is fetched once, cached, refetched when older than `cache_ttl_s` or when a token names
an unknown `kid`, but never more often than once per `min_refresh_interval_s`, successful or
not: a burst of tokens with random `kid`s costs at most one fetch per interval, and a JWKS
endpoint that is down costs one bounded wait per interval, every other request failing at once.
When a refresh fails, keys already cached keep verifying (keys rotate rarely; an outage of the
provider should not log everyone out).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from .config import Settings

log = logging.getLogger(__name__)

READ_ANY_SCOPE = "purchases:read:any"
WRITE_ANY_SCOPE = "purchases:write:any"

INVALID_TOKEN = "invalid_token"
INVALID_REQUEST = "invalid_request"
INSUFFICIENT_SCOPE = "insufficient_scope"

# Asymmetric algorithms only: HMAC would let anyone holding the (public) JWKS sign, and `none`
# signs nothing. An allow-list given to TokenVerifier must be a subset of this.
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
DEFAULT_ALGORITHMS = ("RS256", "ES256")
# Which algorithms a key of each type (and curve) can verify: a token's header picks among them.
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHM_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}

# Real access tokens are well under 2 KiB; anything past this cap is refused before any parsing
# (base64 and JSON decoding of attacker-sized input is the work this avoids).
DEFAULT_MAX_TOKEN_CHARS = 8192
# Verified tokens kept per process (an entry is one token's text and its caller) and for how long.
VERIFIED_MAX = 4096
VERIFIED_TTL_S = 60.0
# A JWKS is a few keys; a bigger answer is not one.
MAX_JWKS_BYTES = 256 * 1024
# The characters RFC 6750 §3 allows inside error_description and scope values.
_CHALLENGE_SAFE = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}


@dataclass(frozen=True)
class Principal:
    """The verified caller: the token's subject, its scopes and (when the token says) the client."""

    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    client_id: str | None = None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


class AuthError(Exception):
    """Any refusal or failure of authentication."""


class InvalidToken(AuthError):
    """The request's credentials are refused: answer `status` with `WWW-Authenticate` built from
    `error` and `description`."""

    def __init__(self, description: str, error: str | None = INVALID_TOKEN) -> None:
        super().__init__(description)
        self.error = error
        self.description = description

    @property
    def status(self) -> int:
        # RFC 6750 §3.1: a malformed request is a 400, a bad or missing token a 401.
        return 400 if self.error == INVALID_REQUEST else 401

    @property
    def challenge(self) -> str:
        return www_authenticate(self.error, self.description if self.error else None)


class TokenMissing(InvalidToken):
    """No bearer credentials: RFC 6750 §3.1 says the challenge carries no error code then."""

    def __init__(self, description: str = "bearer token required") -> None:
        super().__init__(description, error=None)


class KeysUnavailable(AuthError):
    """The issuer's keys cannot be fetched (and none cached fits): a 503, not the caller's fault."""


def may_read(principal: Principal, user_id: str) -> bool:
    """History: a user reads their own purchases; support staff (READ_ANY_SCOPE) read anyone's."""
    return principal.subject == user_id or principal.has_scope(READ_ANY_SCOPE)


def may_buy_for(principal: Principal, user_id: str) -> bool:
    """Buy: a user buys in their own name; a trusted client (WRITE_ANY_SCOPE) for anyone."""
    return principal.subject == user_id or principal.has_scope(WRITE_ANY_SCOPE)


def _challenge_value(text: str) -> str:
    # Anything outside RFC 6750's character set would break the header's quoting.
    return "".join(ch if ch in _CHALLENGE_SAFE else "?" for ch in text)


def www_authenticate(
    error: str | None = None, description: str | None = None, *, realm: str | None = None, scope: str | None = None
) -> str:
    """The `WWW-Authenticate` value of RFC 6750 §3: `Bearer error="…", error_description="…"`."""
    params = [
        (name, value)
        for name, value in (("realm", realm), ("error", error), ("error_description", description), ("scope", scope))
        if value is not None
    ]
    if not params:
        return "Bearer"
    return "Bearer " + ", ".join(f'{name}="{_challenge_value(value)}"' for name, value in params)


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header value (RFC 6750 §2.1)."""
    if authorization is None or not authorization.strip():
        raise TokenMissing()
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise TokenMissing("bearer token required")
    token = rest.strip()
    if not token or any(ch.isspace() for ch in token):
        raise InvalidToken("malformed Authorization header", INVALID_REQUEST)
    return token


Fetch = Callable[[str, float], bytes]


def http_get(url: str, timeout_s: float) -> bytes:
    """GET url, the whole exchange bounded by timeout_s (each socket wait by what remains of it)."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{url}: no complete answer within {timeout_s}s")
            chunk = response.read1(16384)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_JWKS_BYTES:
                raise ValueError(f"{url}: answer larger than {MAX_JWKS_BYTES} bytes")
            chunks.append(chunk)


def _header(token: str) -> dict[str, Any]:
    """The JOSE header of a compact JWS, to pick the key: only its first segment is decoded
    (PyJWT's get_unverified_header decodes all three, and decode does it again). Nothing in it
    is trusted: jwt.decode parses and checks the whole token afterwards."""
    segments = token.split(".")
    if len(segments) != 3:
        raise InvalidToken("malformed token")
    try:
        header = json.loads(base64.urlsafe_b64decode(segments[0] + "=" * (-len(segments[0]) % 4)))
    except (ValueError, binascii.Error, RecursionError) as exc:  # bad base64, UTF-8 or JSON; JSON nested too deep
        raise InvalidToken("malformed token") from exc
    if not isinstance(header, dict):
        raise InvalidToken("malformed token")
    return header


class _BadDocument(ValueError):
    """A discovery document or JWKS that is not one."""


class _NeedsFetch(Exception):
    """Raised inside verification when only a JWKS fetch can tell."""


class TokenVerifier:
    """Verifies access tokens of one issuer for one API (audience), keys from the issuer's JWKS.

    Built from plain values so the functions decide where they come from. Give `jwks_url`, or
    `discovery_url` (the issuer's `/.well-known/openid-configuration`, whose `issuer` must equal
    `issuer` and whose `jwks_uri` is used). Thread-safe; `verify_async` keeps an event loop free.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | Sequence[str],
        jwks_url: str | None = None,
        discovery_url: str | None = None,
        leeway_s: float = 30.0,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        http_timeout_s: float = 2.0,
        min_refresh_interval_s: float = 10.0,
        cache_ttl_s: float = 600.0,
        max_token_chars: int = DEFAULT_MAX_TOKEN_CHARS,
        verified_ttl_s: float = VERIFIED_TTL_S,
        verified_max: int = VERIFIED_MAX,
        fetch: Fetch = http_get,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer:
            raise ValueError("issuer is required")
        if (jwks_url is None) == (discovery_url is None):
            raise ValueError("give exactly one of jwks_url and discovery_url")
        allowed = frozenset(algorithms)
        if not allowed or not allowed <= ASYMMETRIC_ALGORITHMS:
            raise ValueError(
                f"algorithms must be a non-empty subset of {sorted(ASYMMETRIC_ALGORITHMS)}, not {sorted(allowed)}"
            )
        audiences = [audience] if isinstance(audience, str) else list(audience)
        if not audiences or not all(audiences):
            raise ValueError("audience is required")
        if http_timeout_s <= 0 or leeway_s < 0 or min_refresh_interval_s < 0 or cache_ttl_s <= 0:
            raise ValueError("timeouts and intervals must be positive")
        self.issuer = issuer
        self.audience = audiences
        self.algorithms = allowed
        self.leeway_s = leeway_s
        self.http_timeout_s = http_timeout_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self.cache_ttl_s = cache_ttl_s
        self.max_token_chars = max_token_chars
        self._discovery_url = discovery_url
        self._jwks_url = jwks_url
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._jwks: dict[str | None, dict[str, Any]] = {}
        self._keys: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_failure: str | None = None
        self.fetch_count = 0
        # Tokens already verified, by their exact text: a client sends the same token with every
        # request until it expires, and checking a signature costs more than the rest of a
        # purchase. The text is what was signed, so a hit can only be that same token; an entry
        # lives until the token's exp or verified_ttl_s, whichever comes first, so a key the
        # issuer withdraws stops being honoured within verified_ttl_s.
        self.verified_ttl_s = verified_ttl_s
        self.verified_max = verified_max
        self._wall_clock = wall_clock
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._verified_lock = threading.Lock()

    # --- keys --------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Fetch the JWKS now (e.g. at start, so the first request does not wait for it);
        KeysUnavailable when it cannot be fetched."""
        if not self._lock.acquire(timeout=self._lock_wait_s()):
            raise KeysUnavailable("the issuer's keys are being fetched; try again")
        try:
            self._refresh_locked()
        finally:
            self._lock.release()

    def has_keys(self) -> bool:
        """Whether a JWKS was ever fetched: a process without one can verify no token (readiness).
        Kept through later failed refreshes, so an outage of the provider unreadies nothing."""
        return self._fetched_at is not None

    def _lock_wait_s(self) -> float:
        # A discovery document and a JWKS, each bounded, plus slack: a waiter never hangs longer.
        return 2 * self.http_timeout_s + 1

    def _refresh_locked(self) -> None:
        self._attempted_at = self._clock()
        self.fetch_count += 1
        try:
            jwks_url = self._jwks_url or self._discover()
            document = json.loads(self._fetch(jwks_url, self.http_timeout_s))
            keys = document.get("keys") if isinstance(document, dict) else None
            if not isinstance(keys, list):
                raise _BadDocument("no 'keys' list in the JWKS")
        except (OSError, ValueError, urllib.error.URLError) as exc:
            # OSError covers refused connections and timeouts; ValueError bad JSON and bad documents.
            self._last_failure = f"{type(exc).__name__}: {exc}"
            log.warning("JWKS of %s not fetched: %s", self.issuer, self._last_failure)
            raise KeysUnavailable(f"the issuer's keys could not be fetched ({self._last_failure})") from exc
        self._jwks = {key.get("kid"): key for key in keys if self._usable(key)}
        self._keys = {}
        self._fetched_at = self._attempted_at
        self._last_failure = None

    def _discover(self) -> str:
        assert self._discovery_url is not None
        document = json.loads(self._fetch(self._discovery_url, self.http_timeout_s))
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            # OpenID Connect Discovery §4.3: the document must be the configured issuer's.
            raise _BadDocument(f"the discovery document at {self._discovery_url} is not the issuer {self.issuer}'s")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise _BadDocument(f"no jwks_uri in {self._discovery_url}")
        self._jwks_url = jwks_uri
        return jwks_uri

    def _usable(self, key: Any) -> bool:
        """A signing key of a type the allow-list can use (an `oct` key, for one, never is)."""
        if not isinstance(key, dict) or key.get("use", "sig") != "sig":
            return False
        if key.get("kid") is not None and not isinstance(key.get("kid"), str):
            return False
        return bool(self._algorithms_of(key) & self.algorithms)

    @staticmethod
    def _algorithms_of(key: dict[str, Any]) -> frozenset[str]:
        if key.get("kty") == "RSA":
            family = _RSA_ALGORITHMS
        elif key.get("kty") == "EC" and key.get("crv") in _EC_ALGORITHM_BY_CURVE:
            family = frozenset({_EC_ALGORITHM_BY_CURVE[key["crv"]]})
        else:
            return frozenset()
        declared = key.get("alg")
        if declared is None:
            return family
        return family & {declared} if isinstance(declared, str) else frozenset()

    def _known(self, kid: str | None) -> bool:
        # A token without kid is matched to an issuer's only key.
        return kid in self._jwks or (kid is None and len(self._jwks) == 1)

    def _stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= self.cache_ttl_s

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self.min_refresh_interval_s

    def _key(self, kid: str | None, alg: str, allow_fetch: bool) -> jwt.PyJWK:
        now = self._clock()
        if self._stale(now) or not self._known(kid):
            # Due for a fetch, or one under way (the one at start, say): its outcome decides.
            if self._may_fetch(now) or self._lock.locked():
                if not allow_fetch:
                    raise _NeedsFetch()
                self._refresh_if_due(kid)
            elif self._fetched_at is None or (self._last_failure is not None and not self._known(kid)):
                # Never fetched, or a kid only a fetch could tell and the last try failed moments
                # ago: fail fast (503), no new wait, and no 401 for what may be the issuer's new key.
                raise KeysUnavailable(f"the issuer's keys could not be fetched ({self._last_failure})")
        jwk = self._jwks.get(kid)
        if jwk is None and kid is None and len(self._jwks) == 1:
            jwk = next(iter(self._jwks.values()))  # a token without kid, an issuer with one key
        if jwk is None:
            raise InvalidToken("the token's signing key is not the issuer's")
        if alg not in self._algorithms_of(jwk):
            raise InvalidToken("the token's algorithm does not match its key")
        cached = self._keys.get((kid, alg))
        if cached is None:
            try:
                cached = jwt.PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError as exc:
                raise InvalidToken("the token's signing key is not usable") from exc
            self._keys[(kid, alg)] = cached
        return cached

    def _refresh_if_due(self, kid: str | None) -> None:
        if not self._lock.acquire(timeout=self._lock_wait_s()):
            raise KeysUnavailable("the issuer's keys are being fetched; try again")
        try:
            # Another thread may have fetched while this one waited for the lock.
            if self._may_fetch(self._clock()):
                try:
                    self._refresh_locked()
                except KeysUnavailable:
                    if self._fetched_at is None or not self._known(kid):
                        raise
                    # A known key of a stale cache keeps verifying while the provider is down.
            elif self._fetched_at is None or (self._last_failure is not None and not self._known(kid)):
                raise KeysUnavailable(f"the issuer's keys could not be fetched ({self._last_failure})")
        finally:
            self._lock.release()

    # --- tokens ------------------------------------------------------------------------------

    def verify(self, token: str) -> Principal:
        """The caller of a valid token; InvalidToken or KeysUnavailable otherwise. May wait for
        one JWKS fetch (at most about http_timeout_s)."""
        return self._verify(token, allow_fetch=True)

    def verify_header(self, authorization: str | None) -> Principal:
        """`verify` of an `Authorization` header's bearer token (TokenMissing when there is none)."""
        return self.verify(bearer_token(authorization))

    async def verify_async(self, token: str) -> Principal:
        """`verify` for an event loop: the cached path runs inline (no thread hop per request);
        only a verification that needs a JWKS fetch runs in a worker thread."""
        try:
            return self._verify(token, allow_fetch=False)
        except _NeedsFetch:
            return await asyncio.to_thread(self._verify, token, True)

    def _verify(self, token: str, allow_fetch: bool) -> Principal:
        if not isinstance(token, str) or not token:
            raise TokenMissing()
        if len(token) > self.max_token_chars:
            raise InvalidToken("token too long")
        now = self._wall_clock()
        with self._verified_lock:
            hit = self._verified.get(token)
            if hit is not None:
                if now < hit[1]:
                    self._verified.move_to_end(token)
                    return hit[0]
                del self._verified[token]
        principal, expires_at = self._verify_signed(token, allow_fetch)
        if self.verified_max > 0:
            with self._verified_lock:
                self._verified[token] = (principal, min(expires_at, now + self.verified_ttl_s))
                while len(self._verified) > self.verified_max:
                    self._verified.popitem(last=False)
        return principal

    def _verify_signed(self, token: str, allow_fetch: bool) -> tuple[Principal, float]:
        header = _header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken("token algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed token")
        key = self._key(kid, alg, allow_fetch)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"], "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("token not yet valid") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken("token of another issuer") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken("token not meant for this API") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"token lacks the {exc.claim} claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("token signature does not verify") from exc
        except jwt.DecodeError as exc:
            raise InvalidToken("malformed token") from exc
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError) as exc:
            # Whatever else the library refuses (a bad iat, a crit header, a short key) is a bad token.
            raise InvalidToken("token rejected") from exc
        return self._principal(claims), float(claims["exp"])

    @staticmethod
    def _principal(claims: dict[str, Any]) -> Principal:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("token lacks a subject")
        scopes: set[str] = set()
        # RFC 8693/9068 say `scope`, a space-separated string; some providers send `scp`, a list.
        for claim in ("scope", "scp"):
            value = claims.get(claim)
            if isinstance(value, str):
                scopes.update(value.split())
            elif isinstance(value, list):
                scopes.update(item for item in value if isinstance(item, str))
        client_id = claims.get("client_id", claims.get("azp"))
        return Principal(subject, frozenset(scopes), client_id if isinstance(client_id, str) else None)


MODES = ("jwt", "off")


def verifier_from(settings: Settings) -> TokenVerifier | None:
    """The verifier the AUTH_* settings describe; None for AUTH_MODE=off (no tokens asked for).
    A mode or issuer that cannot work is a ValueError: the function fails its start."""
    s = settings
    if s.auth_mode not in MODES:
        raise ValueError(f"AUTH_MODE must be one of {', '.join(MODES)}, not {s.auth_mode!r}")
    if s.auth_mode == "off":
        return None
    if not s.auth_issuer:
        raise ValueError("AUTH_MODE=jwt needs AUTH_ISSUER")
    return TokenVerifier(
        issuer=s.auth_issuer,
        audience=s.auth_audience,
        jwks_url=s.auth_jwks_url or None,
        discovery_url=None if s.auth_jwks_url else s.auth_issuer.rstrip("/") + "/.well-known/openid-configuration",
        algorithms=[name.strip() for name in s.auth_algorithms.split(",") if name.strip()],
        leeway_s=s.auth_leeway_s,
        http_timeout_s=s.auth_http_timeout_s,
        min_refresh_interval_s=s.auth_refresh_interval_s,
        max_token_chars=s.auth_max_token_chars,
    )


PREFETCH_FIRST_RETRY_S = 0.5


def readiness(verifier: TokenVerifier | None) -> dict[str, bool]:
    """A function's readiness condition for tokens: the issuer's keys fetched once (none with
    AUTH_MODE=off). Never lost again, so the provider going down takes no pod out of rotation."""
    return {} if verifier is None else {"issuer_keys": verifier.has_keys()}


def start_verifier(settings: Settings, logger: logging.Logger) -> TokenVerifier | None:
    """A function's verifier at start: built from settings, its keys fetched in the background
    until they come (the first request should not wait for them, and a provider down must not
    stop the start; the function is Ready once `has_keys`).
    AUTH_MODE=off says loudly that the API is open."""
    verifier = verifier_from(settings)
    if verifier is None:
        logger.warning(
            "AUTH_MODE=off: no bearer token is asked for; anyone who reaches this function acts as any user. "
            "Set AUTH_MODE=jwt and AUTH_ISSUER unless this is the original API on a trusted network"
        )
        return None

    def prefetch() -> None:
        # Until the first fetch succeeds, retried sooner than requests would (they wait out
        # AUTH_REFRESH_INTERVAL_S after a failure): a pod that started while the provider was slow
        # or down is Ready (has_keys) within a backoff step of it answering.
        delay_s = PREFETCH_FIRST_RETRY_S
        while not verifier.has_keys():  # a request's own fetch may have got them first
            try:
                verifier.refresh()
            except KeysUnavailable:  # logged by refresh; requests answer 503 until a fetch succeeds
                time.sleep(delay_s)
                delay_s = min(2 * delay_s, max(verifier.min_refresh_interval_s, PREFETCH_FIRST_RETRY_S))

    threading.Thread(target=prefetch, name="jwks-prefetch", daemon=True).start()
    logger.info("bearer tokens required: issuer %s, audience %s", verifier.issuer, ",".join(verifier.audience))
    return verifier
