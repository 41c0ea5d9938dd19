"""tools/keda_scaler.py (the pure logic behind tools/kafka_lag.py): KEDA's kafka-scaler arithmetic on plain offsets."""
from __future__ import annotations

import json
import textwrap

import pytest

from tools import kafka_lag, keda_scaler
from tools.keda_scaler import PartitionOffsets as P
from tools.keda_scaler import ScalerSettings, evaluate


def settings(**overrides) -> ScalerSettings:
    base = dict(lag_threshold=100, activation_lag_threshold=0, offset_reset_policy="earliest",
                min_replica_count=0, max_replica_count=6)
    base.update(overrides)
    return ScalerSettings(**base)


def six(committed, end=1000, start=0):
    return [P(i, c, end, start) for i, c in enumerate(committed)]


def test_brand_new_group_earliest_counts_each_partition_end_offset():
    offsets = [P(0, None, 40), P(1, None, 0), P(2, -1, 25, 5)]
    d = evaluate(offsets, settings(offset_reset_policy="earliest"))
    assert [r.keda_lag for r in d.partitions] == [40, 0, 25]
    assert d.total_lag is None and d.uncommitted_partitions == 3
    assert d.active and d.metric == 65 and d.desired_replicas == 1


def test_brand_new_group_earliest_retained_models_keda_2_21():
    d = evaluate([P(0, None, 25, 5)], settings(earliest_lag="retained"))
    assert d.partitions[0].keda_lag == 20


def test_brand_new_group_latest_counts_one_per_partition():
    d = evaluate(six([None] * 6), settings(offset_reset_policy="latest"))
    assert [r.keda_lag for r in d.partitions] == [1] * 6
    assert d.active and d.desired_replicas == 1


@pytest.mark.parametrize("policy", ["latest", "earliest"])
def test_scale_to_zero_on_invalid_offset_counts_zero(policy):
    d = evaluate(six([None] * 6), settings(offset_reset_policy=policy, scale_to_zero_on_invalid_offset=True))
    assert d.keda_total_lag == 0 and not d.active and d.desired_replicas == 0


def test_empty_topic_brand_new_group_earliest_is_not_active():
    d = evaluate(six([None] * 6, end=0), settings())
    assert d.keda_total_lag == 0 and not d.active and d.desired_replicas == 0


def test_partly_consumed():
    offsets = [P(0, 10, 60), P(1, 60, 60), P(2, None, 30)]
    d = evaluate(offsets, settings(lag_threshold=20))
    assert [r.lag for r in d.partitions] == [50, 0, None]
    assert d.total_lag == 50 and d.keda_total_lag == 80
    assert d.active and d.hpa_replicas == 3 and d.desired_replicas == 3  # capped: 80//20 = 4 > 3 partitions
    assert d.metric == 60 and "partitions" in d.cap_applied


def test_fully_consumed_is_inactive_and_goes_to_min_replicas():
    d = evaluate(six([1000] * 6), settings(min_replica_count=0))
    assert d.total_lag == 0 and not d.active and d.desired_replicas == 0
    assert evaluate(six([1000] * 6), settings(min_replica_count=2)).desired_replicas == 2


def test_activation_is_strictly_greater_than_threshold():
    offsets = six([995, 1000, 1000, 1000, 1000, 1000])
    assert not evaluate(offsets, settings(activation_lag_threshold=5)).active
    assert evaluate(offsets, settings(activation_lag_threshold=4)).active


def test_desired_is_ceil_of_lag_over_threshold():
    offsets = six([1000 - 250, 1000, 1000, 1000, 1000, 1000])
    d = evaluate(offsets, settings(lag_threshold=100))
    assert d.metric == 250 and d.hpa_replicas == 3 and d.desired_replicas == 3


def test_capped_at_partition_count_unless_idle_consumers_allowed():
    offsets = six([0] * 6, end=10_000)
    capped = evaluate(offsets, settings(max_replica_count=100))
    assert capped.metric == 600 and capped.desired_replicas == 6
    idle = evaluate(offsets, settings(max_replica_count=100, allow_idle_consumers=True))
    assert idle.metric == 60_000 and idle.desired_replicas == 100  # then maxReplicaCount
    assert evaluate(offsets, settings(max_replica_count=4)).desired_replicas == 4


def test_keda_integer_division_cap_lets_one_more_replica_through():
    # 650 // 100 = 6 is not > 6 partitions, so the metric stays 650 and the HPA asks for 7.
    offsets = six([1000 - 650, 1000, 1000, 1000, 1000, 1000])
    d = evaluate(offsets, settings(max_replica_count=100))
    assert d.metric == 650 and d.cap_applied == "" and d.desired_replicas == 7
    assert evaluate(offsets, settings(max_replica_count=6)).desired_replicas == 6


