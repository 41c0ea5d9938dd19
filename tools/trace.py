"""One purchase's trace from Zipkin, as a tree with times and as a PNG waterfall.

    python -m tools.trace <event id> [--zipkin URL] [--png PATH] [--wait S]
    make trace ID=<event id>

The event id is the `id` of buy's 202 answer. The spans are found by it (the `messaging.message.id`
of the producer and consumer spans, the `purchase.event_id` of buy's server span), with every
trace they belong to; a record's consumer span names its batch's store span in
`purchase.store.trace_id`/`purchase.store.span_id` (Zipkin keeps no span links), and that trace is
fetched too. The tree shows each span's start relative to the first span, its duration, service,
kind and key tags; the milestone line says when the purchase was accepted (buy took the request),
produced (the record handed to the Kafka client), acked (the broker's acknowledgement), consumed
(its batch polled) and stored (its batch written; or dead-lettered), with the gaps between them.

Zipkin's URL: --zipkin, else ZIPKIN_URL, else the running stack's (.run/state.json, `make run`).
The SDKs export in batches, so spans arrive a few seconds after the request: the search is
retried for --wait seconds before it says the id is not there.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tools.common import ROOT, apt_install

RUN_DIR = ROOT / ".run"
STATE_FILE = RUN_DIR / "state.json"
# Searches look back this far (Zipkin's default for its UI is 15 minutes).
LOOKBACK_MS = 24 * 3600 * 1000
DEFAULT_WAIT_S = 20.0
# The tags the tree shows, by the short name it shows them under.
KEY_TAGS = (
    ("http.response.status_code", "status"), ("messaging.destination.name", "topic"),
    ("messaging.destination.partition.id", "partition"), ("messaging.kafka.offset", "offset"),
    ("messaging.consumer.group.name", "group"), ("purchase.outcome", "outcome"),
    ("purchase.batch.size", "batch"), ("purchase.batch.inserted", "inserted"),
    ("purchase.batch.duplicates", "duplicates"), ("purchase.dead_letter.reason", "reason"),
    ("db.operation.name", "db.op"), ("db.collection.name", "collection"), ("error.type", "error.type"),
    ("error", "error"),
)
SEARCH_TAGS = ("messaging.message.id", "purchase.event_id")
SERVICE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
MILESTONE_COLOURS = {"accepted": "#555555", "produced": "#1f77b4", "acked": "#2e7d4a", "consumed": "#f2a541",
                     "stored": "#7d5ba6", "dead-lettered": "#c0392b"}


# --- Zipkin's API ------------------------------------------------------------------------------

class ZipkinClient:
    """Zipkin's v2 API at base_url (reads, and a span write for checks of the tooling itself);
    its errors are requests' (RequestException, an OSError)."""

    def __init__(self, base_url: str, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        response = requests.get(f"{self.base_url}{path}", params=params, timeout=self.timeout_s)
        response.raise_for_status()
        return response.json()

    def traces_with_tag(self, key: str, value: str, lookback_ms: int = LOOKBACK_MS,
                        limit: int = 100) -> list[list[dict]]:
        """Every trace holding a span tagged key=value (each trace a list of spans)."""
        end_ts = int(time.time() * 1000) + 60_000  # a little ahead: spans stamped by a later clock
        return self._get("/api/v2/traces", {"annotationQuery": f"{key}={value}", "endTs": end_ts,
                                            "lookback": lookback_ms, "limit": limit})

    def trace(self, trace_id: str) -> list[dict]:
        """One trace's spans ([] when Zipkin has none of it)."""
        response = requests.get(f"{self.base_url}/api/v2/trace/{trace_id}", timeout=self.timeout_s)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return response.json()

    def services(self) -> list[str]:
        return self._get("/api/v2/services")

    def post_spans(self, spans: list[dict]) -> None:
        requests.post(f"{self.base_url}/api/v2/spans", json=spans, timeout=self.timeout_s).raise_for_status()


def purchase_spans(client: ZipkinClient, event_id: str) -> list[dict]:
    """Every span of the traces the purchase's spans are in, and of the store traces they name."""
    spans: list[dict] = []
    for key in SEARCH_TAGS:
        for trace in client.traces_with_tag(key, event_id):
            spans.extend(trace)
    known = {span["traceId"] for span in spans}
    for trace_id in sorted(store_trace_ids(spans) - known):
        spans.extend(client.trace(trace_id))
    return unique(spans)


def store_trace_ids(spans: Iterable[dict]) -> set[str]:
    return {tags(span)["purchase.store.trace_id"] for span in spans if "purchase.store.trace_id" in tags(span)}


def unique(spans: Iterable[dict]) -> list[dict]:
    """Each span once (two searches find the same trace)."""
    seen: dict[tuple[str, str], dict] = {}
    for span in spans:
        seen.setdefault(key_of(span), span)
    return list(seen.values())


# --- the tree and the milestones (pure: Zipkin-shaped dicts in, plain values out) ---------------

def tags(span: dict) -> dict[str, str]:
    return span.get("tags") or {}


def key_of(span: dict) -> tuple[str, str]:
    # Zipkin pads nothing: a 64-bit trace id stays 16 hex digits; ids compare in lower case.
    return span["traceId"].lower(), span["id"].lower()


def service(span: dict) -> str:
    return (span.get("localEndpoint") or {}).get("serviceName") or "?"


def kind(span: dict) -> str:
    return span.get("kind") or "INTERNAL"


def start_us(span: dict) -> int:
    return int(span.get("timestamp") or 0)


def end_us(span: dict) -> int:
    return start_us(span) + int(span.get("duration") or 0)


@dataclass
class Node:
    """A span in the tree; `linked`: attached through the purchase.store.* tags, not a parent id."""
    span: dict
    children: list[Node] = field(default_factory=list)
    linked: bool = False


def build_tree(spans: list[dict]) -> list[Node]:
    """The spans as trees: each under its parent (same trace), a store trace's root under the
    first consumer span that names it; the roots and every node's children by start time."""
    nodes = {key_of(span): Node(span) for span in unique(spans)}
    roots: list[Node] = []
    for key, node in nodes.items():
        parent_id = node.span.get("parentId")
        parent = nodes.get((key[0], parent_id.lower())) if parent_id else None
        if parent is not None:
            parent.children.append(node)
        else:
            roots.append(node)
    by_time = sorted(nodes.values(), key=lambda n: (start_us(n.span), n.span["id"]))
    for root in list(roots):
        naming = next((n for n in by_time if n is not root and (
            tags(n.span).get("purchase.store.trace_id", "").lower(),
            tags(n.span).get("purchase.store.span_id", "").lower()) == key_of(root.span)), None)
        if naming is not None and not _within(root, naming):
            root.linked = True
            naming.children.append(root)
            roots.remove(root)
    for node in nodes.values():
        node.children.sort(key=lambda n: (start_us(n.span), n.span["id"]))
    return sorted(roots, key=lambda n: (start_us(n.span), n.span["id"]))


def _within(node: Node, other: Node) -> bool:
    """Whether other is node or below it (no cycle when two store spans name each other's trace)."""
    return other is node or any(_within(child, other) for child in node.children)


def walk(roots: list[Node], depth: int = 0) -> Iterable[tuple[int, Node]]:
    """(depth, node) in display order: each node before its children."""
    for node in roots:
        yield depth, node
        yield from walk(node.children, depth + 1)


@dataclass(frozen=True)
class Milestone:
    label: str
    t_us: int | None  # absolute, Zipkin's microseconds; None when the trace lacks the span


def _first(spans: list[dict], predicate) -> dict | None:
    matching = sorted((s for s in spans if predicate(s)), key=start_us)
    return matching[0] if matching else None


def milestones(spans: list[dict], event_id: str | None = None) -> list[Milestone]:
    """accepted -> produced -> acked -> consumed -> stored (or dead-lettered) of one purchase."""
    def about(span: dict) -> bool:
        ids = {tags(span).get("messaging.message.id"), tags(span).get("purchase.event_id")}
        return event_id is None or event_id in ids

    server = _first(spans, lambda s: kind(s) == "SERVER" and about(s))
    producer = _first(spans, lambda s: kind(s) == "PRODUCER" and about(s)
                      and "purchase.dead_letter.reason" not in tags(s))
    # A redelivered record has a consumer span per delivery: the one that stored it (or dead-lettered
    # it) is the purchase's; a duplicate's delivery came later.
    consumers = [s for s in spans if kind(s) == "CONSUMER" and about(s)]
    final = _first(consumers, lambda s: tags(s).get("purchase.outcome") in ("stored", "dead_lettered")) \
        or _first(consumers, lambda s: True)
    outcome = tags(final).get("purchase.outcome") if final else None
    return [
        Milestone("accepted", start_us(server) if server else None),
        Milestone("produced", start_us(producer) if producer else None),
        Milestone("acked", end_us(producer) if producer and producer.get("duration") else None),
        Milestone("consumed", start_us(final) if final else None),
        Milestone("dead-lettered" if outcome == "dead_lettered" else "stored",
                  end_us(final) if final and final.get("duration") else None),
    ]


def origin_us(spans: list[dict]) -> int:
    return min((start_us(s) for s in spans), default=0)


def ms(t_us: int, origin: int) -> float:
    return (t_us - origin) / 1000


def milestone_line(marks: list[Milestone], origin: int) -> str:
    """`accepted +0.0 ms --0.4 ms--> produced +0.4 ms --...`; a missing one is `?` and has no gap."""
    parts: list[str] = []
    previous: int | None = None
    for index, mark in enumerate(marks):
        if index:
            gap = f"{(mark.t_us - previous) / 1000:.1f} ms" if mark.t_us is not None and previous is not None else "?"
            parts.append(f" --{gap}--> ")
        parts.append(f"{mark.label} " + (f"+{ms(mark.t_us, origin):.1f} ms" if mark.t_us is not None else "?"))
        previous = mark.t_us
    return "".join(parts)


def key_tags(span: dict) -> str:
    found = tags(span)
    return " ".join(f"{short}={found[name]}" for name, short in KEY_TAGS if name in found)


def span_label(span: dict) -> str:
    return f"{service(span)}: {span.get('name') or '?'}"


def tree_lines(roots: list[Node], origin: int) -> list[str]:
    lines = [f"{'start':>10} {'duration':>10}  span"]
    for depth, node in walk(roots):
        span = node.span
        duration = f"{int(span['duration']) / 1000:.1f} ms" if span.get("duration") else "open"
        marker = "(link) " if node.linked else ""
        line = (f"{ms(start_us(span), origin):>+8.1f}ms {duration:>10}  {'  ' * depth}{marker}{span_label(span)}"
                f" [{kind(span)}]")
        extra = key_tags(span)
        lines.append(f"{line}  {extra}" if extra else line)
    return lines


def report(event_id: str, spans: list[dict]) -> str:
    roots = build_tree(spans)
    origin = origin_us(spans)
    traces = sorted({span["traceId"] for span in spans})
    started = dt.datetime.fromtimestamp(origin / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    head = [f"purchase {event_id}: {len(spans)} spans in {len(traces)} trace(s) ({', '.join(traces)}), "
            f"first span at {started} UTC", ""]
    return "\n".join(head + tree_lines(roots, origin)
                     + ["", "milestones: " + milestone_line(milestones(spans, event_id), origin)])


# --- the waterfall -----------------------------------------------------------------------------

def default_png(event_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in event_id)[:64]
    return RUN_DIR / f"trace-{safe}-{dt.datetime.now():%Y%m%d-%H%M%S}.png"


def write_waterfall(path: Path, event_id: str, spans: list[dict]) -> Path:
    """One bar per span (tree order, top to bottom) from its start to its end, bar and label
    coloured by service, with the milestones as dashed lines across."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(walk(build_tree(spans)))
    origin = origin_us(spans)
    marks = [m for m in milestones(spans, event_id) if m.t_us is not None]
    services = sorted({service(node.span) for _, node in rows})
    colours = {name: SERVICE_COLOURS[i % len(SERVICE_COLOURS)] for i, name in enumerate(services)}
    end = max([ms(end_us(node.span), origin) for _, node in rows] + [ms(m.t_us, origin) for m in marks if m.t_us]
              + [0.001])

    figure, axis = pyplot.subplots(figsize=(10, 1.6 + 0.32 * max(len(rows), 1)), dpi=100)
    figure.suptitle(f"purchase {event_id}\n{milestone_line(milestones(spans, event_id), origin)}", fontsize=9)
    labels = []
    for row, (depth, node) in enumerate(rows):
        span = node.span
        start, width = ms(start_us(span), origin), int(span.get("duration") or 0) / 1000
        colour = colours[service(span)]
        axis.barh(row, max(width, end * 0.002), left=start, height=0.6, color=colour,
                  alpha=0.55 if node.linked else 0.9, hatch="//" if node.linked else None, edgecolor=colour)
        axis.annotate(f"{width:.1f} ms" if span.get("duration") else "open", xy=(start + width, row),
                      xytext=(3, 0), textcoords="offset points", va="center", ha="left", fontsize=7)
        labels.append(f"{'  ' * depth}{'(link) ' if node.linked else ''}{span_label(span)} [{kind(span)}]")
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels(labels, fontsize=8)
    for tick, (_, node) in zip(axis.get_yticklabels(), rows, strict=True):
        tick.set_color(colours[service(node.span)])
        tick.set_horizontalalignment("left")
    # Left-aligned labels keep the tree's indentation; padded by the widest, drawn once to measure it.
    figure.canvas.draw()
    widest_px = max((tick.get_window_extent().width for tick in axis.get_yticklabels()), default=0.0)
    axis.tick_params(axis="y", pad=widest_px * 72 / figure.dpi + 4, length=0)
    axis.set_ylim(len(rows) - 0.5, -0.5)
    axis.set_xlim(0, end * 1.12)
    axis.set_xlabel("ms since the first span")
    label_at: list[float] = []
    for mark in sorted(marks, key=lambda m: m.t_us or 0):
        t = ms(mark.t_us or origin, origin)
        colour = MILESTONE_COLOURS.get(mark.label, "#555555")
        axis.axvline(t, color=colour, linestyle="--", linewidth=0.8, alpha=0.8)
        # Labels of milestones close together go on separate rows, so none hides another.
        row = next((i for i, x in enumerate(label_at) if t - x > end * 0.09), len(label_at))
        label_at[row:row + 1] = [t]
        axis.annotate(mark.label, xy=(t, 1.0), xycoords=("data", "axes fraction"), xytext=(2, 2 + 10 * row),
                      textcoords="offset points", fontsize=7, color=colour, ha="left", va="bottom")
    axis.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
    pyplot.close(figure)
    return path


# --- the command -------------------------------------------------------------------------------

def zipkin_url(explicit: str | None) -> str:
    """--zipkin > ZIPKIN_URL > the running stack's (.run/state.json)."""
    if explicit or os.environ.get("ZIPKIN_URL"):
        return (explicit or os.environ["ZIPKIN_URL"]).rstrip("/")
    if STATE_FILE.exists():
        url = json.loads(STATE_FILE.read_text()).get("zipkin_url")
        if url:
            return str(url)
    raise SystemExit("no Zipkin to ask: start the stack with `make run` (or `make up`), or set ZIPKIN_URL")


def wait_for_purchase(client: ZipkinClient, event_id: str, wait_s: float, interval_s: float = 1.0) -> list[dict]:
    """The purchase's spans once its last milestone is there, or what there is after wait_s
    ([] when nothing names the id)."""
    deadline = time.monotonic() + wait_s
    while True:
        spans = purchase_spans(client, event_id)
        marks = milestones(spans, event_id)
        if spans and all(m.t_us is not None for m in marks) and store_trace_ids(spans) <= {
                s["traceId"] for s in spans}:
            return spans
        if time.monotonic() >= deadline:
            return spans
        time.sleep(interval_s)


# Chromium's background services (updates, metrics, sync) stay off: it fetches the one page only.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-domain-reliability", "--disable-extensions",
                  "--window-size=1500,900", "--virtual-time-budget=15000")
SCREENSHOT_TIMEOUT_S = 90


def screenshot(client: ZipkinClient, trace_id: str, path: Path) -> Path:
    """Zipkin's UI page of one trace, rendered by headless Chromium into path."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None and apt_install("chromium"):
        browser = shutil.which("chromium")
    if browser is None:
        raise SystemExit("trace: --screenshot needs Chromium (apt-get install chromium)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={path.resolve()}",
                        f"{client.base_url}/zipkin/traces/{trace_id}"],
                       check=True, capture_output=True, timeout=SCREENSHOT_TIMEOUT_S)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.trace", description=__doc__.split("\n\n")[0])
    parser.add_argument("event_id", help="the purchase's event id (the `id` of buy's 202 answer)")
    parser.add_argument("--zipkin", default=None,
                        help="Zipkin's base URL (default ZIPKIN_URL, then the running stack's)")
    parser.add_argument("--png", default=None, type=Path,
                        help="where to draw the waterfall (default .run/trace-<id>-<date>-<time>.png)")
    parser.add_argument("--no-png", action="store_true", help="print the tree only")
    parser.add_argument("--screenshot", default=None, type=Path,
                        help="also save Zipkin's own page of the purchase's trace as a PNG, taken by a headless "
                             "Chromium (Debian's chromium package)")
    parser.add_argument("--wait", type=float, default=DEFAULT_WAIT_S,
                        help=f"seconds to wait for the spans to arrive (default {DEFAULT_WAIT_S:g})")
    args = parser.parse_args(argv)
    if not args.event_id.strip():
        parser.error("an event id is needed: make trace ID=<the id of buy's 202 answer>")
    client = ZipkinClient(zipkin_url(args.zipkin))
    try:
        spans = wait_for_purchase(client, args.event_id, args.wait)
    except OSError as exc:
        print(f"trace: Zipkin at {client.base_url} did not answer: {exc}", file=sys.stderr)
        return 2
    if not spans:
        print(f"trace: no span names purchase {args.event_id} in Zipkin at {client.base_url} after {args.wait:g}s "
              "(a wrong id, a purchase older than Zipkin's in-memory store, a purchase past buy's "
              "TRACES_PER_SECOND that its caller sent no traceparent for, or functions started without "
              "OTEL_EXPORTER_ZIPKIN_ENDPOINT)", file=sys.stderr)
        return 1
    print(report(args.event_id, spans))
    if not args.no_png:
        try:
            path = write_waterfall(args.png or default_png(args.event_id), args.event_id, spans)
        except ImportError as exc:
            print(f"trace: no waterfall ({exc}); `make venv` installs matplotlib", file=sys.stderr)
        else:
            print(f"\nwaterfall written to {path}")
    if args.screenshot:
        trace_id = min(spans, key=start_us)["traceId"]
        print(f"Zipkin's page of the trace written to {screenshot(client, trace_id, args.screenshot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
