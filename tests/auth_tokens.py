"""Tokens for the auth tests, hostile ones above all: forged with PyJWT (most with the issuer's
own signing key, so that exactly one property is wrong), and a proxy in front of the provider's
JWKS that counts fetches and can play the provider being down. Shared by the verifier's tests
(tests/integration/test_auth_tokens.py) and the functions' (test_auth_http.py)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack import oidc

STRANGER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class CountingProxy:
    """A plain HTTP forwarder in front of the provider that counts the GETs per path and can
    pretend the provider is down (answering 503) or slow (delay_s)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.hits: Counter[str] = Counter()
        self.down = False
        self.delay_s = 0.0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                proxy.hits[self.path] += 1
                time.sleep(proxy.delay_s)  # a provider that answers late, or (long enough) never
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


# The hostile table: each case -> (make(provider) -> token, the refusal's description).
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
