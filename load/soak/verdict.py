"""The soak's verdict: from what the clients got, what the store holds and what the broker and
the group showed, the checks, the totals, the figures of each fault and a per-second timeline."""
from __future__ import annotations

import collections
from dataclasses import dataclass

from load import loadgen
from load.soak.clients import NO_ANSWER, Purchase
from load.soak.faults import FaultRun, FaultSet
from load.soak.observation import SETTLE_TIMEOUT_S
from load.soak.plan import CONSUMER_PAUSES, Fault, Options


@dataclass
class Evidence:
    """What one soak leaves to judge."""
    purchases: list[Purchase]
    attempts: list[tuple[float, float, int, int]]   # (sent, answered, status, purchase index)
    runs: list[FaultRun]
    offsets: list[tuple[float, tuple[int, int] | None]]   # (t, (written, committed))
    group: list[tuple[float, object]]                    # (t, (state, members))
    documents: list[dict]                                # the stored purchases of this run
    dlq_new: int
    settled_at: float | None
    wall_s: float


def judge(evidence: Evidence, options: Options, plan: list[Fault], session_timeout_s: float, data_dir: str,
          faults: FaultSet) -> dict:
    """The report: its checks, and passed when every one of them holds."""
    purchases, attempts = evidence.purchases, evidence.attempts
    per_event = collections.Counter(doc["eventId"] for doc in evidence.documents)
    by_event = {p.event_id: p for p in purchases}
    accepted = {p.event_id for p in purchases if p.accepted_at is not None}
    abandoned = {p.event_id for p in purchases if p.abandoned}
    stored = set(per_event)
    missing = accepted - stored
    duplicates = sum(n - 1 for n in per_event.values() if n > 1)
    stored_not_accepted = stored - accepted
    unexplained = stored_not_accepted - abandoned
    altered = [doc["eventId"] for doc in evidence.documents if doc["eventId"] in by_event
               and (doc.get("userId"), doc.get("username"), doc.get("priceCents"))
               != (by_event[doc["eventId"]].user_id, by_event[doc["eventId"]].username,
                   by_event[doc["eventId"]].price_cents)]
    wrong_ids = wrong_event_ids(purchases)
    statuses = collections.Counter(status for _, _, status, _ in attempts)
    unexpected = {str(s): n for s, n in statuses.items() if s not in (202, 503, NO_ANSWER)}
    dlq_new, settled_at = evidence.dlq_new, evidence.settled_at

    figures = [fault_figures(run, evidence, faults) for run in evidence.runs]
    for row, run in zip(figures, evidence.runs, strict=True):
        row["overlapped"] = sorted({other.fault.kind for other in evidence.runs
                                    if other is not run and intersect(run, other)})
    pauses = [f for f in figures if f["kind"] in CONSUMER_PAUSES]
    answered = [(a - s) for s, a, status, _ in attempts if status != NO_ANSWER]
    first_sends = [p.first_sent_at - p.offered_at for p in purchases if p.first_sent_at is not None]
    totals = {
        "purchases": len(purchases),
        "offered": len(first_sends),
        "accepted": len(accepted),
        "answered_503": statuses[503],
        "no_answer": statuses[NO_ANSWER],
        "unexpected_answers": unexpected,
        "attempts": len(attempts),
        "retries": len(attempts) - len(first_sends),
        "abandoned": len(abandoned),
        # Of those, the ones whose last attempt got no answer: stored or not, nobody can say.
        "abandoned_without_answer": sum(p.abandoned and p.last_status == NO_ANSWER for p in purchases),
        "slowest_answer_s": round(max(answered, default=0.0), 3),
        "answer_latency_s": {k: round(v, 4) if v is not None else None
                             for k, v in loadgen.percentiles(answered).items()},
        "slowest_purchase_s": round(max((p.accepted_at - p.offered_at for p in purchases
                                         if p.accepted_at is not None), default=0.0), 2),
        "latest_first_offer_s": round(max(first_sends, default=0.0), 2),
        "stored": len(evidence.documents),
        "stored_event_ids": len(stored),
        "duplicates": duplicates,
        "stored_not_accepted": len(stored_not_accepted),
        "stored_of_abandoned": len(stored_not_accepted & abandoned),
        "missing": len(missing),
        "dlq_new": dlq_new,
        "settled_at_s": round(settled_at, 1) if settled_at is not None else None,
        "wall_s": round(evidence.wall_s, 1),
    }
    checks = {
        "every 202 stored": (not missing, f"{len(missing)} accepted purchases missing"),
        "stored exactly once": (duplicates == 0, f"{duplicates} duplicate documents"),
        "nothing else stored": (not unexplained,
                                f"{len(unexplained)} stored purchases were never answered 202 nor left unanswered"),
        "every purchase answered 202": (not abandoned, f"{len(abandoned)} purchases abandoned at their deadline"),
        "answers as documented": answers_as_documented(unexpected, wrong_ids),
        "stored as sent": (not altered, f"{len(altered)} stored purchases differ from what was sent"),
        "dead-letter topic empty": (dlq_new == 0, f"{dlq_new} new dead letters"),
        "every fault injected and lifted": (
            all(f["injected_at_s"] is not None and f["lifted_at_s"] is not None and not f["error"] for f in figures),
            "; ".join(f"{f['kind']}@{f['planned_start_s']}: {f['error'] or 'not lifted'}"
                      for f in figures if f["error"] or f["lifted_at_s"] is None)),
        "faults overlapped": (all(f["overlapped"] for f in figures),
                              "ran alone: " + ", ".join(f"{f['kind']}@{f['planned_start_s']}"
                                                        for f in figures if not f["overlapped"])),
        "paused consumer evicted": (all(f["detail"].get("evicted_after_s") is not None for f in pauses),
                                    f"a {faults.paused_as} consumer was never evicted by the group"),
        "stored count settled": (settled_at is not None, f"not settled within {SETTLE_TIMEOUT_S:.0f} s"),
    }
    report = {
        "seed": options.seed, "rate": options.rate, "seconds": options.seconds,
        "session_timeout_s": session_timeout_s, "data_dir": data_dir,
        "plan": [f.as_dict() for f in plan],
        "faults": figures, "totals": totals, "checks": {},
        "passed": False,
        "timeline": timeline(evidence),
    }
    set_checks(report, checks)
    return report


