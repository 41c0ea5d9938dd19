"""The soak on the node, with pod faults: `python -m cluster run -- python -m load.soak_node
--seed N --rate R --seconds S` (`make soak-node`; the cluster up and the system deployed).

The local soak (load/soak/) against the deployed system instead of its own servers: clients
offer purchases at a steady rate to buy through the node's ingress, as tests/cluster reaches it
(Traefik's NodePort, Host purchase.local), and retry 503s, 502/504s and missing answers
under the same Idempotency-Key. Meanwhile a chaos plan drawn from the seed (load/soak/plan.py,
NODE_KINDS, printed at the start) deletes a persist-purchase pod, SIGKILLs a persist-purchase
container through containerd, deletes a buy pod, the broker leading the most partitions (one of
the three Kafka pods) and mongodb-0, and freezes a
consumer container past the session timeout, overlapping. Kafka and MongoDB are reached by their
Service names, hence `python -m cluster run` (CoreDNS as the resolver). The node's target and
faults are load/soak/node.py; this is its command line.

The freeze is `ctr tasks pause`, containerd's cgroup freezer: every process and thread of the
container stops at once (a SIGSTOP reaches only the container's PID 1 and is forwarded nowhere),
and `ctr tasks resume` thaws it as it was, so the group must evict it and take its partitions over.

Each run uses users of its own, so the counts are exact in a database other runs share: every
purchase answered 202 stored exactly once (by event id), nothing else stored, the dead-letter
topic got nothing, every fault injected and its pod back Ready, and a report gives per-fault
recovery, 503 and no-answer counts and the slowest answer. Exit code 1 when any of that fails.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cluster import control
from cluster.observe import Kube
from load.soak import node, say
from load.soak.cli import conclude, load_arguments, seed_of
from load.soak.node import format_node_report
from load.soak.plan import Options, PlanError
from tools.common import ROOT

DEFAULT_RATE = 20.0        # buy scales to at most 5 pods on a 2-core node; 12,000 purchases in 10 minutes
DEFAULT_SECONDS = 600.0


def parse_args(argv=None) -> argparse.Namespace:
    return load_arguments("python -m load.soak_node", __doc__, DEFAULT_RATE, DEFAULT_SECONDS).parse_args(argv)


def soak(options: Options, data_dir: Path, kube: Kube) -> tuple[dict, str]:
    """One soak on the node: the report, and the consumer logs when it failed."""
    with node.build(options, data_dir, kube) as node_soak:
        report = node_soak.run()
        return report, "" if report["passed"] else node_soak.log_tails()


def main(argv=None) -> int:
    args = parse_args(argv)
    if not control.is_up():
        say("the cluster is not up: make cluster-up, then make cluster-deploy")
        return 2
    options = Options(rate=args.rate, seconds=args.seconds, seed=seed_of(args), clients=args.clients)
    data_dir = ROOT / ".run" / f"soak-node-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        report, logs = soak(options, data_dir, Kube(control.read_state()))
    except PlanError as exc:
        say(f"no chaos plan: {exc}")
        return 2
    return conclude(report, logs, format_node_report(report), data_dir, args.json)


if __name__ == "__main__":
    sys.exit(main())
