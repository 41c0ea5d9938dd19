"""How a soak runs its chaos: one thread per planned fault, injected at its planned start by
the fault set the soak was given (the local processes', load/soak/local.py, or the node's pods',
load/soak/node.py), each one's injection, lift and failure recorded on its `FaultRun`."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from load.soak import say
from load.soak.observation import Recorder, first_absent
from load.soak.plan import TARGETS, Fault
from tools.common import poll_until

# A pause whose member the group has not evicted by the planned lift is held on this long at
# most (past the session timeout): the fault is there to prove eviction and takeover.
EVICTION_GRACE_S = 30.0


def target_of(kind: str) -> str:
    return TARGETS.get(kind, kind)


@dataclass
class FaultRun:
    fault: Fault
    injected_at: float | None = None
    lifted_at: float | None = None
    detail: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class Chaos:
    """The running soak as its faults see it: its clock, its stop signal and the group's members
    over time."""
    clock: Callable[[], float]
    stop: threading.Event
    group: Recorder

    def wait(self, seconds: float) -> None:
        """Sleep, cut short when the soak stops."""
        self.stop.wait(seconds)

    def hold_until_evicted(self, run: FaultRun, member: str) -> None:
        """Keep a paused group member paused for the planned hold, then (at most
        EVICTION_GRACE_S longer) until the group no longer lists it: the fault is its eviction."""
        self.wait(run.fault.hold_s)
        def evicted():
            return first_absent(self.group.samples, member, run.injected_at)
        if evicted() is None and not self.stop.is_set():
            say(f"{run.fault.kind}: not evicted yet at the planned end; holding on (at most "
                f"{EVICTION_GRACE_S:.0f} s more)")
            try:
                poll_until(evicted, EVICTION_GRACE_S, 0.25, f"eviction of the paused member {member}")
            except TimeoutError:
                pass

    def threads(self, runs: list[FaultRun], faults: FaultSet) -> list[threading.Thread]:
        """One thread per planned fault, not started; faults on one target (plan.TARGETS) take turns."""
        actions = faults.actions()
        locks = {target_of(run.fault.kind): threading.Lock() for run in runs}
        return [threading.Thread(target=self._inject,
                                 args=(run, actions[run.fault.kind], locks[target_of(run.fault.kind)]),
                                 daemon=True, name=run.fault.kind) for run in runs]

    def _inject(self, run: FaultRun, action: Action, lock: threading.Lock) -> None:
        """At the planned start (later if an earlier fault on the same target is still on)."""
        self.wait(max(0.0, run.fault.start_s - self.clock()))
        if self.stop.is_set():
            return
        with lock:
            say(f"{self.clock():7.1f}s  {run.fault.kind} injected")
            try:
                action(run, self)
            except Exception as exc:  # reported as a failed fault; the soak goes on
                run.error = f"{type(exc).__name__}: {exc}"
                say(f"{self.clock():7.1f}s  {run.fault.kind} FAILED: {run.error}")
                return
            say(f"{self.clock():7.1f}s  {run.fault.kind} lifted"
                + (f" ({', '.join(f'{k} {v}' for k, v in run.detail.items())})" if run.detail else ""))


# Injects one fault, sets its run's injected_at and lifted_at, and returns once it is lifted.
Action = Callable[[FaultRun, Chaos], None]


class FaultSet(Protocol):
    """The faults a soak injects into its target."""

    plan: list[Fault]
    # How long after the load a fault may still be working: the bound on waiting for the chaos.
    tail_s: float
    # How the report names a paused consumer ("SIGSTOPped", "frozen").
    paused_as: str

    def actions(self) -> dict[str, Action]:
        """Each kind of fault of the plan -> what injects it and waits for its lift."""

    def membership(self, run: FaultRun, group_samples) -> dict:
        """Figures of the group's view of the fault's target (evicted, rejoined) for the report."""

    def amend(self, report: dict, evidence) -> None:
        """Add this fault set's own figures and checks to the report."""

    def lift_all(self) -> None:
        """Undo whatever is still on (a paused process must not outlive the soak)."""
