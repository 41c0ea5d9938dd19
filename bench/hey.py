"""rakyll/hey as the load generator of `make bench-versus`: run it, and read what it prints.

hey prints either its summary (the default) or, with `-o csv`, one row per answered request.
`parse` reads both into one `HeyReport`. The summary is what the bench runs on: only it counts
transport errors (the CSV lists answered requests only). Its quirks, as hey v0.1.x prints them:
percentiles read `50%% in 0.0010 secs` (a doubled `%` from its template), a percentile hey could
not place (fewer than 100 answers for p99) prints as `0%% in 0.0000 secs`, every figure has four
decimals (0.1 ms), and `Requests/sec` counts errors and non-2xx answers too.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# What the benches POST to buy: one valid purchase.
BUY_BODY = json.dumps({"username": "versus bench", "userId": "versus-1", "price": 12.5}, separators=(",", ":"))
WARM_UP_REQUESTS = 300
TIMEOUT_S = 10
CSV_HEADER = "response-time,"
SECTION = re.compile(r"^(Summary|Response time histogram|Latency distribution|Details \(average, fastest, slowest\)|"
                     r"Status code distribution|Error distribution):\s*$")
NUMBER = r"(\d+(?:\.\d+)?|NaN)"
PERCENTILE = re.compile(r"^\s*(\d+)%+ in\s+" + NUMBER + r" secs\s*$")
STATUS = re.compile(r"^\s*\[(\d{3})\]\s+(\d+) responses\s*$")
ERROR = re.compile(r"^\s*\[(\d+)\]\s+(.+?)\s*$")


@dataclass
class HeyReport:
    total_s: float | None = None                      # wall time of the run
    requests_per_s: float | None = None               # hey's own figure: every answer and error
    percentiles: dict = field(default_factory=dict)   # {50: seconds, ...}, only those hey placed
    statuses: dict = field(default_factory=dict)      # {202: count, ...}
    errors: dict = field(default_factory=dict)        # {message: count}: no answer at all

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)

    def not_status(self, status: int) -> int:
        """Requests that did not get `status`: other answers and transport errors."""
        return self.answered - self.count(status) + self.error_count

    def rate(self, status: int) -> float | None:
        """`status` answers per second of the run (hey's Requests/sec when every answer is it)."""
        if not self.total_s:
            return None
        return self.count(status) / self.total_s

    def ms(self, percentile: int) -> float | None:
        value = self.percentiles.get(percentile)
        return None if value is None else round(value * 1000, 2)


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) else value


def parse(text: str) -> HeyReport:
    """hey's output, summary or CSV; ValueError when it is neither (e.g. a usage message)."""
    if any(line.startswith(CSV_HEADER) for line in text.splitlines()[:5]):
        return parse_csv(text)
    return parse_summary(text)


def parse_summary(text: str) -> HeyReport:
    report = HeyReport()
    section = None
    seen = set()
    for line in text.splitlines():
        heading = SECTION.match(line.strip())
        if heading:
            section = heading.group(1)
            seen.add(section)
            continue
        if section == "Summary":
            name, _, value = line.strip().partition(":")
            if name in ("Total", "Requests/sec") and value.strip():
                number = _number(value.split()[0])
                if name == "Total":
                    report.total_s = number
                else:
                    report.requests_per_s = number
        elif section == "Latency distribution":
            match = PERCENTILE.match(line)
            if match and int(match.group(1)) > 0 and _number(match.group(2)):
                report.percentiles[int(match.group(1))] = _number(match.group(2))
        elif section == "Status code distribution":
            match = STATUS.match(line)
            if match:
                report.statuses[int(match.group(1))] = report.statuses.get(int(match.group(1)), 0) + int(match.group(2))
        elif section == "Error distribution":
            match = ERROR.match(line)
            if match:
                report.errors[match.group(2)] = report.errors.get(match.group(2), 0) + int(match.group(1))
    if "Summary" not in seen or "Status code distribution" not in seen:
        raise ValueError(f"not hey's summary output: {text.strip()[:300]!r}")
    return report


def parse_csv(text: str) -> HeyReport:
    """`hey -o csv`: percentiles (nearest rank) and the rate from the rows themselves; the run's
    wall time is taken as the end of its last request, and errors are not listed."""
    report = HeyReport()
    latencies, end = [], 0.0
    rows = csv.DictReader(io.StringIO(text.strip()))
    if not rows.fieldnames or "status-code" not in rows.fieldnames:
        raise ValueError(f"not hey's CSV output: {text.strip()[:300]!r}")
    for row in rows:
        try:
            latency, status, offset = float(row["response-time"]), int(row["status-code"]), float(row["offset"])
        except (KeyError, TypeError, ValueError):
            continue
        latencies.append(latency)
        report.statuses[status] = report.statuses.get(status, 0) + 1
        end = max(end, offset + latency)
    latencies.sort()
    for point in (50, 99):
        if latencies:
            report.percentiles[point] = latencies[max(math.ceil(point / 100 * len(latencies)), 1) - 1]
    if end > 0:
        report.total_s = end
        report.requests_per_s = len(latencies) / end
    return report


def command(binary: Path | str, url: str, body: str, concurrency: int, seconds: float | None = None,
            requests: int | None = None, timeout_s: int = 10, headers: tuple[str, ...] = ()) -> list[str]:
    """POST `body` as JSON with `concurrency` keep-alive connections, for `seconds` (-z) or
    `requests` (-n); `headers` as "Name: value" each."""
    amount = ["-z", f"{seconds:g}s"] if seconds else ["-n", str(max(requests or 0, concurrency))]
    extra = [part for header in headers for part in ("-H", header)]
    return [str(binary), *amount, "-c", str(concurrency), "-m", "POST", "-T", "application/json", "-d", body,
            *extra, "-t", str(timeout_s), url]


def run(argv: list[str], bound_s: float) -> tuple[HeyReport, str]:
    """Run hey once, bounded by `bound_s`; its report and its raw output."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=bound_s)
    if result.returncode != 0:
        raise RuntimeError(f"hey exited with {result.returncode}: {(result.stderr or result.stdout).strip()[:500]}")
    return parse(result.stdout), result.stdout


def warm_up(binary: Path | str, url: str, headers: tuple[str, ...] = ()) -> HeyReport:
    """Connections, the producers' metadata: a few hundred requests, not measured."""
    report, _ = run(command(binary, url, BUY_BODY, 4, requests=WARM_UP_REQUESTS, timeout_s=TIMEOUT_S,
                            headers=headers), bound_s=60)
    return report


def load(binary: Path | str, url: str, concurrency: int, seconds: float, headers: tuple[str, ...] = ()) -> HeyReport:
    """One measured level: `concurrency` keep-alive connections posting BUY_BODY for `seconds`."""
    report, _ = run(command(binary, url, BUY_BODY, concurrency, seconds=seconds, timeout_s=TIMEOUT_S, headers=headers),
                    bound_s=seconds + TIMEOUT_S + 30)
    return report
