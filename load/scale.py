"""The engine of load/scale.sh: bounded purchase load, a per-second sample of lag and replicas,
and a timeline/summary of the scale-from-zero cycle. `load/scale.sh --help` lists the flags."""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from purchase_common import config

from load import chart, loadgen
from load.sampler import DeploymentWatch, Sampler
from tools import keda_scaler, lag_reader

DEFAULT_URL = "http://localhost:8080"
DEFAULT_HOST = "purchase.local"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="load/scale.sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Send bounded purchase load through the ingress (or the local gateway) and watch the\n"
            "persist-purchase consumer scale: each second it samples requests sent/accepted/failed,\n"
            "the consumer group's lag per partition (from the broker) with KEDA's verdict on it, and,\n"
            "when kubectl reaches a cluster, the deployment's replicas and pod phases. It ends with a\n"
            "timeline, a summary and a PNG chart of the timeline (--chart). Against the local stack\n"
            "(`make run`) it reports throughput and lag drain, and says that replica counts need a cluster."),
        epilog=(
            "examples:\n"
            "  load/scale.sh                                  # 2000 requests, 16 at a time, via :8080\n"
            "  load/scale.sh -n 20000 -c 64 -d 120 --json run.json\n"
            "  load/scale.sh --url http://127.0.0.1:8091 --host '' --rate 500 -d 30   # buy directly, paced\n"
            "  make load LOAD_ARGS='-n 5000 -c 32'\n"
            "Every wait is bounded: the load by -n/-d, the drain by --drain-timeout, the return to zero\n"
            "replicas by --zero-timeout; each request has --timeout."))
    load = parser.add_argument_group("load")
    load.add_argument("-n", "--requests", type=int, default=2000, help="total requests (default 2000)")
    load.add_argument("-c", "--concurrency", type=int, default=16, help="requests in flight (default 16)")
    load.add_argument("-d", "--duration", type=float, default=60,
                      help="upper bound on the load phase in seconds (default 60, at most 3600)")
    load.add_argument("-u", "--url", default=None,
                      help=f"target base URL (default {DEFAULT_URL}, or the gateway port in .run/state.json)")
    load.add_argument("--host", default=DEFAULT_HOST,
                      help=f"Host header (default {DEFAULT_HOST}; '' sends the URL's host)")
    load.add_argument("--path", default="/api/buy", help="request path (default /api/buy)")
    load.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                      help="extra request header, repeatable")
    load.add_argument("--rate", type=float, default=None,
                      help="pace to this many requests/s (default: as fast as possible)")
    load.add_argument("--users", type=int, default=1000, help="distinct userIds in the bodies (default 1000)")
    load.add_argument("--timeout", type=float, default=10, help="per-request timeout in seconds (default 10)")
    load.add_argument("--tool", choices=("auto", "hey", "python"), default="auto",
                      help="load generator: hey when installed (auto), else the bounded Python one; hey "
                           "sends one fixed body (one userId, one partition), python varies --users")
    load.add_argument("--allow-remote", action="store_true",
                      help="allow a target that is not a loopback address (refused by default)")
    watch = parser.add_argument_group("watching")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    watch.add_argument("--drain-timeout", type=float, default=180,
                       help="after the load, wait at most this long for lag 0 (default 180)")
    watch.add_argument("--zero-timeout", type=float, default=None,
                       help="after the drain, wait at most this long for 0 replicas (default: the ScaledObject's "
                            "cooldownPeriod + pollingInterval + 60 s; 0 skips; at most 1800)")
    watch.add_argument("--namespace", default="purchase", help="Kubernetes namespace (default purchase)")
    watch.add_argument("--deployment", default="persist-purchase",
                       help="consumer deployment (default persist-purchase)")
    watch.add_argument("--context", default=None, help="kubectl context (default: the current one)")
    watch.add_argument("--knative-service", action="append", default=[], metavar="NAME",
                       help="also count the Ready pods of this Knative Service (repeatable; e.g. buy)")
    watch.add_argument("--bootstrap", default=None,
                       help="Kafka bootstrap for lag (default: KAFKA_BOOTSTRAP_SERVERS, .run/state.json, "
                            "127.0.0.1:9092;"
                            " on a cluster use a port-forward)")
    watch.add_argument("--topic", default=None, help="topic (default: PURCHASES_TOPIC or purchases)")
    watch.add_argument("--group", default=None, help="consumer group (default: CONSUMER_GROUP or persist-purchase)")
    watch.add_argument("--manifest", default=None, help="ScaledObject YAML for KEDA's verdict (default: k8s/keda/)")
    out = parser.add_argument_group("output")
    out.add_argument("--csv", default=None, metavar="FILE", help="write the per-second samples as CSV")
    out.add_argument("--json", default=None, metavar="FILE", help="write samples and summary as JSON")
    out.add_argument("-q", "--quiet", action="store_true", help="no per-second lines, only the summary")
    out.add_argument("--chart", default=None, metavar="FILE",
                     help="write the timeline as a PNG chart here (default .run/scale-<date>-<time>.png)")
    out.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.duration <= 0:
        parser.error("--requests, --concurrency and --duration must be positive")
    args.duration = min(args.duration, 3600)
    args.concurrency = min(args.concurrency, args.requests, 1024)
    return args


