"""`make lag`: the consumer group's lag per partition, and what KEDA's kafka scaler concludes.

    python -m tools.kafka_lag [--bootstrap HOST:PORT] [--topic T] [--group G] [--manifest FILE] [--json]

Reads from the real broker each partition's committed offset (OffsetFetch), log-start and
end offsets (ListOffsets), prints committed / end / lag per partition and the total, then
applies the kafka trigger's own settings from the ScaledObject manifest (k8s/keda/*.yaml,
kind ScaledObject) the way KEDA's `kafka` scaler (pkg/scalers/kafka_scaler.go, v2.x) does:

* lag per partition = end offset - committed offset. A partition without a committed offset
  counts per offsetResetPolicy: `latest` -> 1 (0 with scaleToZeroOnInvalidOffset), `earliest`
  -> the partition's end offset (KEDA <= 2.20; 2.21 changes it to end - log start, see
  kedacore/keda#7936 / #7937; `--earliest-lag retained` models that), or 0 with
  scaleToZeroOnInvalidOffset.
* excludePersistentLag: a partition whose committed offset did not move since the previous
  polling cycle counts 0 towards the metric (not towards activation). One invocation has no
  previous cycle, so it has no effect here; the load sampler passes the previous sample.
* active when the total lag (persistent lag included) is > activationLagThreshold (strictly).
* the metric is capped, unless allowIdleConsumers, at partitions * lagThreshold, with KEDA's
  integer-division test `totalLag / lagThreshold > upperBound`; limitToPartitionsWithLag
  uses the number of partitions with lag > 0 as the bound.
* the HPA then wants ceil(metric / lagThreshold) replicas (AverageValue target), clamped to
  [max(minReplicaCount, 1), maxReplicaCount]; inactive -> minReplicaCount after cooldownPeriod.

The pure part (`evaluate`) takes plain numbers so it is unit-tested without a broker.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE_FILE = ROOT / ".run" / "state.json"
MANIFEST_GLOBS = ("k8s/keda/*.yaml", "k8s/keda/*.yml")

# KEDA's own defaults for a kafka trigger and a ScaledObject.
KEDA_DEFAULTS = {
    "lagThreshold": 10,
    "activationLagThreshold": 0,
    "offsetResetPolicy": "latest",
    "minReplicaCount": 0,
    "maxReplicaCount": 100,
    "pollingInterval": 30,
    "cooldownPeriod": 300,
}


# ---------------------------------------------------------------------------------------
# Pure logic
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PartitionOffsets:
    partition: int
    committed: int | None   # None (or a negative offset) = the group never committed here
    end: int                # log end offset (high watermark)
    start: int = 0          # log start offset (first retained record)


@dataclass
class ScalerSettings:
    lag_threshold: int = KEDA_DEFAULTS["lagThreshold"]
    activation_lag_threshold: int = KEDA_DEFAULTS["activationLagThreshold"]
    offset_reset_policy: str = KEDA_DEFAULTS["offsetResetPolicy"]
    allow_idle_consumers: bool = False
    scale_to_zero_on_invalid_offset: bool = False
    exclude_persistent_lag: bool = False
    limit_to_partitions_with_lag: bool = False
    ensure_even_distribution: bool = False
    partition_limitation: list[int] | None = None
    min_replica_count: int = KEDA_DEFAULTS["minReplicaCount"]
    max_replica_count: int = KEDA_DEFAULTS["maxReplicaCount"]
    polling_interval_s: int = KEDA_DEFAULTS["pollingInterval"]
    cooldown_period_s: int = KEDA_DEFAULTS["cooldownPeriod"]
    # "end" = KEDA <= 2.20 (end offset), "retained" = KEDA 2.21+ (end - log start).
    earliest_lag: str = "end"
    topic: str | None = None
    consumer_group: str | None = None
    source: str = "KEDA defaults (no ScaledObject manifest found)"

    def validate(self) -> None:
        if self.lag_threshold <= 0:
            raise ValueError("lagThreshold must be a positive number")
        if self.activation_lag_threshold < 0:
            raise ValueError("activationLagThreshold must not be negative")
        if self.offset_reset_policy not in ("latest", "earliest"):
            raise ValueError(f"offsetResetPolicy must be latest or earliest, not {self.offset_reset_policy!r}")
        if self.allow_idle_consumers and self.limit_to_partitions_with_lag:
            raise ValueError("allowIdleConsumers and limitToPartitionsWithLag cannot be set together")
        if self.earliest_lag not in ("end", "retained"):
            raise ValueError("earliest_lag must be 'end' or 'retained'")


@dataclass
class PartitionLag:
    partition: int
    committed: int | None
    start: int
    end: int
    lag: int | None          # end - committed; None without a committed offset
    keda_lag: int            # what KEDA adds to the metric for this partition
    keda_lag_activation: int  # what KEDA adds for activation (persistent lag included)
    note: str = ""


@dataclass
class Decision:
    partitions: list[PartitionLag]
    total_lag: int | None            # sum of real lags (committed partitions only)
    uncommitted_partitions: int
    keda_total_lag: int              # before the cap
    keda_activation_lag: int
    metric: int                      # the value KEDA hands the HPA (after the cap)
    active: bool
    hpa_replicas: int                # ceil(metric / lagThreshold)
    desired_replicas: int            # what the deployment ends at with these offsets
    partition_count: int
    partitions_with_lag: int
    cap_applied: str                 # "" or why the metric was cut
    explanation: list[str] = field(default_factory=list)


def _factors(n: int) -> list[int]:
    return sorted({d for i in range(1, math.isqrt(n) + 1) if n % i == 0 for d in (i, n // i)}) if n >= 1 else []


def partition_lag(p: PartitionOffsets, settings: ScalerSettings,
                  previous_committed: int | None = None) -> PartitionLag:
    committed = p.committed if p.committed is not None and p.committed >= 0 else None
    if committed is None:
        if settings.offset_reset_policy == "latest":
            value = 0 if settings.scale_to_zero_on_invalid_offset else 1
            note = "no committed offset: latest -> " + str(value)
        elif settings.scale_to_zero_on_invalid_offset:
            value, note = 0, "no committed offset: earliest + scaleToZeroOnInvalidOffset -> 0"
        elif settings.earliest_lag == "retained":
            value, note = max(p.end - p.start, 0), "no committed offset: earliest -> end - log start"
        else:
            value, note = p.end, "no committed offset: earliest -> end offset"
        return PartitionLag(p.partition, None, p.start, p.end, None, value, value, note)
    lag = p.end - committed
    if settings.exclude_persistent_lag and previous_committed is not None and previous_committed == committed:
        return PartitionLag(p.partition, committed, p.start, p.end, lag, 0, lag,
                            "committed offset unchanged since the previous cycle: persistent lag excluded")
    return PartitionLag(p.partition, committed, p.start, p.end, lag, lag, lag)


def evaluate(offsets: list[PartitionOffsets], settings: ScalerSettings,
             previous_committed: dict[int, int] | None = None, current_replicas: int | None = None) -> Decision:
    """What KEDA's kafka scaler and the HPA it feeds would conclude from these offsets."""
    settings.validate()
    previous_committed = previous_committed or {}
    considered = sorted(offsets, key=lambda p: p.partition)
    if settings.partition_limitation:
        allowed = set(settings.partition_limitation)
        considered = [p for p in considered if p.partition in allowed]
    rows = [partition_lag(p, settings, previous_committed.get(p.partition)) for p in considered]
    threshold = settings.lag_threshold
    keda_total = sum(r.keda_lag for r in rows)
    activation_total = sum(r.keda_lag_activation for r in rows)
    partition_count = len(rows)
    with_lag = sum(1 for r in rows if r.keda_lag > 0)
    committed_rows = [r for r in rows if r.lag is not None]
    total_lag = sum(r.lag for r in committed_rows) if committed_rows else (0 if not rows else None)
    explanation = []

    metric, cap = keda_total, ""
    if not settings.allow_idle_consumers or settings.limit_to_partitions_with_lag or settings.ensure_even_distribution:
        upper = partition_count
        if settings.ensure_even_distribution:
            factor = next((f for f in _factors(partition_count) if f * threshold >= metric), partition_count)
            metric = factor * threshold
            explanation.append(f"ensureEvenDistributionOfPartitions: metric rounded to {factor} x lagThreshold")
        if settings.limit_to_partitions_with_lag:
            upper = with_lag
        if metric // threshold > upper:  # Go integer division, as KEDA does it
            cap = (f"capped at {upper} x lagThreshold ({'partitions with lag' if settings.limit_to_partitions_with_lag else 'partitions'}"
                   f" = {upper})")
            metric = upper * threshold

    active = activation_total > settings.activation_lag_threshold
    hpa = math.ceil(metric / threshold)
    low = max(settings.min_replica_count, 1)
    if active:
        desired = min(max(hpa, low), settings.max_replica_count)
        explanation.append(f"active: lag {activation_total} > activationLagThreshold {settings.activation_lag_threshold}")
        explanation.append(
            f"HPA: ceil({metric} / {threshold}) = {hpa}, clamped to [{low}, {settings.max_replica_count}] -> {desired}")
        if hpa > partition_count and not settings.allow_idle_consumers:
            explanation.append(
                f"note: KEDA's cap tests {metric}//{threshold} > {partition_count}, so up to "
                f"{partition_count + 1} replicas can be asked for {partition_count} partitions")
    else:
        desired = settings.min_replica_count
        explanation.append(
            f"not active: lag {activation_total} <= activationLagThreshold {settings.activation_lag_threshold}; "
            f"scales to minReplicaCount {desired} after cooldownPeriod {settings.cooldown_period_s}s")
    if current_replicas is not None:
        explanation.append(f"current replicas: {current_replicas}")
    return Decision(rows, total_lag, partition_count - len(committed_rows), keda_total, activation_total, metric,
                    active, hpa, desired, partition_count, with_lag, cap, explanation)


