"""What buy's spans cost per request, in process: the server and producer spans, the
CloudEvent's traceparent and the 202's, timed as CPU per request for each way of running.

    python -m bench.tracing [--requests 20000] [--zipkin http://127.0.0.1:9411]

off: no exporter (the functions make no span); untraced: an exporter, but the request is past
its TRACES_PER_SECOND budget (what most requests of a busy buy cost: a header lookup and the
budget's check); unsampled: the SDK's sampler says no (OTEL_TRACES_SAMPLER=always_off: a span
made and dropped); sampled: every span recorded and queued, the exporter discarding them;
exported: also encoded and posted to a real Zipkin, the batch thread's CPU included (measured
after the queue is flushed). bench.ab measures the same on the running server, where the
machine's noise is larger than these differences.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from purchase_common import config, tracing

from bench.common import say

HEADERS = {"content-type": "application/json"}


class Discard(SpanExporter):
    def export(self, spans: Sequence[object]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def buy_spans(t: tracing.Tracing, requests: int) -> None:
    """buy's span work for ``requests`` purchases, as Buy.handle and Buy._send do it."""
    for _ in range(requests):
        context = t.request_context(HEADERS)
        if context is None:
            continue
        with t.server_span("POST", "/api/buy", "/api/buy", context) as server:
            server.set_attributes({"purchase.event_id": "0b9d6a4e-9f5b-4c47-8f0e", "purchase.user_id": "u1"})
            send = t.producer_span("purchases", "0b9d6a4e-9f5b-4c47-8f0e", b"u1")
            tracing.cloudevent_headers(send)
            tracing.delivered(send, 3, 12345)
            send.end()
            tracing.answered(server, 202)
            tracing.traceparent(server)


def measure(mode: str, requests: int, zipkin: str) -> float:
    env = {} if mode == "off" else {"OTEL_EXPORTER_ZIPKIN_ENDPOINT": f"{zipkin}/api/v2/spans"}
    env["TRACES_PER_SECOND"] = "0" if mode == "untraced" else "inf"
    os.environ["OTEL_TRACES_SAMPLER"] = "always_off" if mode == "unsampled" else "parentbased_always_on"
    t = tracing.Tracing(config.load(env), "buy")
    if mode in ("untraced", "unsampled", "sampled") and t._processor is not None:
        t._processor.span_exporter.shutdown()
        t._processor._batch_processor._exporter = Discard()  # the queue and its thread stay the SDK's
    started = time.process_time()
    buy_spans(t, requests)
    t.shutdown()
    return (time.process_time() - started) / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--zipkin", default="", help="a running Zipkin's base URL; unset: the exported row is skipped")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    modes = ["off", "untraced", "unsampled", "sampled"] + (["exported"] if args.zipkin else [])
    results = {}
    for mode in modes:
        say(f"tracing {mode}: {args.requests} purchases' spans")
        results[mode] = measure(mode, args.requests, args.zipkin.rstrip("/"))
    print(f"{'mode':10} {'CPU us/request':>15}")
    for mode, us in results.items():
        print(f"{mode:10} {us:15.1f}")
    traced = results.get("exported", results["sampled"])
    budget = config.load({}).traces_per_second
    print(f"\nat the default budget ({budget:g} traces a second per process), per request at a process's rate:")
    results["at_default_budget"] = {}
    for rate in (50, 200, 1000, 2000):
        us = results["untraced"] + min(1.0, budget / rate) * (traced - results["untraced"])
        results["at_default_budget"][rate] = us
        print(f"{rate:>6} req/s {us:8.1f} us")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"cpu_us_per_request": results, "requests": args.requests}, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