def default_url() -> str:
    state = lag_reader.read_state()
    for process in state.get("processes", []):
        if process.get("name") == "gateway" and process.get("port"):
            return f"http://localhost:{process['port']}"
    return DEFAULT_URL


def per_sample_load(samples, records, offset: float) -> list[dict]:
    """Requests started in (previous sample, this sample], by outcome."""
    starts = sorted((offset + start, status) for start, _, status in records)
    rows, index = [], 0
    cumulative = {"sent": 0, "accepted": 0, "failed": 0}
    for sample in samples:
        bucket = {"sent": 0, "accepted": 0, "failed": 0}
        while index < len(starts) and starts[index][0] <= sample.t:
            status = starts[index][1]
            bucket["sent"] += 1
            bucket["accepted" if 200 <= status < 300 else "failed"] += 1
            index += 1
        for key in cumulative:
            cumulative[key] += bucket[key]
        rows.append({**bucket, **{f"total_{k}": v for k, v in cumulative.items()}})
    return rows


def summarize(samples, load_rows, result, load_offset: float, load_end_t: float, kube, settings) -> dict:
    counts = result.counts()
    accepted_latencies = [lat for _, lat, status in result.records if 200 <= status < 300]
    lat = loadgen.percentiles(accepted_latencies)
    lag_samples = [s for s in samples if s.lag_total is not None]
    peak = max(lag_samples, key=lambda s: (s.lag_total, -s.t), default=None)
    drained = next((s for s in samples if s.t >= load_end_t and s.lag_total is not None and s.drained), None)
    summary = {
        "tool": result.tool, "note": result.note,
        "load_started_t": round(load_offset, 2), "load_wall_s": round(result.wall_s, 2),
        **counts,
        "accepted_per_s": round(counts["accepted"] / result.wall_s, 1) if result.wall_s > 0 else None,
        "latency_ms": {k: (None if v is None else round(v * 1000, 2)) for k, v in lat.items()},
        "lag_peak": peak.lag_total if peak else None, "lag_peak_t": peak.t if peak else None,
        "lag_drained_t": drained.t if drained else None,
        "drain_after_load_s": round(drained.t - load_end_t, 2) if drained else None,
        "cluster": bool(kube and kube.reachable),
        "cluster_note": "" if kube and kube.reachable else (kube.reason if kube else "not checked"),
        "keda_settings_source": settings.source,
    }
    if kube and kube.reachable:
        with_pods = [s for s in samples if (s.pods or 0) > 0 or (s.replicas or 0) > 0]
        ready = [s for s in samples if (s.ready_replicas or 0) > 0]
        first = with_pods[0] if with_pods else None
        peak_r = max(samples, key=lambda s: max(s.replicas or 0, s.pods or 0), default=None)
        after = drained.t if drained else load_end_t
        zero = next((s for s in samples if s.t >= after and s.replicas == 0 and not s.pods), None)
        summary.update({
            "initial_replicas": samples[0].replicas if samples else None,
            "first_pod_t": first.t if first else None,
            "first_pod_after_load_start_s": round(first.t - load_offset, 2) if first else None,
            "first_ready_t": ready[0].t if ready else None,
            "peak_replicas": max(peak_r.replicas or 0, peak_r.pods or 0) if peak_r else None,
            "peak_replicas_t": peak_r.t if peak_r else None,
            "peak_knative_pods": {name: max((s.knative_pods.get(name, 0) for s in samples), default=0)
                                  for name in kube.knative_services},
            "zero_replicas_t": zero.t if zero else None,
            "zero_after_drain_s": round(zero.t - after, 2) if zero else None,
        })
    return summary


