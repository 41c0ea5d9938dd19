"""What verifying a bearer token costs buy and history: purchase_common.auth's TokenVerifier with
a warm key cache, per token, in CPU µs (steadier than wall time on a busy machine) and wall µs.

    python -m bench.auth [--rounds 7] [--per-round 2000] [--provider]

Each case runs `rounds` rounds of `per-round` calls and prints the median round's cost per
call. The keys are made here (RSA 2048 like the provider's, and EC P-256) and served from memory,
so no fetch is timed; `--provider` also times a token from a real mock-oauth2-server
(devstack/oidc.py) against its JWKS. The refused cases show what a flood of bad tokens costs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from purchase_common.auth import InvalidToken, TokenVerifier

ISSUER = "https://id.example/purchase"
AUDIENCE = "purchase-api"


def per_call_us(call: Callable[[], object], rounds: int, per_round: int) -> tuple[float, float]:
    """Median over rounds of (CPU µs, wall µs) per call."""
    cpu, wall = [], []
    for _ in range(rounds):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        for _ in range(per_round):
            call()
        cpu.append((time.process_time() - cpu_start) / per_round * 1e6)
        wall.append((time.perf_counter() - wall_start) / per_round * 1e6)
    return statistics.median(cpu), statistics.median(wall)


def refusing(verifier: TokenVerifier, token: str) -> Callable[[], object]:
    def call() -> object:
        try:
            return verifier.verify(token)
        except InvalidToken as exc:
            return exc
    return call


def in_memory_verifier(keys: list[dict]) -> TokenVerifier:
    document = json.dumps({"keys": keys}).encode()
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks_url=ISSUER + "/jwks",
                             fetch=lambda url, timeout_s: document)
    verifier.refresh()
    return verifier


def cases(provider_dir: Path | None) -> list[tuple[str, Callable[[], object]]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = [{**json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "r1"},
            {**json.loads(ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "e1"}]
    verifier = in_memory_verifier(keys)
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "555", "iat": now, "nbf": now, "exp": now + 3600,
              "scope": "purchases:read:any", "client_id": "purchase-dev"}
    rs256 = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "r1"})
    es256 = jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "e1"})
    # The most a bad token can cost: as long as the cap allows, known kid, signature wrong.
    longest = jwt.encode({**claims, "padding": "x" * 5600}, rsa_key, algorithm="RS256", headers={"kid": "r1"})
    longest = longest[:-8] + ("A" * 8 if not longest.endswith("A" * 8) else "B" * 8)
    stranger = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "unknown"})
    forged = rs256.rsplit(".", 1)[0] + "." + jwt.encode({**claims, "sub": "556"}, rsa_key, algorithm="RS256",
                                                         headers={"kid": "r1"}).rsplit(".", 1)[1]

    async def many_async(count: int) -> None:
        for _ in range(count):
            await verifier.verify_async(rs256)

    chosen: list[tuple[str, Callable[[], object]]] = [
        ("RS256 verify (warm cache)", lambda: verifier.verify(rs256)),
        ("ES256 verify (warm cache)", lambda: verifier.verify(es256)),
        ("RS256 verify_header", lambda: verifier.verify_header("Bearer " + rs256)),
        ("RS256 verify_async, per call (100 per loop run)", lambda: asyncio.run(many_async(100))),
        ("refused: bad RS256 signature", refusing(verifier, forged)),
        ("refused: bad signature, token near the length cap", refusing(verifier, longest)),
        ("refused: unknown kid (no refetch due)", refusing(verifier, stranger)),
        ("refused: 16 KiB token", refusing(verifier, "e" * 16384)),
        ("refused: alg none", refusing(verifier, jwt.encode(claims, None, algorithm="none"))),
    ]
    if provider_dir is not None:
        from devstack import oidc

        provider = oidc.start(provider_dir)
        try:
            real = provider.token("555", ["purchases:read:any"])
            live = TokenVerifier(issuer=provider.issuer, audience=oidc.AUDIENCE, jwks_url=provider.jwks_url)
            live.verify(real)
        finally:
            provider.stop()
        chosen.insert(0, ("RS256 token of mock-oauth2-server", lambda: live.verify(real)))
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.auth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=2000)
    parser.add_argument("--provider", action="store_true", help="also time a token of a real provider")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as folder:
        chosen = cases(Path(folder) if args.provider else None)
    print(f"{'case':<50} {'CPU µs':>8} {'wall µs':>8}")
    for name, call in chosen:
        per_round = max(1, args.per_round // 100) if "verify_async" in name else args.per_round
        cpu, wall = per_call_us(call, args.rounds, per_round)
        if "verify_async" in name:
            cpu, wall = cpu / 100, wall / 100
        print(f"{name:<50} {cpu:>8.1f} {wall:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