# ---------------------------------------------------------------------------------------
# The ScaledObject manifest
# ---------------------------------------------------------------------------------------

def _bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "t", "yes"):
        return True
    if text in ("false", "0", "f", "no", ""):
        return False
    raise ValueError(f"{name} must be a boolean, got {value!r}")


def _int(value, name: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _partition_list(text: str) -> list[int]:
    """KEDA's partitionLimitation syntax: '1,2,10-20,31'."""
    result: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = (int(x) for x in part.split("-", 1))
            result.extend(range(low, high + 1))
        else:
            result.append(int(part))
    return result


def settings_from_scaled_object(doc: dict, source: str = "") -> ScalerSettings:
    spec = doc.get("spec") or {}
    triggers = [t for t in spec.get("triggers") or [] if t.get("type") == "kafka"]
    if not triggers:
        raise ValueError(f"ScaledObject {doc.get('metadata', {}).get('name')!r} has no kafka trigger")
    meta = triggers[0].get("metadata") or {}
    settings = ScalerSettings(
        lag_threshold=_int(meta.get("lagThreshold", KEDA_DEFAULTS["lagThreshold"]), "lagThreshold"),
        activation_lag_threshold=_int(meta.get("activationLagThreshold", 0), "activationLagThreshold"),
        offset_reset_policy=str(meta.get("offsetResetPolicy", "latest")).strip() or "latest",
        allow_idle_consumers=_bool(meta.get("allowIdleConsumers", False), "allowIdleConsumers"),
        scale_to_zero_on_invalid_offset=_bool(meta.get("scaleToZeroOnInvalidOffset", False),
                                              "scaleToZeroOnInvalidOffset"),
        exclude_persistent_lag=_bool(meta.get("excludePersistentLag", False), "excludePersistentLag"),
        limit_to_partitions_with_lag=_bool(meta.get("limitToPartitionsWithLag", False), "limitToPartitionsWithLag"),
        ensure_even_distribution=_bool(meta.get("ensureEvenDistributionOfPartitions", False),
                                       "ensureEvenDistributionOfPartitions"),
        partition_limitation=_partition_list(meta["partitionLimitation"]) if meta.get("partitionLimitation") else None,
        min_replica_count=_int(spec.get("minReplicaCount", 0), "minReplicaCount"),
        max_replica_count=_int(spec.get("maxReplicaCount", 100), "maxReplicaCount"),
        polling_interval_s=_int(spec.get("pollingInterval", 30), "pollingInterval"),
        cooldown_period_s=_int(spec.get("cooldownPeriod", 300), "cooldownPeriod"),
        topic=meta.get("topic"),
        consumer_group=meta.get("consumerGroup"),
        source=f"{source} (ScaledObject {doc.get('metadata', {}).get('name', '?')})".strip(),
    )
    settings.validate()
    return settings


def find_scaled_object(paths: list[Path]) -> tuple[dict, Path] | None:
    import yaml

    for path in paths:
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError):
            continue
        for doc in documents:
            if isinstance(doc, dict) and doc.get("kind") == "ScaledObject":
                return doc, path
    return None


