"""The soak's plan: the load it offers (`Options`) and its chaos, which fault starts when and
for how long, drawn from a seed.

Pure (no I/O, no clock), so one seed always gives one plan and tests/unit/test_soak_plan.py
checks its rules over hundreds of seeds. The local soak (load/soak/local.py) executes it with
the local kinds (KINDS); the node's (load/soak/node.py) with the pod faults of the node
(NODE_KINDS, tests/unit/test_soak_node_plan.py).

Rules every plan keeps:
- every kind of fault runs once per round, and within a round the faults overlap: ordered
  by start, each one begins at least OVERLAP_MIN_S before everything started earlier is
  surely over (one connected stretch of chaos, never one fault at a time);
- every fault is planned to be over, restart allowance included, before the load ends, so
  recovery is seen under load;
- a SIGSTOPped (or frozen) consumer is paused through a stretch of broker uptime of at least
  the session timeout plus a margin. A broker that restarts during the pause reloads the group
  with fresh session timers, so without such a stretch the paused member is never evicted and
  the fault proves nothing.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

CONSUMER_SIGKILL = "consumer-sigkill"
BUY_WORKER_SIGKILL = "buy-worker-sigkill"
BROKER_RESTART = "broker-restart"
FERRETDB_STOP = "ferretdb-stop"
CONSUMER_SIGSTOP = "consumer-sigstop"
KINDS = (CONSUMER_SIGKILL, BUY_WORKER_SIGKILL, BROKER_RESTART, FERRETDB_STOP, CONSUMER_SIGSTOP)
# The local soak's Kafka is three nodes (RF 3, min ISR 2), and these are its faults beside
# BROKER_RESTART (every node stopped at once): the node leading most partitions SIGKILLed and
# restarted after its hold; two of the three SIGKILLed (buy must answer 503, never 202) until
# one returns; each node stopped and started in turn, the next once every replica is back in
# sync (an upgrade). All four act on one cluster, so a round of the local soak has one of them,
# in this order (a 600 s soak's three rounds: the first three), beside the other kinds.
BROKER_SIGKILL = "broker-sigkill"
BROKERS_TWO_DOWN = "brokers-two-down"
BROKER_ROLLING_RESTART = "broker-rolling-restart"
CLUSTER_KINDS = (BROKER_SIGKILL, BROKERS_TWO_DOWN, BROKER_ROLLING_RESTART)
LOCAL_BROKER_TURNS = (*CLUSTER_KINDS, BROKER_RESTART)
LOCAL_KINDS = tuple(kind for kind in KINDS if kind != BROKER_RESTART)
# Faults of these kinds act on one target and take turns (one delayed past its round waits for
# the next one's); any other kind is its own target.
TARGETS = {kind: "kafka" for kind in LOCAL_BROKER_TURNS}

# On the node (load/soak/node.py) a fault is one action on a pod or a container, and Kubernetes
# brings it back; only the consumer's freeze is held and lifted.
CONSUMER_POD_DELETE = "consumer-pod-delete"
CONSUMER_CTR_SIGKILL = "consumer-ctr-sigkill"
BUY_POD_DELETE = "buy-pod-delete"
KAFKA_POD_DELETE = "kafka-pod-delete"
MONGODB_POD_DELETE = "mongodb-pod-delete"
CONSUMER_PAUSE = "consumer-pause"
NODE_KINDS = (CONSUMER_POD_DELETE, CONSUMER_CTR_SIGKILL, BUY_POD_DELETE, KAFKA_POD_DELETE, MONGODB_POD_DELETE,
              CONSUMER_PAUSE)
# Six faults whose planned outages are short next to the broker's allowance: started within a
# window of this width, a round's draws chain them; in the default window (twice the longest
# fault + 10 s) they scatter and too few draws overlap them all.
NODE_WINDOW_S = 75.0
# The same for the local soak: the rolling restart's long allowance would widen the default
# window so far that few draws chain the others.
LOCAL_WINDOW_S = 110.0
# The kinds that take the broker away, and the kinds that pause a consumer past its session.
# Two nodes of three down is the cluster down (no quorum, no coordinator). One node going may
# take the group coordinator with it, whose successor starts the session timers afresh; that is
# not planned around (no plan would keep the rule with them all): the pause then holds on until
# the eviction (faults.EVICTION_GRACE_S).
BROKER_OUTAGES = (BROKER_RESTART, KAFKA_POD_DELETE, BROKERS_TWO_DOWN)
CONSUMER_PAUSES = (CONSUMER_SIGSTOP, CONSUMER_PAUSE)

# Stopping the broker, starting its JVM and waiting until it serves metadata, with room for a
# busy machine: the plan counts the broker as maybe down for this long after its hold.
BROKER_RESTART_ALLOWANCE_S = 25.0
# A deleted pod (or a killed container) is surely out for less than its replacement takes to be
# Ready on the node (the cluster tests record those times in .run/cluster/results/); the old
# pod's shutdown comes on top. Another replica may serve meanwhile: this is how long the fault
# is on, not how long the service is down.
NODE_POD_HOLDS_S = {CONSUMER_POD_DELETE: 3.0, CONSUMER_CTR_SIGKILL: 2.0, BUY_POD_DELETE: 2.0,
                    KAFKA_POD_DELETE: 8.0, MONGODB_POD_DELETE: 5.0}
# How long after its hold a target may still be out: a broker's JVM restart, a pod's replacement
# (a StatefulSet's waits for the old pod to go), a container restarted after kubelet's back-off.
# A rolling restart is three controlled shutdowns, three JVM starts and three catch-ups in turn.
ALLOWANCES_S = {BROKER_RESTART: BROKER_RESTART_ALLOWANCE_S, KAFKA_POD_DELETE: 40.0, MONGODB_POD_DELETE: 25.0,
                CONSUMER_POD_DELETE: 30.0, CONSUMER_CTR_SIGKILL: 30.0, BUY_POD_DELETE: 20.0,
                BROKER_SIGKILL: BROKER_RESTART_ALLOWANCE_S, BROKERS_TWO_DOWN: BROKER_RESTART_ALLOWANCE_S,
                BROKER_ROLLING_RESTART: 100.0}
# Past the session timeout, the coordinator's expiry check and the member's last heartbeat
# (sent up to a heartbeat interval before the pause) still need a moment.
EVICTION_MARGIN_S = 3.0
# The pause is this many session timeouts long: room for the uptime stretch and for overlap.
SIGSTOP_SESSION_TIMEOUTS = 2.0
# Overlaps are planned with this much to spare, so a fault injected a little late still overlaps.
OVERLAP_MIN_S = 2.0
LEAD_S = 10.0      # steady load before the first fault
TAIL_S = 15.0      # load after the last planned fault is over: recovery is seen under load
ROUND_S = 150.0    # one round of every kind of fault per this much load
MAX_DRAWS = 10_000
DEFAULT_RATE = 90.0        # with DEFAULT_SECONDS: 54,000 purchases over 10 minutes
DEFAULT_SECONDS = 600.0


class PlanError(ValueError):
    """No plan keeps the rules for these settings (e.g. the load is too short for the faults)."""


@dataclass(frozen=True)
class Holds:
    """How long each fault lasts before it is lifted (seconds)."""
    consumer_down_s: float = 3.0     # SIGKILLed consumer restarted after this
    broker_down_s: float = 8.0       # broker stopped this long, then started on the same ports
    node_down_s: float = 5.0         # one SIGKILLed node restarted after this
    two_nodes_down_s: float = 8.0    # two of three nodes down this long, then one restarted (the other after)
    ferretdb_down_s: float = 30.0    # FerretDB stopped this long

    def of(self, kind: str, session_timeout_s: float) -> float:
        return {
            CONSUMER_SIGKILL: self.consumer_down_s,
            BUY_WORKER_SIGKILL: 0.0,  # gunicorn respawns the worker by itself
            BROKER_RESTART: self.broker_down_s,
            BROKER_SIGKILL: self.node_down_s,
            BROKERS_TWO_DOWN: self.two_nodes_down_s,
            BROKER_ROLLING_RESTART: 0.0,  # lasts as long as the restarts take (its allowance)
            FERRETDB_STOP: self.ferretdb_down_s,
            CONSUMER_SIGSTOP: SIGSTOP_SESSION_TIMEOUTS * session_timeout_s,
            CONSUMER_PAUSE: SIGSTOP_SESSION_TIMEOUTS * session_timeout_s,
            **NODE_POD_HOLDS_S,
        }[kind]


@dataclass
class Options:
    """What one soak is asked for: its load, the seed of its chaos, how long local faults hold."""
    rate: float = DEFAULT_RATE
    seconds: float = DEFAULT_SECONDS
    seed: int = 0
    holds: Holds = Holds()
    clients: int | None = None   # client threads; None: clients.client_threads(rate)
    kinds: tuple[str, ...] = LOCAL_KINDS             # in every round of the local soak
    broker_turns: tuple[str, ...] = LOCAL_BROKER_TURNS  # one per round, in turn


@dataclass(frozen=True)
class Fault:
    kind: str
    start_s: float   # seconds after the load started
    hold_s: float

    @property
    def surely_out(self) -> tuple[float, float]:
        """When the fault's target is certainly unavailable: its hold."""
        return self.start_s, self.start_s + self.hold_s

    @property
    def maybe_out(self) -> tuple[float, float]:
        """When the target may be unavailable: its kind's allowance (ALLOWANCES_S) on top of the hold."""
        return self.start_s, self.start_s + self.hold_s + ALLOWANCES_S.get(self.kind, 0.0)

    def as_dict(self) -> dict:
        return asdict(self)


