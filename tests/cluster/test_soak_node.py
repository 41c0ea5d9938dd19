"""The soak on the node, short (`make soak-node` is the long one): steady purchases to the buy
Revision while every pod fault of load/soak/node.py happens once, overlapping (consumer pod
deleted, consumer container SIGKILLed and frozen past the session timeout through containerd,
a buy pod, the Kafka broker leading the most partitions and mongodb-0 deleted). Every purchase
answered 202 is stored exactly once, nothing else is stored, the dead-letter topic gets nothing,
and every fault is injected and its pod back Ready and accepting again."""
from __future__ import annotations

import time

from clusterlib import record_timeline

from load import soak_node
from load.soak import plan as chaos_plan
from load.soak.plan import Options

# A fixed plan (printed by the soak): the freeze first, the other five faults inside or right
# after it, the leading broker deleted once the frozen consumer has had its session timeout to be evicted.
SEED = 3
RATE = 15.0          # enough lag while a consumer is frozen for KEDA to add the pods the other faults need
SECONDS = 100.0      # the shortest load the plan's rules allow with its lead and tail, rounded up
BUDGET_S = 300.0     # the soak's wall time, settling included (CI runs it in make test-cluster)


def test_every_pod_fault_at_once_under_steady_load(stack, kube, capsys):
    started = time.monotonic()
    report, logs = soak_node.soak(Options(rate=RATE, seconds=SECONDS, seed=SEED),
                                  soak_node.ROOT / ".run" / "cluster" / "soak-node", kube)
    wall_s = round(time.monotonic() - started, 1)
    path = record_timeline("soak-node", dict(report, test_wall_s=wall_s))
    with capsys.disabled():
        print(f"\n[node] soak with pod faults ({path}), wall {wall_s} s:{soak_node.format_node_report(report)}")
    failed = {name: check["detail"] for name, check in report["checks"].items() if not check["ok"]}
    assert not failed, f"{failed}\n{logs}"
    assert {f["kind"] for f in report["faults"]} == set(chaos_plan.NODE_KINDS)
    assert wall_s <= BUDGET_S, f"the short soak took {wall_s} s, over its {BUDGET_S:g} s budget"