def load_settings(manifest: str | None) -> ScalerSettings:
    """From --manifest, else the first ScaledObject under k8s/keda/, else KEDA's defaults."""
    if manifest:
        found = find_scaled_object([Path(manifest)])
        if found is None:
            raise ValueError(f"no ScaledObject in {manifest}")
    else:
        candidates = sorted(p for pattern in MANIFEST_GLOBS for p in ROOT.glob(pattern))
        found = find_scaled_object(candidates)
        if found is None:
            return ScalerSettings()
    doc, path = found
    try:
        shown = path.resolve().relative_to(ROOT)
    except ValueError:
        shown = path
    return settings_from_scaled_object(doc, str(shown))


# ---------------------------------------------------------------------------------------
# Broker I/O
# ---------------------------------------------------------------------------------------

def read_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


def default_bootstrap() -> str:
    """--bootstrap > KAFKA_BOOTSTRAP_SERVERS > .run/state.json (make up / make run) > config default."""
    from purchase_common import config

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"].strip()
    return read_state().get("kafka_bootstrap") or config.DEFAULT_KAFKA_BOOTSTRAP


class LagReader:
    """One admin connection, reused for every sample (the load sampler calls it each second)."""

    def __init__(self, bootstrap: str, timeout_ms: int = 5000):
        from kafka import KafkaAdminClient

        self.bootstrap = bootstrap
        self.timeout_ms = timeout_ms
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="kafka-lag",
                                      request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
                                      reconnect_backoff_max_ms=1000)

    def close(self) -> None:
        self.admin.close()

    def partitions(self, topic: str) -> list[int]:
        described = self.admin.describe_topics([topic])
        if not described or described[0].get("error_code", 0) != 0:
            code = described[0].get("error_code") if described else "?"
            raise LookupError(f"topic {topic!r} not found on {self.bootstrap} (error code {code})")
        return sorted(p["partition_index"] for p in described[0]["partitions"])

    def _committed(self, group: str, tps) -> dict:
        """OffsetFetch; a broker still creating __consumer_offsets answers 'coordinator not
        available' for a few seconds, so retriable errors are retried within the timeout."""
        import time

        from kafka.errors import KafkaError

        deadline = time.monotonic() + self.timeout_ms / 1000
        while True:
            try:
                return self.admin.list_group_offsets({group: tps}).get(group, {})
            except KafkaError as exc:
                if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def read(self, topic: str, group: str) -> list[PartitionOffsets]:
        from kafka import TopicPartition
        from kafka.admin import OffsetSpec

        tps = [TopicPartition(topic, p) for p in self.partitions(topic)]
        committed = self._committed(group, tps)
        ends = self.admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps}, timeout_ms=self.timeout_ms)
        starts = self.admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in tps}, timeout_ms=self.timeout_ms)
        result = []
        for tp in tps:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset is not None and meta.offset >= 0 else None
            result.append(PartitionOffsets(tp.partition, offset, ends[tp].offset, starts[tp].offset))
        return result

    def group_state(self, group: str) -> dict:
        try:
            described = self.admin.describe_groups([group])
        except Exception as exc:  # informational only
            return {"state": f"unknown ({type(exc).__name__})", "members": None}
        info = described.get(group) if isinstance(described, dict) else None
        if not info:
            return {"state": "unknown", "members": None}
        state = info.get("group_state") or "unknown"
        if "GroupIdNotFound" in str(info.get("error") or ""):
            state = "no such group yet"
        return {"state": state, "members": len(info.get("members") or [])}


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------

