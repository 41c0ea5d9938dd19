"""End to end on the real servers: gateway -> buy -> Kafka -> persist_purchase -> MongoDB -> history."""
from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from cloudevents_reference import build_event, to_kafka_record
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from purchase_common.events import EVENT_SOURCE, EVENT_TYPE
from purchase_common.schema import Purchase
from support import wait_until

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/json"}


def new_user() -> str:
    return "u" + uuid.uuid4().hex[:12]


def buy(pipeline, user, price=12.0, username="elad", base=None, headers=None):
    response = requests.post(f"{base or pipeline.gateway}/api/buy", json={"username": username, "userId": user,
                             "price": price}, headers={"Host": "purchase.local", **(headers or {})}, timeout=30)
    return response


def history(pipeline, user, **params):
    response = requests.get(f"{pipeline.gateway}/api/user/{user}/purchases", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_count(pipeline, user, count, timeout_s=60):
    return wait_until(lambda: (lambda got: got if len(got) == count else None)(history(pipeline, user, limit=500)),
                      timeout_s, 0.1, f"{count} purchases of {user}")


def find_record(bootstrap, topic, event_id, timeout_s=15):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=1000)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if dict(record.headers).get("ce_id") == event_id.encode():
                        return record
        raise AssertionError(f"record with ce_id {event_id} not found in {topic}")
    finally:
        consumer.close()


def test_readme_example_through_the_gateway(pipeline):
    user = new_user()
    started = time.monotonic()
    response = buy(pipeline, user, 12.00)
    assert response.status_code == 202
    body = response.json()
    assert body["message"] == "Purchase accepted"
    uuid.UUID(body["id"])
    stored = wait_for_count(pipeline, user, 1, timeout_s=10)
    visible_after = time.monotonic() - started
    assert stored[0]["id"] == body["id"]
    assert stored[0]["username"] == "elad" and stored[0]["userId"] == user and stored[0]["price"] == 12.0
    assert stored[0]["timestamp"].endswith("Z")
    assert visible_after < 5, f"purchase took {visible_after:.2f}s to become visible"
    # The two routes kept from the original system return the same array.
    assert requests.get(f"{pipeline.gateway}/api/purchases", params={"userId": user}, timeout=10).json() == stored
    assert requests.get(f"{pipeline.gateway}/api/getAllUserBuys/{user}", timeout=10).json() == stored


def test_logs_trace_one_purchase_from_buy_to_persist(pipeline):
    user = new_user()
    event_id = buy(pipeline, user, 2.5).json()["id"]
    wait_for_count(pipeline, user, 1)

    def lines_with_id(name):
        entries = [json.loads(line) for line in (pipeline.log_dir / f"{name}.log").read_text().splitlines()
                   if line.startswith("{") and event_id in line]
        return [entry for entry in entries if entry.get("eventId") == event_id]

    accepted = wait_until(lambda: lines_with_id("buy"), 5, message="buy log line")
    stored = wait_until(lambda: lines_with_id("persist-purchase"), 5, message="persist log line")
    assert accepted[0]["msg"] == "purchase accepted" and accepted[0]["service"] == "buy"
    assert stored[0]["msg"] == "purchase stored" and stored[0]["userId"] == user


def test_the_consumer_logs_the_partitions_its_group_assigned_it(pipeline):
    """The only member of its group gets every partition of the topic, and says so once it has
    joined: the step between "consumer started" and the first purchase stored."""
    metadata = KafkaConsumer(bootstrap_servers=pipeline.stack.kafka_bootstrap)
    try:
        partitions = sorted(metadata.partitions_for_topic(pipeline.topic))
    finally:
        metadata.close()

    def entries():
        return [json.loads(line) for line in (pipeline.log_dir / "persist-purchase.log").read_text().splitlines()
                if line.startswith("{")]
    assigned = wait_until(lambda: [e for e in entries() if e["msg"] == "partitions assigned"], 10,
                          message="the consumer's assignment log line")
    assert assigned[-1]["partitions"] == partitions and assigned[-1]["service"] == "persist-purchase"
    messages = [e["msg"] for e in entries()]
    assert messages.index("consumer started") < messages.index("partitions assigned")


def test_kafka_record_is_a_binary_mode_cloudevent_keyed_by_user(pipeline):
    user = new_user()
    response = buy(pipeline, user, 3.5, base=pipeline.buy)
    assert response.status_code == 202
    event_id = response.json()["id"]
    record = find_record(pipeline.stack.kafka_bootstrap, pipeline.topic, event_id)
    headers = dict(record.headers)
    assert record.key == user.encode()
    assert headers["ce_specversion"] == b"1.0"
    assert headers["ce_type"] == EVENT_TYPE.encode()
    assert headers["ce_source"] == EVENT_SOURCE.encode()
    assert headers["content-type"] == b"application/json"
    assert headers["ce_time"].endswith(b"Z")
    assert json.loads(record.value) == {"username": "elad", "userId": user, "price": 3.5}