def print_summary(summary: dict, samples) -> None:
    print("\ntimeline (seconds since start)")
    events = [(summary["load_started_t"], "load started")]
    if summary.get("first_pod_t") is not None:
        events.append((summary["first_pod_t"], "first persist-purchase pod"))
    if summary.get("first_ready_t") is not None:
        events.append((summary["first_ready_t"], "first pod ready"))
    events.append((summary["load_started_t"] + summary["load_wall_s"],
                   f"load finished: {summary['sent']} sent, {summary['accepted']} accepted, "
                   f"{summary['failed']} failed"))
    if summary["lag_peak"] is not None:
        events.append((summary["lag_peak_t"], f"lag peak {summary['lag_peak']}"))
    if summary.get("peak_replicas"):
        events.append((summary["peak_replicas_t"], f"peak replicas {summary['peak_replicas']}"))
    if summary["lag_drained_t"] is not None:
        events.append((summary["lag_drained_t"], "lag drained to 0"))
    if summary.get("zero_replicas_t") is not None:
        events.append((summary["zero_replicas_t"], "back to 0 replicas"))
    for t, text in sorted(events, key=lambda e: e[0]):
        print(f"  {t:7.1f}  {text}")
    lat = summary["latency_ms"]
    print("\nsummary")
    print(f"  generator            {summary['tool']}" + (f" ({summary['note']})" if summary["note"] else ""))
    print(f"  requests             {summary['sent']} sent, {summary['accepted']} accepted, {summary['failed']} failed "
          f"(statuses {summary['statuses']})")
    print(f"  accepted req/s       {summary['accepted_per_s']} over {summary['load_wall_s']}s")
    print(f"  latency (accepted)   p50 {lat['p50']} ms  p95 {lat['p95']} ms  p99 {lat['p99']} ms")
    print(f"  lag                  peak {summary['lag_peak']}; drained to 0 "
          + (f"{summary['drain_after_load_s']}s after the load ended" if summary["lag_drained_t"] is not None
             else "not within --drain-timeout"))
    if summary["cluster"]:
        print(f"  scale from zero      initial replicas {summary['initial_replicas']}; first pod "
              + (f"{summary['first_pod_after_load_start_s']}s after the load started"
                 if summary["first_pod_t"] is not None
                 else "never"))
        print(f"  peak replicas        {summary['peak_replicas']}")
        for name, peak in summary["peak_knative_pods"].items():
            print(f"  peak {name} pods{' ' * max(1, 11 - len(name))}{peak} (Knative, Ready)")
        print("  back to 0 replicas   " + (f"{summary['zero_after_drain_s']}s after the drain"
                                         if summary["zero_replicas_t"] is not None else "not within --zero-timeout"))
    else:
        print(f"  replicas             replica counts need a cluster: {summary['cluster_note']}")
    errors = [s for s in samples if s.error]
    if errors:
        print(f"  sampling errors      {len(errors)} samples, last: {errors[-1].error[:200]}")


def write_outputs(args, samples, load_rows, summary, config: dict) -> None:
    partitions = sorted({p for s in samples for p in s.lag_by_partition})
    rows = []
    for sample, load in zip(samples, load_rows, strict=False):
        row = {"t": sample.t, "phase": sample.phase, **load, "lag_total": sample.lag_total,
               **{f"lag_p{p}": sample.lag_by_partition.get(p) for p in partitions},
               "keda_lag": sample.keda_lag, "keda_active": sample.keda_active, "keda_desired": sample.keda_desired,
               "replicas": sample.replicas, "ready_replicas": sample.ready_replicas,
               "deployment_spec_replicas": sample.desired_replicas,
               "pod_phases": ";".join(f"{k}={v}" for k, v in sorted(sample.pod_phases.items())),
               **{f"knative_ready_pods_{name}": count for name, count in sorted(sample.knative_pods.items())},
               "error": sample.error}
        rows.append(row)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()) if rows else ["t"])
            writer.writeheader()
            writer.writerows(rows)
        print(f"samples written to {args.csv}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": config, "summary": summary, "samples": rows}, indent=2))
        print(f"samples and summary written to {args.json}")