def as_json(decision: Decision, settings: ScalerSettings, bootstrap: str, topic: str, group: str,
            group_info: dict | None = None) -> dict:
    return {
        "bootstrap": bootstrap, "topic": topic, "group": group, "group_info": group_info or {},
        "partitions": [asdict(p) for p in decision.partitions],
        "total_lag": decision.total_lag,
        "uncommitted_partitions": decision.uncommitted_partitions,
        "keda": {
            "settings": asdict(settings),
            "total_lag": decision.keda_total_lag,
            "activation_lag": decision.keda_activation_lag,
            "metric": decision.metric,
            "active": decision.active,
            "hpa_replicas": decision.hpa_replicas,
            "desired_replicas": decision.desired_replicas,
            "partition_count": decision.partition_count,
            "partitions_with_lag": decision.partitions_with_lag,
            "cap": decision.cap_applied,
            "explanation": decision.explanation,
        },
    }


def render_text(decision: Decision, settings: ScalerSettings, bootstrap: str, topic: str, group: str,
                group_info: dict | None = None) -> str:
    lines = [f"Kafka {bootstrap}  topic {topic}  group {group}"
             + (f"  ({group_info['state']}, {group_info['members']} members)" if group_info else "")]
    header = f"{'partition':>9}  {'committed':>10}  {'log-start':>10}  {'end':>10}  {'lag':>8}  {'KEDA lag':>8}"
    lines += [header, "-" * len(header)]
    for row in decision.partitions:
        committed = "-" if row.committed is None else str(row.committed)
        lag = "-" if row.lag is None else str(row.lag)
        line = f"{row.partition:>9}  {committed:>10}  {row.start:>10}  {row.end:>10}  {lag:>8}  {row.keda_lag:>8}"
        lines.append(line + (f"  {row.note}" if row.note else ""))
    total = "-" if decision.total_lag is None else str(decision.total_lag)
    suffix = f" + {decision.uncommitted_partitions} partition(s) never committed" if decision.uncommitted_partitions else ""
    lines.append(f"{'total':>9}  {'':>10}  {'':>10}  {'':>10}  {total:>8}  {decision.keda_total_lag:>8}{suffix}")
    lines.append("")
    s = settings
    lines.append(f"ScaledObject settings from {s.source}:")
    lines.append(f"  lagThreshold={s.lag_threshold} activationLagThreshold={s.activation_lag_threshold} "
                 f"offsetResetPolicy={s.offset_reset_policy} allowIdleConsumers={str(s.allow_idle_consumers).lower()} "
                 f"scaleToZeroOnInvalidOffset={str(s.scale_to_zero_on_invalid_offset).lower()} "
                 f"excludePersistentLag={str(s.exclude_persistent_lag).lower()} "
                 f"limitToPartitionsWithLag={str(s.limit_to_partitions_with_lag).lower()} "
                 f"minReplicaCount={s.min_replica_count} maxReplicaCount={s.max_replica_count}")
    if s.topic and s.topic != topic or s.consumer_group and s.consumer_group != group:
        lines.append(f"  note: the trigger names topic {s.topic!r} / group {s.consumer_group!r}; "
                     f"this reading is for {topic!r} / {group!r}")
    verdict = "ACTIVE" if decision.active else "not active"
    lines.append(f"KEDA would conclude: {verdict}; metric {decision.metric}"
                 + (f" ({decision.cap_applied})" if decision.cap_applied else "")
                 + f"; desired replicas {decision.desired_replicas}")
    lines += [f"  - {text}" for text in decision.explanation]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from purchase_common import config

    parser = argparse.ArgumentParser(prog="python -m tools.kafka_lag",
                                     description="Consumer-group lag per partition and KEDA's scaling verdict.")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS, "
                                            ".run/state.json, then 127.0.0.1:9092)")
    parser.add_argument("--topic", default=None, help=f"topic (default: PURCHASES_TOPIC or {config.PURCHASES_TOPIC})")
    parser.add_argument("--group", default=None, help=f"consumer group (default: CONSUMER_GROUP or {config.CONSUMER_GROUP})")
    parser.add_argument("--manifest", help="a YAML file holding the ScaledObject (default: the first under k8s/keda/)")
    parser.add_argument("--earliest-lag", choices=("end", "retained"), default="end",
                        help="uncommitted partition with offsetResetPolicy earliest: 'end' = KEDA <= 2.20 "
                             "(end offset), 'retained' = KEDA 2.21+ (end - log start)")
    parser.add_argument("--timeout-ms", type=int, default=5000, help="per broker request (default 5000)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)

    bootstrap = args.bootstrap or default_bootstrap()
    topic = args.topic or config.purchases_topic()
    group = args.group or config.consumer_group()
    try:
        settings = load_settings(args.manifest)
        settings.earliest_lag = args.earliest_lag
    except ValueError as exc:
        print(f"kafka_lag: {exc}", file=sys.stderr)
        return 2
    from kafka.errors import KafkaError

    try:
        reader = LagReader(bootstrap, args.timeout_ms)
    except (KafkaError, OSError) as exc:
        print(f"kafka_lag: cannot reach Kafka at {bootstrap}: {exc} (is `make up` or `make run` running?)",
              file=sys.stderr)
        return 1
    try:
        offsets = reader.read(topic, group)
        group_info = reader.group_state(group)
    except (KafkaError, LookupError, OSError) as exc:
        print(f"kafka_lag: {exc}", file=sys.stderr)
        return 1
    finally:
        reader.close()
    decision = evaluate(offsets, settings)
    try:
        if args.json:
            print(json.dumps(as_json(decision, settings, bootstrap, topic, group, group_info), indent=2))
        else:
            print(render_text(decision, settings, bootstrap, topic, group, group_info))
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
