"""buy's records read by a consumer that is not the Python SDK: the CloudEvents Go SDK's Kafka
binding (Sarama), built from tests/interop/ce_go_reader and run against the real topic.

The Go binding takes every attribute from the ce_* headers only and ignores the Kafka key, so it
sees partitionkey exactly when buy transmits it as a header, as the Kafka protocol binding asks.
"""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
import uuid
from decimal import Decimal

import pytest
import requests
from cloudevents.kafka import to_binary
from cloudevents_reference import build_event
from kafka import KafkaProducer
from purchase_common.events import DATA_CONTENT_TYPE, EVENT_SOURCE, EVENT_TYPE, encode_data
from purchase_common.schema import Purchase
from support import wait_until

from tools.common import ROOT, build_go_program

pytestmark = pytest.mark.integration
READER_SOURCE = ROOT / "tests" / "interop" / "ce_go_reader"
PURCHASES = 12


@pytest.fixture(scope="module")
def go_reader():
    """The reader binary, built once per source version into the cache outside the clone."""
    return build_go_program("ce_go_reader", READER_SOURCE, ("go.mod", "go.sum", "main.go"))


def read_with_go(binary, pipeline) -> list[dict]:
    result = subprocess.run([str(binary), "-bootstrap", pipeline.stack.kafka_bootstrap, "-topic", pipeline.topic,
                             "-timeout", "60s"], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, f"ce_go_reader failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def send_old_form_record(pipeline, user: str) -> str:
    """A record as buy wrote it before ce_partitionkey: the SDK's to_binary output unchanged."""
    event = build_event(Purchase("old form", user, 700))
    message = to_binary(event, data_marshaller=encode_data)
    producer = KafkaProducer(bootstrap_servers=pipeline.stack.kafka_bootstrap, acks="all")
    try:
        producer.send(pipeline.topic, key=message.key.encode(), value=message.value,
                      headers=list(message.headers.items())).get(timeout=10)
    finally:
        producer.close()
    return event["id"]


def test_go_sdk_reads_every_attribute_of_buys_records(pipeline, go_reader):
    bodies = {}
    for index in range(PURCHASES):
        body = {"username": f"gopher {index} ✓", "userId": f"go-{uuid.uuid4().hex[:8]}",
                "price": [0, 12, 3.5, 999999.99][index % 4]}
        response = requests.post(f"{pipeline.buy}/api/buy", json=body, timeout=30)
        assert response.status_code == 202, response.text
        bodies[response.json()["id"]] = body
    old_user = f"go-old-{uuid.uuid4().hex[:8]}"
    old_id = send_old_form_record(pipeline, old_user)

    started = time.monotonic()
    lines = read_with_go(go_reader, pipeline)
    print(f"ce_go_reader read {len(lines)} records in {time.monotonic() - started:.2f}s")
    by_id = {}
    for line in lines:
        event = line.get("event") or {}
        if event.get("id") in bodies or event.get("id") == old_id:
            by_id[event["id"]] = line
    missing = set(bodies) - set(by_id)
    assert not missing, f"the Go reader did not see {missing}; errors: {[x for x in lines if x.get('error')][:3]}"

    for event_id, body in bodies.items():
        line = by_id[event_id]
        assert not line.get("error"), line
        event = line["event"]
        assert line["key"] == body["userId"]
        assert "ce_partitionkey" in line["headers"], line["headers"]
        assert event["specversion"] == "1.0"
        assert event["type"] == EVENT_TYPE and event["source"] == EVENT_SOURCE and event["id"] == event_id
        assert event["datacontenttype"] == DATA_CONTENT_TYPE
        assert event["partitionkey"] == body["userId"]
        sent_at = dt.datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
        assert abs((dt.datetime.now(dt.UTC) - sent_at).total_seconds()) < 300
        data = event["data"]
        assert data["username"] == body["username"] and data["userId"] == body["userId"]
        assert Decimal(str(data["price"])) == Decimal(str(body["price"]))

    # Why the header is needed: a record without it decodes, but the Go SDK has no partitionkey.
    old = by_id[old_id]
    assert not old.get("error") and "partitionkey" not in old["event"] and old["key"] == old_user

    # The Python consumer keeps reading both forms.
    collection = pipeline.collection()
    wait_until(lambda: collection.count_documents({"eventId": {"$in": [*bodies, old_id]}}) == PURCHASES + 1,
               30, 0.2, "every purchase stored, old form included")
