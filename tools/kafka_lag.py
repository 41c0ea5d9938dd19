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

The reading is tools/lag_reader.py; the verdict, tools/keda_scaler.py (`evaluate`), takes plain
numbers so it is unit-tested without a broker. This module is only the command line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from kafka.errors import KafkaError
from purchase_common import config

from tools.keda_scaler import Decision, ScalerSettings, evaluate, load_settings
from tools.lag_reader import LagReader, default_bootstrap


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
    never = decision.uncommitted_partitions
    suffix = f" + {never} partition(s) never committed" if never else ""
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
    parser = argparse.ArgumentParser(prog="python -m tools.kafka_lag",
                                     description="Consumer-group lag per partition and KEDA's scaling verdict.")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS, "
                                            ".run/state.json, then 127.0.0.1:9092)")
    parser.add_argument("--topic", default=None, help=f"topic (default: PURCHASES_TOPIC or {config.PURCHASES_TOPIC})")
    parser.add_argument("--group", default=None,
                        help=f"consumer group (default: CONSUMER_GROUP or {config.CONSUMER_GROUP})")
    parser.add_argument("--manifest", help="a YAML file holding the ScaledObject (default: the first under k8s/keda/)")
    parser.add_argument("--earliest-lag", choices=("end", "retained"), default="end",
                        help="uncommitted partition with offsetResetPolicy earliest: 'end' = KEDA <= 2.20 "
                             "(end offset), 'retained' = KEDA 2.21+ (end - log start)")
    parser.add_argument("--timeout-ms", type=int, default=5000, help="per broker request (default 5000)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)

    bootstrap = args.bootstrap or default_bootstrap()
    topic = args.topic or config.settings().purchases_topic
    group = args.group or config.settings().consumer_group
    try:
        settings = load_settings(args.manifest)
        settings.earliest_lag = args.earliest_lag
    except ValueError as exc:
        print(f"kafka_lag: {exc}", file=sys.stderr)
        return 2
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
    sys.exit(main())