def draw_chart(args, samples, load_rows, result, load_offset, summary, target, tool) -> str | None:
    """The timeline as a PNG; a missing matplotlib or a drawing error costs the chart, not the run."""
    path = Path(args.chart) if args.chart else chart.default_path()
    title = (f"load/scale.sh: {summary['sent']} requests ({tool}, concurrency {args.concurrency}) to "
             f"{target.full_url}; {summary['accepted']} accepted")
    try:
        return str(chart.write_chart(path, samples, load_rows, result, load_offset, summary, title))
    except ImportError as exc:
        print(f"scale.sh: no chart ({exc}); `make venv` installs matplotlib", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"scale.sh: chart not written: {type(exc).__name__}: {exc}", file=sys.stderr)
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    target = loadgen.Target(args.url or default_url(), args.host or None, args.path,
                            {name.strip(): value.strip() for name, value in (h.split(":", 1) for h in args.header)})
    if not args.allow_remote and not target.is_loopback():
        print(f"scale.sh: {target.host} is not a loopback address; pass --allow-remote to load a remote target",
              file=sys.stderr)
        return 2
    try:
        settings = keda_scaler.load_settings(args.manifest)
    except ValueError as exc:
        print(f"scale.sh: {exc}; using KEDA's defaults for the verdict", file=sys.stderr)
        settings = keda_scaler.ScalerSettings()
    bootstrap = args.bootstrap or lag_reader.default_bootstrap()
    topic, group = args.topic or config.settings().purchases_topic, args.group or config.settings().consumer_group
    kube = DeploymentWatch(args.namespace, args.deployment, args.context, tuple(args.knative_service))
    zero_timeout = args.zero_timeout
    if zero_timeout is None:
        zero_timeout = settings.cooldown_period_s + settings.polling_interval_s + 60
    zero_timeout = min(max(zero_timeout, 0), 1800)
    generator = loadgen.choose(args.tool, target, requests=args.requests, concurrency=args.concurrency,
                               duration_s=args.duration, timeout_s=args.timeout, rate=args.rate, users=args.users)

    print(f"target      {target.full_url}  Host: {target.header_host}")
    print(f"load        {generator.tool}: {args.requests} requests, concurrency {args.concurrency}, "
          f"at most {args.duration:.0f}s" + (f", paced to {args.rate:g} req/s" if args.rate else ""))
    if generator.tool == "hey":
        print("            (hey sends one fixed body: one userId, so one partition; --tool python spreads "
              f"{args.users} users over all partitions)")
    print(f"lag         topic {topic}, group {group} on {bootstrap}; KEDA settings from {settings.source}")
    print("replicas    " + (f"deployment {args.namespace}/{args.deployment} via kubectl" if kube.reachable
                             else f"replica counts need a cluster ({kube.reason})"))
    print(f"waits       drain <= {args.drain_timeout:.0f}s"
          + (f", back to zero <= {zero_timeout:.0f}s" if kube.reachable else ""))
    print()

    def live(sample):
        if args.quiet:
            return
        done = len(generator.result.records) if generator.result is not None and generator.tool == "python" else None
        lag = "n/a" if sample.lag_total is None else str(sample.lag_total)
        parts = ",".join(str(v) for _, v in sorted(sample.lag_by_partition.items()))
        keda = "" if sample.keda_active is None else \
            f" | KEDA {'active' if sample.keda_active else 'idle'} -> {sample.keda_desired}"
        pods = ""
        if sample.replicas is not None:
            phases = " ".join(f"{k}:{v}" for k, v in sorted(sample.pod_phases.items()))
            pods = f" | replicas {sample.replicas} ready {sample.ready_replicas} [{phases}]"
            pods += "".join(f" | {name} pods {count}" for name, count in sorted(sample.knative_pods.items()))
        sent = f" | sent {done}" if done is not None else ""
        print(f"t={sample.t:6.1f}s {sample.phase:<10}{sent} | lag {lag} ({parts}){keda}{pods}"
              + (f" | {sample.error[:80]}" if sample.error else ""), flush=True)

    sampler = Sampler(bootstrap, topic, group, settings, kube, args.interval, on_sample=live)
    sampler.start(max_seconds=args.duration + args.timeout + args.drain_timeout + zero_timeout + 60)
    try:
        time.sleep(min(args.interval, 1.0))  # one sample before the load: the starting point
        load_offset = time.monotonic() - sampler.started
        result = generator.run()
        load_end_t = time.monotonic() - sampler.started
        sampler.phase = "drain"
        drained = sampler.wait_until(lambda s: s.lag_total is not None and s.drained, args.drain_timeout)
        if kube.reachable and zero_timeout > 0:
            sampler.phase = "to-zero"
            if drained is None or not (drained.replicas == 0 and not drained.pods):
                sampler.wait_until(lambda s: s.replicas == 0 and not s.pods, zero_timeout)
    except KeyboardInterrupt:
        print("\ninterrupted; summarizing what was sampled", file=sys.stderr)
        result = generator.result or loadgen.LoadResult(generator.tool, time.monotonic())
        load_offset = load_end_t = time.monotonic() - sampler.started
    finally:
        if hasattr(generator, "stop"):
            generator.stop.set()
        sampler.stop()
    samples = list(sampler.samples)
    load_rows = per_sample_load(samples, result.records, load_offset)
    summary = summarize(samples, load_rows, result, load_offset, load_end_t, kube, settings)
    summary["chart"] = None if args.no_chart else draw_chart(args, samples, load_rows, result, load_offset,
                                                             summary, target, generator.tool)
    print_summary(summary, samples)
    write_outputs(args, samples, load_rows, summary, {
        "url": target.full_url, "host": target.header_host, "requests": args.requests,
        "concurrency": args.concurrency, "duration_s": args.duration, "rate": args.rate, "tool": generator.tool,
        "bootstrap": bootstrap, "topic": topic, "group": group, "namespace": args.namespace,
        "deployment": args.deployment})
    if summary["chart"]:
        print(f"chart written to {summary['chart']}")
    return 0 if summary["accepted"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
