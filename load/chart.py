"""The scale-from-zero timeline of load/scale.sh as one PNG: request rates, consumer lag, replicas
(and pod phases on a cluster) and latency over time, with the cycle's events marked.

matplotlib (Agg backend: no display needed) is imported only when a chart is drawn, so the load
and the sampling never pay for it.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from load import loadgen
from tools.common import ROOT

RUN_DIR = ROOT / ".run"
PHASE_COLOURS = {"Pending": "#f2a541", "Running": "#3c9d5d", "Succeeded": "#8f8f8f", "Failed": "#c0392b",
                 "Unknown": "#b0b0b0", "Terminating": "#7d5ba6"}
KNATIVE_COLOURS = ("#17becf", "#e377c2", "#bcbd22")


def _series(values) -> list[float]:
    """None (no reading that second) as NaN: a gap in the line, not a drop to zero."""
    return [float("nan") if value is None else float(value) for value in values]


def default_path() -> Path:
    return RUN_DIR / f"scale-{dt.datetime.now():%Y%m%d-%H%M%S}.png"


def bucket_latencies(samples, records, offset: float) -> list[dict]:
    """p50/p95 latency (seconds) of the accepted requests started in (previous sample, this sample]."""
    starts = sorted((offset + start, latency) for start, latency, status in records if 200 <= status < 300)
    rows, index = [], 0
    for sample in samples:
        bucket = []
        while index < len(starts) and starts[index][0] <= sample.t:
            bucket.append(starts[index][1])
            index += 1
        rows.append(loadgen.percentiles(bucket, (50, 95)))
    return rows


def events(summary: dict) -> list[tuple[float, str, str]]:
    """(t, label, colour) of each moment of the cycle that happened."""
    marks = [(summary.get("load_started_t"), "load start", "#555555"),
             (None if summary.get("load_started_t") is None
              else summary["load_started_t"] + summary.get("load_wall_s", 0), "load end", "#555555"),
             (summary.get("first_pod_t"), "first pod", "#3c9d5d"),
             (summary.get("first_ready_t"), "first ready", "#2e7d4a"),
             (summary.get("lag_peak_t"), "lag peak", "#c0392b"),
             (summary.get("lag_drained_t"), "drained", "#1f77b4"),
             (summary.get("zero_replicas_t"), "back to 0", "#7d5ba6")]
    return [(t, label, colour) for t, label, colour in marks if t is not None]


def write_chart(path: Path, samples, load_rows, result, load_offset: float, summary: dict, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    times = [s.t for s in samples]
    widths = [max(t - previous, 1e-3) for previous, t in zip([0.0] + times[:-1], times, strict=False)]
    latencies = bucket_latencies(samples, result.records, load_offset)

    figure, (rates, lag, replicas, latency) = pyplot.subplots(
        4, 1, sharex=True, figsize=(10, 9), dpi=100, gridspec_kw={"height_ratios": [3, 2, 2, 2]})
    figure.suptitle(title, fontsize=11)

    # Offered drawn wide and pale underneath: where every request is accepted the lines coincide.
    rates.step(times, _series(row["sent"] / w for row, w in zip(load_rows, widths, strict=False)), where="pre",
               label="offered", color="#aaaaaa", linewidth=4, alpha=0.6)
    rates.step(times, _series(row["accepted"] / w for row, w in zip(load_rows, widths, strict=False)), where="pre",
               label="accepted (2xx)", color="#1f77b4")
    if any(row["failed"] for row in load_rows):
        rates.step(times, _series(row["failed"] / w for row, w in zip(load_rows, widths, strict=False)), where="pre",
                   label="failed", color="#c0392b")
    rates.set_ylabel("requests/s")
    rates.legend(loc="upper right", fontsize=8)

    lag.plot(times, _series(s.lag_total for s in samples), color="#c0392b", label="lag (all partitions)")
    if any(s.keda_lag is not None for s in samples):
        lag.plot(times, _series(s.keda_lag for s in samples), color="#f2a541", linestyle="--", linewidth=1,
                 label="lag as KEDA counts it")
    lag.set_ylabel("consumer lag\n(records)")
    lag.set_ylim(bottom=0)
    lag.legend(loc="upper right", fontsize=8)

    on_cluster = bool(summary.get("cluster"))
    if on_cluster:
        phases = sorted({phase for s in samples for phase in s.pod_phases})
        if phases:
            replicas.stackplot(times, [[s.pod_phases.get(phase, 0) for s in samples] for phase in phases],
                               labels=[f"pods {phase}" for phase in phases], step="pre", alpha=0.35,
                               colors=[PHASE_COLOURS.get(phase, "#b0b0b0") for phase in phases])
        replicas.step(times, _series(s.replicas for s in samples), where="pre", color="#000000",
                      label="persist-purchase replicas (KEDA)")
        replicas.step(times, _series(s.ready_replicas for s in samples), where="pre", color="#3c9d5d",
                      linestyle=":", label="ready")
        services = sorted({name for s in samples for name in s.knative_pods})
        for service, colour in zip(services, KNATIVE_COLOURS, strict=False):
            replicas.step(times, _series(s.knative_pods.get(service) for s in samples), where="pre", color=colour,
                          linewidth=1.5, label=f"{service} pods (Knative, Ready)")
    else:
        replicas.text(0.02, 0.92, "no replica counts: " + (summary.get("cluster_note") or "no cluster reachable")
                      + "\n(the local stack runs one consumer all along; the line is what KEDA would ask for)",
                      transform=replicas.transAxes, ha="left", va="top", fontsize=8, color="#555555",
                      bbox={"facecolor": "white", "edgecolor": "#cccccc", "alpha": 0.9})
    if any(s.keda_desired is not None for s in samples):
        replicas.step(times, _series(s.keda_desired for s in samples), where="pre", color="#f2a541", linestyle="--",
                      linewidth=1, label="KEDA's verdict on the lag")
    replicas.set_ylabel("replicas / pods")
    replicas.set_ylim(bottom=0)
    replicas.yaxis.get_major_locator().set_params(integer=True)
    if replicas.get_legend_handles_labels()[0]:
        replicas.legend(loc="upper right", fontsize=8)

    for point, colour in (("p50", "#1f77b4"), ("p95", "#9467bd")):
        values = _series(None if row[point] is None else row[point] * 1000 for row in latencies)
        latency.plot(times, values, marker=".", markersize=3, color=colour, label=f"{point} (accepted)")
    latency.set_ylabel("latency (ms)")
    latency.set_ylim(bottom=0)
    latency.set_xlabel("seconds since start")
    latency.legend(loc="upper right", fontsize=8)

    end = max(times[-1] if times else 0.0, 1.0) * 1.02
    latency.set_xlim(0, end)
    label_at: list[float] = []  # x of the labels drawn so far on each row above the top panel
    for t, label, colour in sorted(events(summary)):
        for axis in (rates, lag, replicas, latency):
            axis.axvline(t, color=colour, linestyle="--", linewidth=0.8, alpha=0.8)
        # Labels of events close together go on separate rows, so none hides another.
        row = next((i for i, x in enumerate(label_at) if t - x > end * 0.09), len(label_at))
        label_at[row:row + 1] = [t]
        rates.annotate(label, xy=(t, 1.0), xycoords=("data", "axes fraction"), xytext=(2, 2 + 10 * row),
                       textcoords="offset points", fontsize=7, color=colour, ha="left", va="bottom")
    for axis in (rates, lag, replicas, latency):
        axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
    pyplot.close(figure)
    return path
