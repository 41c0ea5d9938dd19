"""A/B of buy variants in one run, interleaved, on a shared (noisy) machine.

    python -m bench.ab --variant linger2=KAFKA_LINGER_MS=2 --variant linger0= [--rounds 3] [--seconds 3]
    python -m bench.ab --variant direct= --variant envoy=GATEWAY=envoy --variant traefik=GATEWAY=traefik
    python -m bench.ab --variant open=AUTH_MODE=off --variant jwt=AUTH=jwt

Every variant is one buy process (buy's server settings, its own env overrides) started side
by side on the same Kafka; each round loads every variant in turn at each concurrency level,
so background load from other work falls on all variants alike. Prints per-variant medians
over the rounds, the server's CPU time per request (far steadier than req/s on a busy box)
and each variant's ratio to the first one; --json writes every round.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

from bench import hey, traefik
from bench.common import QUICK, say
from bench.profiling import cpu_seconds
from bench.run import Bench
from devstack import oidc
from devstack import stack as devstack
from devstack.servers import ensure_hey
from tools.common import free_port


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, assignments = text.partition("=")
    env = dict(part.split("=", 1) for part in assignments.split(",") if part)
    return name, env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, help="NAME=KEY=VALUE,KEY=VALUE (env overrides)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--levels", type=int, nargs="*", default=list(QUICK["levels"]))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    bench = Bench(SimpleNamespace(no_profile=True, quick=True, only=None, brokers=1),
                  dict(QUICK, levels=tuple(args.levels)))
    bench.oidc = None
    rounds: dict = {name: [] for name, _ in variants}
    try:
        bench.start()
        names = bench.names("ab")
        bench.topic(names["topic"])
        processes = {}
        for name, env in variants:
            processes[name] = start_variant(bench, names, name, env)
            hey.warm_up(ensure_hey(), f"http://127.0.0.1:{processes[name].port}/api/buy",
                        processes[name].extra.get("headers", ()))
        for index in range(args.rounds):
            for name, _ in (variants if index % 2 == 0 else list(reversed(variants))):
                say(f"round {index + 1}/{args.rounds}: {name}")
                rounds[name].append([_measured_level(bench, processes[name], c, args.seconds) for c in args.levels])
    finally:
        bench.stop()
        if bench.oidc is not None:
            bench.oidc.stop()
    base = variants[0][0]
    summary = {}
    for name, _ in variants:
        summary[name] = []
        for position, c in enumerate(args.levels):
            per_round = [r[position] for r in rounds[name]]
            summary[name].append({key: statistics.median(level[key] for level in per_round if level[key] is not None)
                                  for key in ("per_s", "p50", "p99", "cpu_us")} | {"concurrency": c})
    print(f"{'variant':<16} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10} "
          f"{'x ' + base:>10} {'CPU x':>6}")
    for name, _ in variants:
        for level, ref in zip(summary[name], summary[base], strict=False):
            print(f"{name:<16} {level['concurrency']:>3} {level['per_s']:>8.0f} {level['p50']:>8.2f} "
                  f"{level['p99']:>8.2f} {level['cpu_us']:>10.0f} {level['per_s'] / ref['per_s']:>10.2f} "
                  f"{level['cpu_us'] / ref['cpu_us']:>6.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"variants": dict(variants), "rounds": rounds, "summary": summary}, handle, indent=2)
    return 0


def _measured_level(bench: Bench, process, concurrency: int, seconds: float) -> dict:
    """One load level, and the server's CPU time per request over it (warmed up once, at start)."""
    bench.sizes["levels"] = (concurrency,)
    before = server_cpu_s(process)
    level = bench.load_levels(process, seconds, warm_up=False)[0]
    level["cpu_us"] = round(1e6 * (server_cpu_s(process) - before) / max(1, level["accepted"]), 1)
    return level


def server_cpu_s(process) -> float:
    """CPU seconds of a variant's process tree; through a proxy, of the proxy's and buy's."""
    return sum(map(cpu_seconds, process.extra.get("cpu_pids", [process.proc.pid])))


def start_proxy(kind: str, buy_port: int, log_dir: Path):
    """envoy: devstack's gateway (envoy-access-log: with Envoy's access log on); traefik: the
    node's Traefik with its file provider (bench/traefik.py), if it has been built."""
    if kind == "traefik":
        executable = traefik.binary()
        if executable is None:
            raise RuntimeError("no Traefik binary: `python -m cluster.traefik` builds it")
        return traefik.start(executable, free_port(), buy_port, free_port(), log_dir)
    if kind not in ("envoy", "envoy-access-log"):
        raise ValueError(f"GATEWAY={kind}: envoy, envoy-access-log or traefik")
    return devstack.start_gateway(free_port(), buy_port, free_port(), log_dir, access_log=kind == "envoy-access-log")


def start_variant(bench: Bench, names: dict, name: str, env: dict):
    """buy with env overrides; SOURCE=path and TARGET=name put another function on buy's settings;
    GATEWAY=envoy|envoy-access-log|traefik loads it through that proxy (CPU counted for both);
    AUTH=jwt requires tokens from a provider (devstack/oidc.py) and sends one, for BUY_BODY's user."""
    env = dict(env)
    source, target, proxy = env.pop("SOURCE", None), env.pop("TARGET", "buy"), env.pop("GATEWAY", "")
    log_dir = bench.tmp / "logs" / name
    headers: tuple[str, ...] = ()
    if env.pop("AUTH", "") == "jwt":
        if bench.oidc is None:
            bench.oidc = oidc.start(bench.tmp / "oidc")
        env.update(AUTH_MODE="jwt", AUTH_ISSUER=bench.oidc.issuer, AUTH_JWKS_URL=bench.oidc.jwks_url)
        headers = (f"Authorization: Bearer {bench.oidc.token(json.loads(hey.BUY_BODY)['userId'])}",)
    process = devstack.start_buy({**bench.env(names), **env}, free_port(), log_dir,
                                 source=Path(source).resolve() if source else None, target=target)
    bench.processes.append(process)
    process.extra["headers"] = headers
    if proxy:
        front = start_proxy(proxy, process.port, log_dir)
        bench.processes.append(front)
        front.extra["cpu_pids"] = [front.proc.pid, process.proc.pid]
        front.extra["headers"] = headers
        return front
    return process

if __name__ == "__main__":
    sys.exit(main())