def set_checks(report: dict, checks: dict[str, tuple[bool, str]]) -> None:
    """Add (or replace) checks, given as name -> (ok, detail when not ok), and pass the report
    only when every check holds."""
    report["checks"].update({name: {"ok": ok, "detail": "" if ok else detail} for name, (ok, detail) in checks.items()})
    report["passed"] = all(check["ok"] for check in report["checks"].values())


def wrong_event_ids(purchases: list[Purchase]) -> list[int]:
    """The purchases answered 202 with an id other than the one their key gives."""
    return [p.index for p in purchases if p.accepted_at is not None and p.answered_id != p.event_id]


def answers_as_documented(unexpected: dict, wrong_ids: list[int]) -> tuple[bool, str]:
    return (not unexpected and not wrong_ids,
            f"unexpected statuses {unexpected}, {len(wrong_ids)} 202s with another event id")


def fault_figures(run: FaultRun, evidence: Evidence, faults: FaultSet) -> dict:
    """Recovery after the lift: how long until a purchase sent after it was accepted, and
    until the group had stored and committed every record written by the lift; 503s and
    missing answers meanwhile; and what the group showed of the fault's target."""
    detail = dict(run.detail)
    figures = {"kind": run.fault.kind, "planned_start_s": run.fault.start_s, "planned_hold_s": run.fault.hold_s,
               "injected_at_s": rounded(run.injected_at), "lifted_at_s": rounded(run.lifted_at),
               "accepting_after_s": None, "stored_caught_up_after_s": None, "recovery_s": None,
               "answered_503": 0, "no_answer": 0, "error": run.error, "detail": detail}
    if run.injected_at is None or run.lifted_at is None:
        return figures
    lift = run.lifted_at
    accepting = min((answered for sent, answered, status, _ in evidence.attempts
                     if status == 202 and sent >= lift), default=None)
    # During a broker outage nothing is written, so the last reading before the lift holds.
    written_by_lift = max((v[0] for t, v in evidence.offsets if t <= lift and v is not None), default=0)
    caught_up = next((t for t, v in evidence.offsets if t >= lift and v is not None and v[1] >= written_by_lift),
                     None)
    if accepting is not None:
        figures["accepting_after_s"] = round(accepting - lift, 2)
    if caught_up is not None:
        figures["stored_caught_up_after_s"] = round(caught_up - lift, 1)
    if accepting is not None and caught_up is not None:
        figures["recovery_s"] = round(max(accepting, caught_up) - lift, 1)
    until = lift + (figures["recovery_s"] or 0.0)
    during = collections.Counter(status for _, answered, status, _ in evidence.attempts
                                 if run.injected_at <= answered <= until)
    figures["answered_503"], figures["no_answer"] = during[503], during[NO_ANSWER]
    detail.update(faults.membership(run, evidence.group))
    return figures


def timeline(evidence: Evidence) -> list[dict]:
    """Per second: purchases offered, answers by kind, records written to the topic and
    records the group stored and committed."""
    seconds = int(evidence.wall_s) + 1
    rows = [{"t": t, "offered": 0, "accepted": 0, "answered_503": 0, "no_answer": 0, "written": None,
             "committed": None} for t in range(seconds)]
    for p in evidence.purchases:
        if p.first_sent_at is not None and int(p.first_sent_at) < seconds:
            rows[int(p.first_sent_at)]["offered"] += 1
    column = {202: "accepted", 503: "answered_503", NO_ANSWER: "no_answer"}
    for _, answered, status, _ in evidence.attempts:
        if status in column and int(answered) < seconds:
            rows[int(answered)][column[status]] += 1
    for t, value in evidence.offsets:
        if value is not None and int(t) < seconds:
            rows[int(t)]["written"], rows[int(t)]["committed"] = value
    return rows


def intersect(run: FaultRun, other: FaultRun) -> bool:
    """Whether two faults were on at the same time, from when they were injected and lifted."""
    if None in (run.injected_at, run.lifted_at, other.injected_at, other.lifted_at):
        return False
    return run.injected_at <= other.lifted_at and other.injected_at <= run.lifted_at


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
