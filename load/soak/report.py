"""The soak's report for people (a table of faults, the totals, the checks) and as JSON."""
from __future__ import annotations

import json
from pathlib import Path

from load.soak import say


def format_report(report: dict) -> str:
    def cell(value, unit=""):
        return "-" if value is None else f"{value}{unit}"

    lines = ["", f"soak: seed {report['seed']}, {report['rate']:g}/s for {report['seconds']:g} s, "
             f"session timeout {report['session_timeout_s']:g} s",
             f"{'fault':<20} {'planned':>8} {'injected':>9} {'lifted':>8} {'accepting':>10} {'stored':>10} "
             f"{'503s':>6} {'no ans':>7}  notes",
             f"{'':<20} {'start s':>8} {'at s':>9} {'at s':>8} {'after s':>10} {'after s':>10}"]
    for f in report["faults"]:
        notes = ", ".join([f"{k} {v}" for k, v in f["detail"].items()]
                          + [f"with {'+'.join(f['overlapped']) or 'nothing'}"])
        if f["error"]:
            notes = f"ERROR {f['error']}; " + notes
        lines.append(f"{f['kind']:<20} {f['planned_start_s']:>8} {cell(f['injected_at_s']):>9} "
                     f"{cell(f['lifted_at_s']):>8} {cell(f['accepting_after_s']):>10} "
                     f"{cell(f['stored_caught_up_after_s']):>10} {f['answered_503']:>6} {f['no_answer']:>7}  {notes}")
    t = report["totals"]
    lines += [
        "",
        f"offered {t['offered']} of {t['purchases']} (latest first send {t['latest_first_offer_s']} s after its slot), "
        f"accepted {t['accepted']}, 503s {t['answered_503']}, no answer {t['no_answer']}, "
        f"retries {t['retries']}, abandoned {t['abandoned']} ({t['abandoned_without_answer']} without an answer), "
        f"unexpected {t['unexpected_answers'] or 0}",
        f"answer latency p50 {t['answer_latency_s']['p50']} s, p99 {t['answer_latency_s']['p99']} s, "
        f"slowest answer {t['slowest_answer_s']} s, slowest purchase (slot to 202) {t['slowest_purchase_s']} s",
        f"stored {t['stored']} ({t['stored_event_ids']} event ids), duplicates {t['duplicates']}, "
        f"missing {t['missing']}, stored but not accepted {t['stored_not_accepted']} "
        f"(of abandoned {t['stored_of_abandoned']}), new dead letters {t['dlq_new']}, "
        f"settled at {cell(t['settled_at_s'], ' s')}, wall {t['wall_s']} s",
        "",
    ]
    for name, check in report["checks"].items():
        lines.append(f"  {'ok  ' if check['ok'] else 'FAIL'} {name}"
                     + (f": {check['detail']}" if check["detail"] else ""))
    lines.append(f"soak {'PASSED' if report['passed'] else 'FAILED'}")
    return "\n".join(lines)


def write_report(report: dict, data_dir: Path, also: str | None = None) -> None:
    """report.json in the run's data folder, and at --json's path if one was given."""
    for path in {data_dir / "report.json", *([Path(also)] if also else [])}:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        say(f"report written to {path}")