def longest_uptime_within(pause: tuple[float, float], outages: list[tuple[float, float]]) -> float:
    """The longest stretch of `pause` that no outage interval covers."""
    free = [pause]
    for down_from, down_to in outages:
        pieces = []
        for lo, hi in free:
            if min(hi, down_from) > lo:
                pieces.append((lo, min(hi, down_from)))
            if hi > max(lo, down_to):
                pieces.append((max(lo, down_to), hi))
        free = pieces
    return max((hi - lo for lo, hi in free), default=0.0)


def sigstop_sees_eviction(faults: list[Fault], session_timeout_s: float) -> bool:
    """Every consumer pause holds a stretch of broker uptime of session timeout + margin."""
    outages = [f.maybe_out for f in faults if f.kind in BROKER_OUTAGES]
    return all(longest_uptime_within(f.surely_out, outages) >= session_timeout_s + EVICTION_MARGIN_S
               for f in faults if f.kind in CONSUMER_PAUSES)


def overlap_as_one(faults: list[Fault]) -> bool:
    """Ordered by start, each fault begins at least OVERLAP_MIN_S before every earlier one is
    surely over (an instant one, like a worker kill, counts when it falls inside another)."""
    ordered = sorted(faults, key=lambda f: f.surely_out)
    on_until = ordered[0].surely_out[1]
    for fault in ordered[1:]:
        start, end = fault.surely_out
        if start > on_until - OVERLAP_MIN_S:
            return False
        on_until = max(on_until, end)
    return len(ordered) > 1


