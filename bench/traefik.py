"""Traefik with its file provider in front of buy: the second proxy `make bench-versus` sets
beside the gateway (Envoy), with the routes of devstack/gateway/routes.json.

The binary is the node's ingress (`python -m cluster.traefik`, cached under the cluster's
bin folder); the bench uses it when it is there and never builds it, so `make run` and
`make test` neither need nor wait for it.
"""
from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from devstack import gateway
from tools.common import ROOT, Process, spawn, wait_for_port

READY_WITHIN_S = 30


def binary() -> Path | None:
    """The node's Traefik if it has been built, else None."""
    try:
        from cluster import build, traefik
    except ImportError:  # a checkout without the cluster's Traefik
        return None
    if not (build.BIN / traefik.BINARY).exists():
        return None
    return traefik.ensure_traefik()  # checks the version stamp; built already, so no build here


def dynamic_config(backends: dict[str, str]) -> dict:
    """routes.json as Traefik routers: a prefix matched per path element, as the Ingress does."""
    routers = {f"{backend}-{index}": {"rule": f"Path(`{prefix}`) || PathPrefix(`{prefix}/`)", "service": backend,
                                      "entryPoints": ["web"]}
               for index, (prefix, backend) in enumerate(gateway.ROUTES)}
    services = {name: {"loadBalancer": {"servers": [{"url": f"http://{address}"}]}}
                for name, address in backends.items()}
    return {"http": {"routers": routers, "services": services}}


def start(executable: Path, port: int, buy_port: int, history_port: int, log_dir: Path) -> Process:
    log_dir.mkdir(parents=True, exist_ok=True)
    config = log_dir / "traefik-routes.yaml"
    config.write_text(yaml.safe_dump(dynamic_config({"buy": f"127.0.0.1:{buy_port}",
                                                     "history": f"127.0.0.1:{history_port}"})))
    argv = [str(executable), f"--entryPoints.web.address=127.0.0.1:{port}", f"--providers.file.filename={config}",
            "--providers.file.watch=false", "--log.level=ERROR", "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false"]
    log = log_dir / "traefik.log"
    process = Process("traefik", spawn("traefik", argv, log, cwd=ROOT), port, log)
    try:
        wait_for_port(port, READY_WITHIN_S, process.proc, "Traefik")
        _wait_for_routes(port)
    except BaseException:
        process.stop()
        raise
    return process


def _wait_for_routes(port: int) -> None:
    """Traefik listens before the file provider's routes are in: wait until /api/buy is routed
    (buy answers a GET with 405; Traefik's own answer without a route is 404)."""
    deadline = time.monotonic() + READY_WITHIN_S
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/buy", timeout=2)
            return
        except urllib.error.HTTPError as error:
            if error.code != 404:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"Traefik on {port} did not route /api/buy within {READY_WITHIN_S}s")
