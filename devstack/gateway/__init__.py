"""Local stand-in for the production ingress: one port, the same routes, two backends.

    /api/buy                       -> buy
    /api/user/... /api/purchases   -> history
    /api/getAllUserBuys/...        -> history

A small Go program (main.go here, standard library only), built once into the cache outside
the clone like FerretDB: one process, a goroutine per client connection on both cores, each
with upstream connections of its own, kept alive; it adds ~130-250 µs of CPU per request where
the former Python `http.server` gateway added ~0.5 ms (bench/README.md). Like the ingress for host purchase.local,
it forwards method, path, query, headers and body unchanged (no rewriting), drops hop-by-hop
headers, keeps upstream connections alive, and answers 502/504 as JSON when a backend is
down or slow. Whatever it refuses itself (unknown methods, a malformed Content-Length or
request line, oversized headers or bodies, a client that stalls) is JSON too.

    python -m devstack.gateway --port 8080 --buy 127.0.0.1:8091 --history 127.0.0.1:8092
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..servers import build_go_program

SOURCE = Path(__file__).resolve().parent
# Path prefixes as the production Ingress declares them (pathType: Prefix, matched per
# path element); the Go program embeds the same file, and tests/k8s checks that the
# Ingress has exactly these.
ROUTES = tuple((prefix, backend) for prefix, backend in json.loads((SOURCE / "routes.json").read_text())["routes"])


def route(path: str) -> str | None:
    for prefix, backend in ROUTES:
        if path == prefix or path.startswith(prefix + "/"):
            return backend
    return None


def ensure() -> Path:
    """The gateway binary, built when its source changed (a few seconds; Go's own build cache)."""
    return build_go_program("gateway", SOURCE, ("go.mod", "main.go", "routes.json"))


def command(port: int, buy: str, history: str, extra: tuple[str, ...] = ()) -> list[str]:
    """extra: the program's other flags (--upstream-timeout, --client-timeout)."""
    return [str(ensure()), "--port", str(port), "--buy", buy, "--history", history, *extra]


def main() -> None:
    binary = ensure()
    os.execv(binary, [str(binary), *sys.argv[1:]])
