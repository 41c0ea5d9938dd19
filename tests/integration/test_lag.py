"""`make lag` (tools/kafka_lag.py) against the real broker: brand-new, partly and fully consumed groups."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import pytest

from tools import keda_scaler, lag_reader
from tools.common import ROOT

pytestmark = pytest.mark.integration

PER_PARTITION = {0: 30, 1: 20, 2: 10}
DELETED_FROM_P2 = 4  # records removed by retention (DeleteRecords) from partition 2
MANIFEST = textwrap.dedent("""
    apiVersion: keda.sh/v1alpha1
    kind: ScaledObject
    metadata: {name: lag-test}
    spec:
      minReplicaCount: 0
      maxReplicaCount: 6
      triggers:
        - type: kafka
          metadata:
            lagThreshold: "10"
            activationLagThreshold: "0"
            offsetResetPolicy: earliest
            allowIdleConsumers: "false"
""")


@pytest.fixture(scope="module")
def lag_topic(servers):
    from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

    from devstack.servers import ensure_topics

    topic = f"lag-test-{uuid.uuid4().hex[:8]}"
    ensure_topics(servers.kafka_bootstrap, {topic: len(PER_PARTITION)})
    producer = KafkaProducer(bootstrap_servers=servers.kafka_bootstrap, acks="all", linger_ms=5)
    for partition, count in PER_PARTITION.items():
        for i in range(count):
            producer.send(topic, value=f"{partition}-{i}".encode(), partition=partition)
    producer.flush(timeout=30)
    producer.close()
    admin = KafkaAdminClient(bootstrap_servers=servers.kafka_bootstrap, request_timeout_ms=10000)
    try:
        admin.delete_records({TopicPartition(topic, 2): DELETED_FROM_P2}, timeout_ms=10000)
    finally:
        admin.close()
    return topic


@pytest.fixture(scope="module")
def reader(servers):
    reader = lag_reader.LagReader(servers.kafka_bootstrap, timeout_ms=10000)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def scaler(tmp_path_factory):
    path = tmp_path_factory.mktemp("manifest") / "scaledobject.yaml"
    path.write_text(MANIFEST)
    return path, keda_scaler.load_settings(str(path))


def new_group() -> str:
    return f"lag-group-{uuid.uuid4().hex[:8]}"


def consumer_for(servers, group):
    from kafka import KafkaConsumer

    return KafkaConsumer(bootstrap_servers=servers.kafka_bootstrap, group_id=group, enable_auto_commit=False,
                         auto_offset_reset="earliest", consumer_timeout_ms=10000, request_timeout_ms=15000)


def test_brand_new_group(reader, lag_topic, scaler):
    _, settings = scaler
    offsets = reader.read(lag_topic, new_group())
    assert [(p.partition, p.committed, p.end) for p in offsets] == [(0, None, 30), (1, None, 20), (2, None, 10)]
    assert offsets[2].start == DELETED_FROM_P2
    decision = keda_scaler.evaluate(offsets, settings)
    # KEDA <= 2.20 with earliest: an uncommitted partition counts its whole end offset.
    assert decision.keda_total_lag == 60 and decision.total_lag is None and decision.uncommitted_partitions == 3
    assert decision.active and decision.metric == 30 and decision.desired_replicas == 3  # capped at 3 partitions
    settings_latest = keda_scaler.ScalerSettings(**{**settings.__dict__, "offset_reset_policy": "latest"})
    assert keda_scaler.evaluate(offsets, settings_latest).keda_total_lag == 3
    settings_retained = keda_scaler.ScalerSettings(**{**settings.__dict__, "earliest_lag": "retained"})
    assert keda_scaler.evaluate(offsets, settings_retained).keda_total_lag == 30 + 20 + (10 - DELETED_FROM_P2)


def test_partly_consumed_then_fully_consumed(servers, reader, lag_topic, scaler):
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    manifest, settings = scaler
    group = new_group()
    consumer = consumer_for(servers, group)
    try:
        tps = [TopicPartition(lag_topic, p) for p in PER_PARTITION]
        consumer.assign(tps[:2])
        consumer.commit({tps[0]: OffsetAndMetadata(12, "", -1), tps[1]: OffsetAndMetadata(20, "", -1)})

        offsets = reader.read(lag_topic, group)
        assert [(p.committed, p.end) for p in offsets] == [(12, 30), (20, 20), (None, 10)]
        decision = keda_scaler.evaluate(offsets, settings)
        assert [p.lag for p in decision.partitions] == [18, 0, None]
        assert decision.total_lag == 18 and decision.keda_total_lag == 18 + 0 + 10
        assert decision.active and decision.desired_replicas == 3

        # The command itself, as `make lag` runs it.
        result = subprocess.run(
            [sys.executable, "-m", "tools.kafka_lag", "--bootstrap", servers.kafka_bootstrap, "--topic", lag_topic,
             "--group", group, "--manifest", str(manifest), "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert [p["lag"] for p in data["partitions"]] == [18, 0, None]
        assert data["total_lag"] == 18 and data["keda"]["total_lag"] == 28
        assert data["keda"]["active"] is True and data["keda"]["desired_replicas"] == 3
        assert data["keda"]["settings"]["lag_threshold"] == 10

        # Consume everything for real and commit where the consumer stands.
        consumer.assign(tps)
        consumer.seek_to_beginning()
        seen = 0
        for _ in range(100):
            if all(consumer.position(tp) >= end for tp, end in zip(tps, (30, 20, 10), strict=True)):
                break
            seen += sum(len(batch) for batch in consumer.poll(timeout_ms=500).values())
        assert seen == 30 + 20 + (10 - DELETED_FROM_P2)
        consumer.commit()
    finally:
        consumer.close(autocommit=False)

    offsets = reader.read(lag_topic, group)
    assert [(p.committed, p.end) for p in offsets] == [(30, 30), (20, 20), (10, 10)]
    decision = keda_scaler.evaluate(offsets, settings)
    assert decision.total_lag == 0 and decision.keda_total_lag == 0
    assert not decision.active and decision.desired_replicas == 0


def test_unknown_topic_is_reported(servers):
    result = subprocess.run(
        [sys.executable, "-m", "tools.kafka_lag", "--bootstrap", servers.kafka_bootstrap, "--topic",
         f"missing-{uuid.uuid4().hex[:6]}", "--group", "g"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "not found" in result.stderr