def rounds(seconds: float, longest_s: float, window_s: float | None = None) -> tuple[list[tuple[float, float]], float]:
    """The period of each round (one per ROUND_S of load between the lead and the tail) and
    the width of the window inside it where that round's faults happen: wide enough for the
    longest fault and others around it, narrow enough that they overlap (at most window_s)."""
    usable = seconds - LEAD_S - TAIL_S
    if usable < longest_s:
        raise PlanError(f"{seconds:.0f} s of load leave {usable:.0f} s for faults; the longest needs {longest_s:.0f} s")
    count = max(1, int(usable // max(ROUND_S, longest_s)))
    period = usable / count
    width = min(period, 2 * longest_s + 10, window_s or float("inf"))
    return [(LEAD_S + i * period, LEAD_S + i * period + period) for i in range(count)], width


def draw_plan(seed: int, seconds: float, session_timeout_s: float, holds: Holds = Holds(),
              kinds: tuple[str, ...] = KINDS, window_s: float | None = None,
              turns: tuple[str, ...] = ()) -> list[Fault]:
    """The plan for a soak of `seconds` of load, one fault of each of `kinds` per round (and
    one of `turns`, round i taking turns[i % len]), redrawn from the seed's own random stream
    until every rule holds (deterministic: same arguments, same plan)."""
    if SIGSTOP_SESSION_TIMEOUTS * session_timeout_s < session_timeout_s + EVICTION_MARGIN_S:
        raise PlanError(f"a {session_timeout_s} s session timeout is too short to pause past")
    rng = random.Random(seed)
    lengths = {kind: Fault(kind, 0.0, holds.of(kind, session_timeout_s)).maybe_out[1] for kind in kinds + turns}
    spans, width = rounds(seconds, max(lengths.values()), window_s)
    plan: list[Fault] = []
    for index, (period_from, period_to) in enumerate(spans):
        round_kinds = kinds + (turns[index % len(turns)],) if turns else kinds
        for _ in range(MAX_DRAWS):
            lo = rng.uniform(period_from, period_to - width)
            faults = [Fault(kind, round(rng.uniform(lo, lo + width - lengths[kind]), 1),
                            holds.of(kind, session_timeout_s)) for kind in round_kinds]
            if overlap_as_one(faults) and sigstop_sees_eviction(faults, session_timeout_s):
                plan.extend(faults)
                break
        else:
            raise PlanError(f"no plan for seed {seed} kept the rules in {MAX_DRAWS} draws")
    return sorted(plan, key=lambda f: (f.start_s, f.kind))


def describe(plan: list[Fault]) -> str:
    """The plan as a table: start and hold, and until when the target is planned to be out
    (a restarted broker's allowance included)."""
    lines = [f"  {'fault':<20} {'start s':>8} {'hold s':>7} {'out until s':>12}"]
    lines += [f"  {f.kind:<20} {f.start_s:>8.1f} {f.hold_s:>7.1f} {f.maybe_out[1]:>12.1f}" for f in plan]
    return "\n".join(lines)


def draw_local_plan(seed: int, seconds: float, session_timeout_s: float, holds: Holds = Holds(),
                    kinds: tuple[str, ...] = LOCAL_KINDS,
                    broker_turns: tuple[str, ...] = LOCAL_BROKER_TURNS) -> list[Fault]:
    """The plan of the local soak (load/soak/local.py): `kinds` in every round and one of
    `broker_turns` per round, in turn, in LOCAL_WINDOW_S when the rolling restart is among them."""
    window_s = LOCAL_WINDOW_S if BROKER_ROLLING_RESTART in broker_turns else None
    return draw_plan(seed, seconds, session_timeout_s, holds, kinds=kinds, window_s=window_s, turns=broker_turns)


def draw_node_plan(seed: int, seconds: float, session_timeout_s: float) -> list[Fault]:
    """The plan of the soak on the node (load/soak/node.py): its pod faults in its window."""
    return draw_plan(seed, seconds, session_timeout_s, kinds=NODE_KINDS, window_s=NODE_WINDOW_S)