def test_redelivered_event_is_stored_once(pipeline):
    user = new_user()
    key, value, headers = to_kafka_record(build_event(Purchase("dup", user, 500)))
    producer = KafkaProducer(bootstrap_servers=pipeline.stack.kafka_bootstrap, acks="all")
    try:
        for _ in range(3):
            producer.send(pipeline.topic, key=key, value=value, headers=headers).get(timeout=10)
    finally:
        producer.close()
    wait_for_count(pipeline, user, 1)
    time.sleep(1.0)  # give the two redeliveries every chance to show up as duplicates
    assert pipeline.collection().count_documents({"userId": user}) == 1


def test_idempotency_key_replay_yields_one_purchase(pipeline):
    user = new_user()
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = buy(pipeline, user, 9.99, headers=key)
    second = buy(pipeline, user, 9.99, headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    other_user = buy(pipeline, new_user(), 9.99, headers=key)
    assert other_user.json()["id"] != first.json()["id"]
    wait_for_count(pipeline, user, 1)
    time.sleep(1.0)
    assert pipeline.collection().count_documents({"userId": user}) == 1


def test_history_is_newest_first_and_pages_without_gaps(pipeline):
    user = new_user()
    ids = []
    for index in range(7):
        response = buy(pipeline, user, index)
        assert response.status_code == 202
        ids.append(response.json()["id"])
        time.sleep(0.005)  # distinct millisecond timestamps
    everything = wait_for_count(pipeline, user, 7)
    assert [item["id"] for item in everything] == ids[::-1]
    assert [item["price"] for item in everything] == [6, 5, 4, 3, 2, 1, 0]

    pages, params = [], {"limit": 3}
    for _ in range(5):
        response = requests.get(f"{pipeline.gateway}/api/user/{user}/purchases", params=params, timeout=10)
        assert response.status_code == 200
        pages.append([item["id"] for item in response.json()])
        cursor = response.headers.get("X-Next-Cursor")
        if not cursor:
            break
        assert 'rel="next"' in response.headers["Link"]
        params = {"limit": 3, "before": cursor}
    assert [len(page) for page in pages] == [3, 3, 1]
    assert sum(pages, []) == ids[::-1]


def test_unknown_user_has_no_purchases(pipeline):
    assert history(pipeline, new_user()) == []


def test_price_zero_and_exact_cents_are_stored(pipeline):
    user = new_user()
    assert buy(pipeline, user, 0).status_code == 202
    assert buy(pipeline, user, 19.99).status_code == 202
    wait_for_count(pipeline, user, 2)
    stored = sorted(doc["priceCents"] for doc in pipeline.collection().find({"userId": user}))
    assert stored == [0, 1999]


def test_unicode_username_round_trips_exactly(pipeline):
    user, name = new_user(), "אלעד 🛒 Zoë"
    assert buy(pipeline, user, 1, username=name).status_code == 202
    assert wait_for_count(pipeline, user, 1)[0]["username"] == name


def test_hundred_concurrent_buys_for_ten_users_land_exactly_once(pipeline):
    users = [new_user() for _ in range(10)]
    jobs = [(users[i % 10], i) for i in range(100)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda job: buy(pipeline, job[0], job[1]), jobs))
    assert [r.status_code for r in responses] == [202] * 100
    accepted = {r.json()["id"] for r in responses}
    assert len(accepted) == 100
    for user in users:
        assert len(wait_for_count(pipeline, user, 10)) == 10
    stored = [doc["eventId"] for doc in pipeline.collection().find({"userId": {"$in": users}})]
    assert sorted(stored) == sorted(accepted)


def test_cloudevent_function_stores_a_binary_mode_http_event(pipeline, tmp_path):
    """The same handler, invoked by functions-framework with an HTTP CloudEvent (binary mode)."""
    from devstack import stack as devstack
    from devstack.servers import free_port

    port = free_port()
    process = devstack.start_persist_cloudevent_endpoint(pipeline.env, port, tmp_path)
    try:
        user = new_user()
        event = build_event(Purchase("via http", user, 4200))
        headers = {"ce-id": event["id"], "ce-type": event["type"], "ce-source": event["source"],
                   "ce-specversion": "1.0", "ce-time": event["time"], "Content-Type": "application/json"}
        for _ in range(2):  # a redelivery is a no-op
            response = requests.post(f"http://127.0.0.1:{port}/", headers=headers,
                                     data=json.dumps(event.data), timeout=10)
            assert response.status_code == 200, response.text
        stored = list(pipeline.collection().find({"userId": user}, {"_id": 0}))
        assert [(doc["eventId"], doc["priceCents"], doc["username"]) for doc in stored] == [
            (event["id"], 4200, "via http")]
    finally:
        process.stop()


def test_readiness_and_metrics(pipeline):
    for base in (pipeline.buy, pipeline.history):
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
    consumer = f"http://127.0.0.1:{pipeline.ports['persist-purchase']}"
    assert requests.get(f"{consumer}/readyz", timeout=5).json() == {"kafka": True, "mongodb": True}
    buy(pipeline, new_user(), 1)
    metrics = requests.get(f"{pipeline.buy}/metrics", timeout=5).text
    assert "purchases_accepted_total" in metrics
    written = wait_until(lambda: "purchases_written_total" in requests.get(f"{consumer}/metrics", timeout=5).text,
                         10, message="consumer metrics")
    assert written