def test_limit_to_partitions_with_lag():
    offsets = six([0, 0, 1000, 1000, 1000, 1000])
    d = evaluate(offsets, settings(limit_to_partitions_with_lag=True, max_replica_count=100))
    assert d.partitions_with_lag == 2 and d.metric == 200 and d.desired_replicas == 2


def test_exclude_persistent_lag_needs_a_previous_cycle():
    offsets = six([500, 1000, 1000, 1000, 1000, 1000])
    s = settings(exclude_persistent_lag=True)
    first = evaluate(offsets, s)
    assert first.metric == 500
    stuck = evaluate(offsets, s, previous_committed={0: 500})
    assert stuck.metric == 0 and stuck.keda_activation_lag == 500
    assert stuck.active and stuck.desired_replicas == 1  # still active: activation counts persistent lag
    moving = evaluate(offsets, s, previous_committed={0: 400})
    assert moving.metric == 500


def test_partition_limitation_restricts_partitions_and_the_cap():
    offsets = six([0] * 6, end=1000)
    d = evaluate(offsets, settings(partition_limitation=[1, 2], max_replica_count=100))
    assert [r.partition for r in d.partitions] == [1, 2]
    assert d.partition_count == 2 and d.desired_replicas == 2


def test_ensure_even_distribution_rounds_to_a_factor_of_partitions():
    offsets = six([1000 - 25, 1000, 1000, 1000, 1000, 1000])
    d = evaluate(offsets, settings(lag_threshold=10, ensure_even_distribution=True))
    assert d.metric == 30 and d.desired_replicas == 3  # factors of 6: 1, 2, 3, 6


def test_min_replica_count_is_the_floor_when_active():
    d = evaluate(six([999, 1000, 1000, 1000, 1000, 1000]), settings(min_replica_count=2))
    assert d.hpa_replicas == 1 and d.desired_replicas == 2


@pytest.mark.parametrize("overrides", [
    {"lag_threshold": 0}, {"activation_lag_threshold": -1}, {"offset_reset_policy": "none"},
    {"allow_idle_consumers": True, "limit_to_partitions_with_lag": True}, {"earliest_lag": "bogus"},
])
def test_invalid_settings_are_refused(overrides):
    with pytest.raises(ValueError):
        evaluate(six([0] * 6), settings(**overrides))


SCALED_OBJECT = textwrap.dedent("""
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: unrelated}
    ---
    apiVersion: keda.sh/v1alpha1
    kind: ScaledObject
    metadata: {name: consumer}
    spec:
      minReplicaCount: 1
      maxReplicaCount: 4
      cooldownPeriod: 60
      triggers:
        - type: cpu
          metadata: {value: "50"}
        - type: kafka
          metadata:
            topic: purchases
            consumerGroup: persist-purchase
            lagThreshold: "50"
            activationLagThreshold: "3"
            offsetResetPolicy: latest
            allowIdleConsumers: "true"
            scaleToZeroOnInvalidOffset: "false"
            partitionLimitation: "0,2-4"
""")


def test_settings_are_read_from_a_scaled_object_manifest(tmp_path):
    path = tmp_path / "so.yaml"
    path.write_text(SCALED_OBJECT)
    s = keda_scaler.load_settings(str(path))
    assert (s.lag_threshold, s.activation_lag_threshold, s.offset_reset_policy) == (50, 3, "latest")
    assert s.allow_idle_consumers and not s.scale_to_zero_on_invalid_offset
    assert (s.min_replica_count, s.max_replica_count, s.cooldown_period_s) == (1, 4, 60)
    assert s.partition_limitation == [0, 2, 3, 4]
    assert s.topic == "purchases" and "consumer" in s.source


def test_a_file_without_scaled_object_is_an_error(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("kind: ConfigMap\n")
    with pytest.raises(ValueError):
        keda_scaler.load_settings(str(path))


def test_the_project_manifest_parses_when_present():
    candidates = sorted(p for pattern in keda_scaler.MANIFEST_GLOBS for p in keda_scaler.ROOT.glob(pattern))
    found = keda_scaler.find_scaled_object(candidates)
    if found is None:
        pytest.skip("no ScaledObject under k8s/keda yet")
    s = keda_scaler.settings_from_scaled_object(found[0])
    assert s.lag_threshold > 0 and s.max_replica_count >= 1


def test_text_and_json_output():
    s = settings()
    d = evaluate([P(0, 10, 60), P(1, None, 30)], s)
    text = kafka_lag.render_text(d, s, "127.0.0.1:9092", "purchases", "persist-purchase")
    assert "total" in text and "KEDA would conclude: ACTIVE" in text and "desired replicas 1" in text
    data = json.loads(json.dumps(kafka_lag.as_json(d, s, "b", "t", "g")))
    assert data["total_lag"] == 50 and data["keda"]["total_lag"] == 80 and data["keda"]["active"] is True
