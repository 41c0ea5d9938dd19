"""All faults at once, in one soak: `python -m load.soak --rate R --seconds S --seed N [--json FILE]`.

Starts its own Kafka and FerretDB on free 127.0.0.1 ports (restartable on the same ports),
buy (gunicorn, two workers, so one can be SIGKILLed and respawned) and two persist-purchase
consumer replicas in one group, as KEDA would run them at two: one is SIGKILLed and restarted,
the other SIGSTOPped past the session timeout, so those two faults can overlap without one
cancelling the other, and the paused replica's partitions must move to the live one.

Clients offer purchases at a steady rate, each with its own Idempotency-Key, and retry 503s,
connection errors and missing answers under the same key with capped backoff until a 202 or
the purchase's deadline. Meanwhile a chaos plan drawn from the seed (load/soak/plan.py,
printed at the start) SIGKILLs a consumer, SIGKILLs a buy worker, restarts the broker, stops
FerretDB and SIGSTOPs the other consumer, overlapping. At the end, once the stored count has
settled: every purchase answered 202 is stored exactly once, nothing else is stored, the
dead-letter topic got nothing, and a report gives per-fault recovery, 503 and no-answer counts
and the slowest answer. Exit code 1 when any of that fails.
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from load.soak import local, say
from load.soak.clients import MAX_CLIENT_THREADS, REQUEST_TIMEOUT_S
from load.soak.plan import DEFAULT_RATE, DEFAULT_SECONDS, Holds, Options, PlanError
from load.soak.report import format_report, write_report
from tools.common import ROOT


def load_arguments(prog: str, doc: str, default_rate: float, default_seconds: float) -> argparse.ArgumentParser:
    """The options every soak takes: the offered load, the plan's seed, the clients, --json."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=default_rate,
                        help=f"purchases offered per second (default {default_rate:g})")
    parser.add_argument("--seconds", type=float, default=default_seconds,
                        help=f"seconds of load (default {default_seconds:g})")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the chaos plan (default: a random one, printed)")
    parser.add_argument("--clients", type=int, default=None,
                        help="client threads, i.e. attempts in flight at most (default: rate x request "
                             f"timeout {REQUEST_TIMEOUT_S:g} s + 32, at most {MAX_CLIENT_THREADS})")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="write the report as JSON here too (it is always written to the run's data folder)")
    return parser


def seed_of(args: argparse.Namespace) -> int:
    return args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)


def conclude(report: dict, logs: str, text: str, data_dir: Path, also: str | None) -> int:
    """Print the logs of a failed soak and the report, write the report; the exit code."""
    if logs:
        print(logs, flush=True)
    print(text, flush=True)
    write_report(report, data_dir, also)
    return 0 if report["passed"] else 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = load_arguments("python -m load.soak", __doc__, DEFAULT_RATE, DEFAULT_SECONDS)
    parser.add_argument("--ferretdb-down", type=float, default=Holds().ferretdb_down_s, metavar="S",
                        help=f"seconds FerretDB stays stopped (default {Holds().ferretdb_down_s:g})")
    parser.add_argument("--data-dir", default=None, help="servers' data and logs (default .run/soak-<date>-<time>)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    options = Options(rate=args.rate, seconds=args.seconds, seed=seed_of(args),
                      holds=Holds(ferretdb_down_s=args.ferretdb_down), clients=args.clients)
    data_dir = Path(args.data_dir) if args.data_dir else ROOT / ".run" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        soak = local.build(options, data_dir)
    except PlanError as exc:
        say(f"no chaos plan: {exc}")
        return 2
    with soak:
        report = soak.run()
        logs = "" if report["passed"] else soak.log_tails()
    return conclude(report, logs, format_report(report), data_dir, args.json)
