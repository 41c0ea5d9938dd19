"""All faults at once: the purchase soak (`python -m load.soak`, `make soak`; on the node
`python -m load.soak_node`, `make soak-node`).

One module per concern:
- plan.py          what to run: the offered load (Options) and the seeded chaos plan (pure);
- clients.py       the purchases and the clients that offer and retry them;
- observation.py   what is read from the broker meanwhile, and when the stored count settled;
- faults.py        running the chaos: one thread per planned fault, the FaultSet a target is hit with;
- run.py           Soak: a target, a fault set and purchases, from start to report;
- verdict.py       the checks, totals, per-fault figures and timeline of a run;
- report.py        the report as text and as JSON;
- local.py         the local target (its own servers and functions) and its process faults;
- node.py          the deployed system on the node and its pod faults;
- cli.py           the local soak's command line (the node's is load/soak_node.py).
"""
from __future__ import annotations

import sys

from tools.common import speaker

say = speaker("soak", stream=sys.stdout)
