"""The OpenID Connect provider of local runs and tests: NAV's mock-oauth2-server, a real OIDC
server (discovery, JWKS, signed JWTs) made for tests, from Maven Central.

It runs on the installed Java 17, from jars cached outside the clone (tools.common.CACHE_DIR),
on 127.0.0.1 and a free port, and is stopped by PID like every other server of the stack.

One issuer, `ISSUER_ID`: `<base>/purchase`, with its discovery document at
`<issuer>/.well-known/openid-configuration` and its keys at `<issuer>/jwks`. Its RS256 signing key
is generated here into the data folder (`signing-key.jwk`) and handed to the server, so it is
this run's own key, not the one baked into the server's jar, and survives a restart of the
provider on the same folder (tokens already handed out keep verifying).

A token for a given subject, audience and scopes comes from the token endpoint with the OAuth 2
client-credentials grant; `JSON_CONFIG`'s request mappings turn the request's form parameters into
claims:

    POST <issuer>/token   (application/x-www-form-urlencoded)
    grant_type=client_credentials&client_id=purchase-dev&client_secret=unused
        &subject=555&audience=purchase-api&scope=purchases:read:any

    -> {"access_token": "<JWT: sub=555, aud=purchase-api, scope=..., client_id=purchase-dev>", ...}

The server accepts any client and any secret: the login proves nothing, so tests check what
the verifier verifies (signature, iss, aud, exp, nbf, alg), never that a login was refused.

    python -m devstack.oidc fetch                      # the jars, once
    python -m devstack.oidc serve DIR                  # a provider until Ctrl-C
    python -m devstack.oidc token URL 555 [SCOPE...]   # a token from the provider at URL
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.common import (
    CACHE_DIR,
    Process,
    cached_build,
    fetch_maven_jars,
    free_port,
    serve_until_stopped,
    spawn,
    speaker,
    wait_http,
)

VERSION = "6.0.2"
# The standalone server logs through logback, which its Maven POM leaves out (the server's own
# build adds it to the standalone image only); the version its build uses.
ARTIFACTS = (("no.nav.security", "mock-oauth2-server", VERSION), ("ch.qos.logback", "logback-classic", "1.6.0"))
MAIN_CLASS = "no.nav.security.mock.oauth2.StandaloneMockOAuth2ServerKt"
ISSUER_ID = "purchase"
AUDIENCE = "purchase-api"
CLIENT_ID = "purchase-dev"
TOKEN_EXPIRY_S = 3600
START_TIMEOUT_S = 60.0

say = speaker("oidc")


def fetch() -> Path:
    """The server's jars (with their dependencies), fetched from Maven Central once."""
    if shutil.which("java") is None or shutil.which("mvn") is None:
        raise RuntimeError("mock-oauth2-server needs 'java' (17+) and 'mvn' on PATH")

    def build(work: Path) -> Path:
        return fetch_maven_jars(work, "mock-oauth2-server-runtime", ARTIFACTS)

    return cached_build(CACHE_DIR / f"mock-oauth2-server-{VERSION}", "libs", VERSION,
                        f"fetching mock-oauth2-server {VERSION} from Maven Central", build)


def server_config(signing_jwk: str, expiry_s: int = TOKEN_EXPIRY_S) -> dict[str, Any]:
    """mock-oauth2-server's JSON_CONFIG: our key, and claims taken from the token request."""
    claims = {"sub": "${subject}", "aud": ["${audience}"], "client_id": "${client_id}"}
    return {
        "interactiveLogin": False,
        # Netty: a request per connection in parallel; the default MockWebServer answers one at a time.
        "httpServer": "NettyWrapper",
        "tokenProvider": {"keyProvider": {"algorithm": "RS256", "initialKeys": signing_jwk}},
        "tokenCallbacks": [{
            "issuerId": ISSUER_ID,
            "tokenExpiry": expiry_s,
            # First match wins: a request with scopes gets a scope claim, one without gets none
            # (a missing form parameter would stay an unreplaced "${scope}" in the claim).
            "requestMappings": [
                {"requestParam": "scope", "match": "*", "claims": {**claims, "scope": "${scope}"}},
                {"requestParam": "grant_type", "match": "client_credentials", "claims": claims},
            ],
        }],
    }


