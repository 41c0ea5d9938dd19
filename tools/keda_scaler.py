"""KEDA's kafka scaler, modelled on plain offsets: what it would conclude from a group's lag.

Applies a ScaledObject's kafka-trigger settings the way KEDA's `kafka` scaler
(pkg/scalers/kafka_scaler.go, v2.x) does; the rules are listed in tools/kafka_lag.py, the
CLI that prints them. Pure: no broker, so it is unit-tested on numbers
(tests/unit/test_lag_logic.py) and used by the load sampler every second.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tools.common import ROOT

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
            counted = "partitions with lag" if settings.limit_to_partitions_with_lag else "partitions"
            cap = f"capped at {upper} x lagThreshold ({counted} = {upper})"
            metric = upper * threshold

    active = activation_total > settings.activation_lag_threshold
    hpa = math.ceil(metric / threshold)
    low = max(settings.min_replica_count, 1)
    if active:
        desired = min(max(hpa, low), settings.max_replica_count)
        explanation.append(f"active: lag {activation_total} > activationLagThreshold "
                           f"{settings.activation_lag_threshold}")
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
