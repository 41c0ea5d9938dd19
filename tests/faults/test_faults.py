"""Fault injection on real processes and servers: nothing acknowledged is lost, nothing is
duplicated. Each test ends with an exact count in MongoDB and prints its figures."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import requests
from cloudevents_reference import build_event, to_kafka_record
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from purchase_common.schema import Purchase
from support import send_purchases, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def report(name: str, **figures) -> None:
    print(f"\n[fault] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def assert_exactly_once(scenario, accepted: list[str], timeout_s: float = 150, unconfirmed: int = 0):
    return scenario.assert_exactly_once(accepted, timeout_s, unconfirmed)


def committed_total(bootstrap, group, topic) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.committed(tp) or 0 for tp in partitions)
    finally:
        consumer.close(autocommit=False)


def test_consumer_sigkilled_mid_batch_repeatedly_loses_and_duplicates_nothing(scenario):
    buy = scenario.start_buy()
    load = send_purchases(buy, count=2000, concurrency=16)
    assert load.statuses == {202: 2000}, load.statuses
    kills = 0
    for _ in range(4):
        # Small batches keep the consumer mid-stream long enough to be killed in the middle of it.
        consumer = scenario.start_consumer(CONSUMER_BATCH_MAX="10")
        # The target bound now, per kill (a default argument, not the loop's variable).
        wait_until(lambda wanted=(kills + 1) * 300: scenario.collection().estimated_document_count() >= wanted,
                   60, 0.02, "consumer made progress")
        os.killpg(consumer.proc.pid, signal.SIGKILL)
        consumer.proc.wait(timeout=10)
        kills += 1
    stored_before_last = scenario.collection().count_documents({})
    assert stored_before_last < 2000, "the kills came after the consumer had finished"
    scenario.start_consumer()
    counts, duplicates = assert_exactly_once(scenario, load.accepted, timeout_s=120)
    assert len(counts) == 2000
    report("SIGKILL x4", accepted=2000, stored_before_last_restart=stored_before_last, stored=len(counts),
           duplicates=duplicates, lost=2000 - len(counts))


def test_database_outage_is_waited_out_without_crash_or_loss(scenario, fault_stack):
    buy = scenario.start_buy()
    consumer = scenario.start_consumer()
    health = f"http://127.0.0.1:{consumer.port}/readyz"
    results = {}
    loader = threading.Thread(
        target=lambda: results.update(load=send_purchases(buy, duration_s=20, concurrency=4, max_rate=150)))
    loader.start()
    time.sleep(4)
    fault_stack.stop_ferretdb()
    outage_started = time.monotonic()
    not_ready = wait_until(lambda: requests.get(health, timeout=5).status_code == 503, 20, 0.2,
                           "consumer reports not ready")
    time.sleep(max(0.0, 10 - (time.monotonic() - outage_started)))
    fault_stack.start_ferretdb()
    loader.join(timeout=60)
    load = results["load"]
    assert load.statuses.get(202, 0) > 0 and set(load.statuses) == {202}, load.statuses
    counts, duplicates = assert_exactly_once(scenario, load.accepted, timeout_s=90)
    assert consumer.proc.poll() is None, "the consumer crashed during the outage"
    assert wait_until(lambda: requests.get(health, timeout=5).status_code == 200, 30, 0.2, "ready again")
    report("FerretDB down 10 s", accepted=len(load.accepted), stored=len(counts), duplicates=duplicates,
           lost=len(set(load.accepted) - set(counts)), readyz_503_seen=not_ready, consumer_restarts=0)


def test_database_outage_in_the_middle_of_a_backlog_loses_and_duplicates_nothing(scenario, fault_stack):
    """Behind a backlog each full batch is written behind (its write overlaps the next poll):
    a write that fails there is retried under the outage policy, and no batch is committed
    before it is stored."""
    buy = scenario.start_buy()
    load = send_purchases(buy, count=6000, concurrency=16, users=200)
    assert set(load.statuses) == {202}, load.statuses
    # Small batches: the drain lasts long enough for the outage to fall in the middle of it.
    consumer = scenario.start_consumer(CONSUMER_BATCH_MAX="10")
    wait_until(lambda: scenario.collection().estimated_document_count() >= 50, 60, 0.005, "the consumer is draining")
    fault_stack.stop_ferretdb()
    stored_before = committed_total(fault_stack.bootstrap, scenario.names["group"], scenario.names["topic"])
    assert stored_before < len(load.accepted), "the backlog was drained before the outage began"
    time.sleep(5)
    fault_stack.start_ferretdb()
    counts, duplicates = assert_exactly_once(scenario, load.accepted, timeout_s=90)
    assert consumer.proc.poll() is None, "the consumer crashed during the outage"
    report("FerretDB down 5 s in the middle of a backlog", accepted=len(load.accepted),
           committed_at_outage=stored_before, stored=len(counts), duplicates=duplicates)


def test_broker_restart_under_load(scenario, fault_stack):
    buy = scenario.start_buy()
    history = scenario.start_history()
    scenario.start_consumer()
    results = {}
    loader = threading.Thread(target=lambda: results.update(load=send_purchases(buy, duration_s=30, concurrency=8,
                                                                                timeout_s=15, max_rate=150)))
    loader.start()
    time.sleep(5)
    fault_stack.stop_kafka()
    down_at = time.monotonic()
    # history needs only MongoDB: it keeps answering while the broker is gone.
    during = requests.get(f"{history}/api/user/u1/purchases", timeout=10)
    assert during.status_code == 200 and isinstance(during.json(), list)
    time.sleep(max(0.0, 5 - (time.monotonic() - down_at)))
    fault_stack.start_kafka()
    down_for = time.monotonic() - down_at
    loader.join(timeout=90)
    load = results["load"]
    # Accepting again after the restart, same buy process.
    after = requests.post(f"{buy}/api/buy", json={"username": "after", "userId": "after", "price": 1}, timeout=10)
    assert after.status_code == 202, after.text
    accepted = load.accepted + [after.json()["id"]]
    assert load.statuses.get(503, 0) > 0, f"no 503 seen during a {down_for:.0f}s outage: {load.statuses}"
    assert set(load.statuses) <= {202, 503}, load.statuses
    assert load.errors == 0
    assert load.slowest_s < 6, f"a request took {load.slowest_s:.1f}s"
    # A 503 is "not confirmed": its record may still have reached the broker. Those may be
    # stored, once; every 202 must be.
    counts, duplicates = assert_exactly_once(scenario, accepted, timeout_s=180,
                                             unconfirmed=load.statuses.get(503, 0))
    report("broker restart", accepted=len(accepted), answered_503=load.statuses.get(503, 0),
           stored=len(counts), stored_though_503=len(set(counts) - set(accepted)), duplicates=duplicates,
           lost=len(set(accepted) - set(counts)), slowest_answer_s=round(load.slowest_s, 2),
           outage_s=round(down_for, 1))


def test_sigterm_is_graceful(scenario, fault_stack):
    buy = scenario.start_buy()
    consumer = scenario.start_consumer()
    results = {}
    loader = threading.Thread(target=lambda: results.update(load=send_purchases(buy, count=1500, concurrency=8)))
    loader.start()
    wait_until(lambda: scenario.collection().estimated_document_count() > 200, 60, 0.05, "consumer progress")
    consumer.proc.send_signal(signal.SIGTERM)
    exit_code = consumer.proc.wait(timeout=30)
    assert exit_code == 0
    stored_at_stop = scenario.collection().count_documents({})
    committed = committed_total(fault_stack.bootstrap, scenario.names["group"], scenario.names["topic"])
    # The in-flight batch was written and committed: the committed offsets account for exactly
    # what is stored, so a restart re-reads nothing already written.
    assert committed == stored_at_stop
    loader.join(timeout=60)
    load = results["load"]
    assert load.statuses == {202: 1500}
    restarted = scenario.start_consumer()
    counts, duplicates = assert_exactly_once(scenario, load.accepted)
    metrics = requests.get(f"http://127.0.0.1:{restarted.port}/metrics", timeout=5).text
    redelivered = [line for line in metrics.splitlines() if line.startswith("purchases_duplicates_total ")]
    assert redelivered == ["purchases_duplicates_total 0.0"]
    report("SIGTERM", accepted=1500, stored_at_stop=stored_at_stop, committed_at_stop=committed,
           stored=len(counts), duplicates=duplicates, redelivered_after_restart=0)


def test_poison_record_goes_to_the_dead_letter_topic(scenario, fault_stack):
    producer = KafkaProducer(bootstrap_servers=fault_stack.bootstrap, acks="all")
    topic = scenario.names["topic"]
    valid = [build_event(Purchase("ok", "poisoned-partition", 100 + i)) for i in range(4)]
    poison = [
        (b"poisoned-partition", b"this is not JSON and has no CloudEvent headers", [("trace", b"1")]),
        (b"poisoned-partition", b'{"username":"x","userId":"poisoned-partition","price":"1"}',
         [h for h in to_kafka_record(valid[0])[2] if h[0] != "ce_id"] + [("ce_id", b"bad-data")]),
    ]
    try:
        records = [to_kafka_record(valid[0]), to_kafka_record(valid[1]), poison[0],
                   to_kafka_record(valid[2]), poison[1], to_kafka_record(valid[3])]
        for key, value, headers in records:
            producer.send(topic, key=key, value=value, headers=headers).get(timeout=10)
    finally:
        producer.close()
    scenario.start_consumer()
    counts, _ = assert_exactly_once(scenario, [event["id"] for event in valid])
    assert len(counts) == 4

    dlq = KafkaConsumer(bootstrap_servers=fault_stack.bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(scenario.names["dead_letter_topic"], 0)
        dlq.assign([tp])
        dlq.seek_to_beginning(tp)
        dead = []
        wait_until(lambda: dead.extend(r for rs in dlq.poll(timeout_ms=500).values() for r in rs) or len(dead) >= 2,
                   30, 0, "two dead letters")
    finally:
        dlq.close()
    assert len(dead) == 2
    first, second = (dict(record.headers) for record in dead)
    assert dead[0].value == poison[0][1] and first["trace"] == b"1"
    assert b"ce_specversion" in first["dlq_reason"]
    assert dead[1].value == poison[1][1] and b"price" in second["dlq_reason"]
    assert first["dlq_source_topic"] == topic.encode()
    assert int(first["dlq_source_offset"]) == 2 and int(second["dlq_source_offset"]) == 4
    report("poison records", valid_sent=4, stored=len(counts), dead_lettered=len(dead),
           reasons=json.dumps([first["dlq_reason"].decode(), second["dlq_reason"].decode()]))