def signing_key_jwk(data_dir: Path) -> str:
    """The provider's private RS256 key as a JWK (JSON), made once per data folder."""
    path = data_dir / "signing-key.jwk"
    if path.exists():
        return path.read_text()
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key))
    jwk.update(kid=ISSUER_ID, alg="RS256", use="sig")
    text = json.dumps(jwk)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(path.with_suffix(".tmp"), path)
    return text


def request_token(token_url: str, subject: str, scopes: tuple[str, ...] | list[str] = (),
                  audience: str = AUDIENCE, client_id: str = CLIENT_ID, timeout_s: float = 10.0) -> str:
    """A signed access token from the provider's token endpoint (client-credentials grant)."""
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": "unused",
            "subject": subject, "audience": audience}
    if scopes:
        form["scope"] = " ".join(scopes)
    request = urllib.request.Request(token_url, data=urllib.parse.urlencode(form).encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        answer = json.loads(response.read())
    token = answer.get("access_token")
    if not isinstance(token, str):
        raise RuntimeError(f"{token_url} answered without an access_token: {answer}")
    return token


@dataclass
class Provider:
    """A running provider: where its issuer, keys and token endpoint are, and its process."""
    process: Process
    data_dir: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.process.port}"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/{ISSUER_ID}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    def token(self, subject: str, scopes: tuple[str, ...] | list[str] = (), audience: str = AUDIENCE) -> str:
        return request_token(self.token_url, subject, scopes, audience)

    def signing_jwk(self) -> dict[str, Any]:
        """The issuer's private key (tests sign tokens with it that differ in one claim only)."""
        loaded: dict[str, Any] = json.loads((self.data_dir / "signing-key.jwk").read_text())
        return loaded

    def stop(self, timeout_s: float = 10) -> None:
        self.process.stop(timeout_s)


def start(data_dir: Path, port: int | None = None, timeout_s: float = START_TIMEOUT_S) -> Provider:
    """The provider on 127.0.0.1:port (a free one by default), serving once its discovery answers."""
    libs = fetch()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = data_dir / "oidc-config.json"
    config.write_text(json.dumps(server_config(signing_key_jwk(data_dir)), indent=1))
    log = data_dir / "oidc.log"
    env = {**os.environ, "SERVER_HOSTNAME": "127.0.0.1", "SERVER_PORT": str(port),
           "JSON_CONFIG_PATH": str(config), "LOG_LEVEL": "WARN"}
    env.pop("JSON_CONFIG", None)  # it would take precedence over the file
    # A small test server: a small heap, and the quick JIT tier for a fast start.
    argv = ["java", "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
            "-cp", f"{libs}/*", MAIN_CLASS]
    proc = spawn("oidc", argv, log, env=env, cwd=data_dir)
    process = Process("oidc", proc, port, log, {"issuer": f"http://127.0.0.1:{port}/{ISSUER_ID}"})
    provider = Provider(process, data_dir)
    try:
        wait_http(provider.discovery_url, timeout_s, proc, "mock-oauth2-server", log)
    except BaseException:
        process.stop(5)
        raise
    return provider


def stop(provider: Provider, timeout_s: float = 10) -> None:
    provider.stop(timeout_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.oidc", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch the jars from Maven Central (once)")
    serve = commands.add_parser("serve", help="run a provider until Ctrl-C")
    serve.add_argument("data_dir", type=Path)
    serve.add_argument("--port", type=int, default=None)
    token = commands.add_parser("token", help="print a token from a running provider")
    token.add_argument("issuer", help="the issuer URL, e.g. http://127.0.0.1:PORT/purchase")
    token.add_argument("subject")
    token.add_argument("scopes", nargs="*")
    token.add_argument("--audience", default=AUDIENCE)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(fetch())
    elif args.command == "token":
        print(request_token(args.issuer.rstrip("/") + "/token", args.subject, args.scopes, args.audience))
    else:
        provider = start(args.data_dir, args.port)
        say(f"issuer {provider.issuer} (jwks {provider.jwks_url}); Ctrl-C stops it")
        serve_until_stopped(provider.stop, provider.process.proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
