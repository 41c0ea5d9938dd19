"""The session's Zipkin and `make trace` (tools/trace.py) against it: spans in the span contract's
shape posted to its real collector come back through its API as one purchase's tree with its
milestones and a PNG waterfall; an unknown id is an error after a bounded wait; Zipkin listens
on 127.0.0.1 only. (The functions' own spans are the subject of the tracing tests.)"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tools.common import ROOT

pytestmark = pytest.mark.integration
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def contract_spans(event_id: str) -> list[dict]:
    """One purchase in a batch of several: buy's trace, and the batch's store trace the consumer
    span names in its purchase.store.* tags (microseconds, Zipkin's JSON v2)."""
    buy, store = uuid.uuid4().hex, uuid.uuid4().hex
    ids = [uuid.uuid4().hex[:16] for _ in range(5)]
    now = int(time.time() * 1e6)

    def span(trace_id, index, name, service, start, duration, kind=None, parent=None, **tags):
        out = {"traceId": trace_id, "id": ids[index], "name": name, "timestamp": now + start, "duration": duration,
               "localEndpoint": {"serviceName": service}, "tags": {k: str(v) for k, v in tags.items()}}
        out.update({"kind": kind} if kind else {}, **({"parentId": ids[parent]} if parent is not None else {}))
        return out

    return [
        span(buy, 0, "POST /api/buy", "buy", 0, 6_000, "SERVER", **{
            "http.route": "/api/buy", "http.response.status_code": 202, "purchase.event_id": event_id}),
        span(buy, 1, "send purchases", "buy", 400, 3_500, "PRODUCER", 0, **{
            "messaging.message.id": event_id, "messaging.destination.name": "purchases",
            "messaging.destination.partition.id": 2, "messaging.kafka.offset": 41}),
        span(buy, 2, "process purchases", "persist-purchase", 9_000, 20_000, "CONSUMER", 1, **{
            "messaging.message.id": event_id, "purchase.outcome": "stored",
            "purchase.store.trace_id": store, "purchase.store.span_id": ids[3]}),
        span(store, 3, "store purchases", "persist-purchase", 10_000, 18_000, **{"purchase.batch.size": 4}),
        span(store, 4, "insert", "persist-purchase", 11_000, 15_000, "CLIENT", 3, **{"db.system": "mongodb"}),
    ]


def run_trace(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.trace", *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_a_purchase_posted_to_zipkin_comes_back_as_one_tree(zipkin, tmp_path):
    event_id = str(uuid.uuid4())
    zipkin.post_spans(contract_spans(event_id))
    png = tmp_path / "waterfall.png"
    result = run_trace(event_id, "--zipkin", zipkin.base_url, "--png", str(png), "--wait", "30")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"purchase {event_id}: 5 spans in 2 trace(s)")
    rows = [re.match(r"\s*[+-][\d.]+ms\s+(?:[\d.]+ ms|open)\s+(.*)", line) for line in lines]
    tree = [row.group(1) for row in rows if row]
    # Zipkin keeps names in lower case; the store trace hangs under the record that names it.
    assert [row.split(" [")[0] for row in tree] == [
        "buy: post /api/buy", "buy: send purchases", "persist-purchase: process purchases",
        "(link) persist-purchase: store purchases", "persist-purchase: insert"]
    milestones = next(line for line in lines if line.startswith("milestones:"))
    assert milestones == ("milestones: accepted +0.0 ms --0.4 ms--> produced +0.4 ms --3.5 ms--> acked +3.9 ms "
                          "--5.1 ms--> consumed +9.0 ms --20.0 ms--> stored +29.0 ms")
    assert lines[-1] == f"waterfall written to {png}"
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_an_unknown_id_is_an_error_after_the_wait(zipkin):
    started = time.monotonic()
    result = run_trace(str(uuid.uuid4()), "--zipkin", zipkin.base_url, "--wait", "2", "--no-png")
    assert result.returncode == 1
    assert "no span names purchase" in result.stderr and result.stdout == ""
    assert 2 <= time.monotonic() - started < 30


def test_the_function_env_points_at_the_sessions_zipkin(pipeline, zipkin):
    assert pipeline.env["OTEL_TRACES_EXPORTER"] == "zipkin_json"
    assert pipeline.env["OTEL_EXPORTER_ZIPKIN_ENDPOINT"] == f"{zipkin.base_url}/api/v2/spans"


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket the process holds (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def test_zipkin_listens_on_loopback_only(servers):
    if not any(p.name == "zipkin" for p in servers.processes):
        pytest.skip("ZIPKIN_URL names a Zipkin this session did not start")
    process = servers.find("zipkin")
    addresses = listening(process.proc.pid)
    assert addresses, "Zipkin holds no listening socket"
    assert {address for address, _ in addresses} <= {"127.0.0.1", "::ffff:127.0.0.1"}, addresses
    assert process.port in {port for _, port in addresses}
