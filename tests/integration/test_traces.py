"""One trace per purchase, read back from the real Zipkin the suite's functions export to
(tests/conftest.py): buy's request, its Kafka send, the consumer's span for the record and the
batch's write with its MongoDB command; a retried Idempotency-Key; a poison record's dead letter;
a buy whose Kafka is down; a busy buy tracing only what its budget allows."""
from __future__ import annotations

import secrets
import time
import uuid

import pytest
import requests
from kafka import KafkaConsumer, KafkaProducer
from support import isolated_env, wait_until

from devstack import stack as devstack
from tools.common import free_port

pytestmark = pytest.mark.integration
# The SDK exports in batches (every few seconds), then Zipkin indexes what it got.
SPANS_ARRIVE_S = 40


def tags(span: dict) -> dict:
    return span.get("tags", {})


def one(spans: list[dict], **where) -> dict:
    found = [s for s in spans if all((s.get(k) if k != "service" else s["localEndpoint"]["serviceName"]) == v
                                     for k, v in where.items())]
    assert len(found) == 1, f"expected one span with {where}, got {len(found)}: {[s['name'] for s in spans]}"
    return found[0]


def wait_for_spans(zipkin, trace_id: str, done, what: str) -> list[dict]:
    """The trace's spans once ``done(spans)`` holds (bounded wait)."""
    spans: list[dict] = []

    def arrived() -> bool:
        nonlocal spans
        try:
            spans = zipkin.trace(trace_id)
        except requests.RequestException:
            return False
        return bool(spans) and done(spans)

    wait_until(arrived, SPANS_ARRIVE_S, interval_s=0.5, message=what)
    return spans


def consumed(spans: list[dict], event_id: str) -> list[dict]:
    return [s for s in spans if s.get("kind") == "CONSUMER" and tags(s).get("messaging.message.id") == event_id]


def stored_or_not(spans: list[dict], event_id: str) -> bool:
    """Whether the consumer's span for the event has ended (it has an outcome)."""
    return any("purchase.outcome" in tags(c) for c in consumed(spans, event_id))


def bought_and_consumed(spans: list[dict], event_id: str) -> bool:
    """Whether both processes' spans of the purchase are in: each exports on its own schedule."""
    return stored_or_not(spans, event_id) and any(s.get("kind") == "SERVER" for s in spans)


def purchase(user_id: str) -> dict:
    return {"username": "traced", "userId": user_id, "price": 9.99}


def test_a_purchase_is_one_trace_from_the_request_to_the_database_write(pipeline, zipkin):
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    answer = requests.post(f"{pipeline.gateway}/api/buy", json=purchase("trace-" + uuid.uuid4().hex[:8]), timeout=10,
                           headers={"traceparent": f"00-{trace_id}-{caller_span}-01"})
    assert answer.status_code == 202, answer.text
    event_id = answer.json()["id"]
    version, answered_trace, answered_span, flags = answer.headers["traceparent"].split("-")
    assert (version, answered_trace, flags) == ("00", trace_id, "01"), "the 202 names the caller's trace"

    spans = wait_for_spans(zipkin, trace_id, lambda s: bought_and_consumed(s, event_id), "both functions' spans")
    server = one(spans, kind="SERVER", service="buy")
    assert (server["parentId"], server["id"]) == (caller_span, answered_span)
    assert tags(server)["http.response.status_code"] == "202" and tags(server)["purchase.event_id"] == event_id
    send = one(spans, kind="PRODUCER", service="buy")
    assert send["parentId"] == server["id"]
    assert tags(send)["messaging.destination.name"] == pipeline.topic
    assert tags(send)["messaging.message.id"] == event_id
    assert {"messaging.destination.partition.id", "messaging.kafka.offset"} <= tags(send).keys(), "the ack's place"
    (process,) = consumed(spans, event_id)
    assert process["localEndpoint"]["serviceName"] == "persist-purchase"
    assert process["parentId"] == send["id"], "the consumer continues the producer's span (ce_traceparent)"
    assert tags(process)["purchase.outcome"] == "stored"
    assert tags(process)["messaging.consumer.group.name"] == pipeline.group
    assert tags(process)["messaging.kafka.offset"] == tags(send)["messaging.kafka.offset"]
    # Consumed once written: at most a moment before buy hears the ack that went out with it.
    assert process["timestamp"] >= send["timestamp"] + send["duration"] - 50_000

    store_trace, store_id = tags(process)["purchase.store.trace_id"], tags(process)["purchase.store.span_id"]
    writes = wait_for_spans(zipkin, store_trace, lambda s: any(x.get("parentId") == store_id for x in s),
                            "the batch's write and its MongoDB command")
    store = one(writes, id=store_id)
    assert store["name"] == "store purchases" and int(tags(store)["purchase.batch.inserted"]) >= 1
    if store_trace == trace_id:  # a batch of this one record: its write is the record span's child
        assert store["parentId"] == process["id"]
    insert = one(writes, parentId=store_id)
    assert insert["kind"] == "CLIENT" and "insert" in insert["name"] and tags(insert)["db.system"] == "mongodb"


def test_an_idempotency_key_retry_is_two_buy_traces_and_one_stored_purchase(pipeline, zipkin):
    body, key = purchase("trace-idem-" + uuid.uuid4().hex[:8]), "order-" + uuid.uuid4().hex
    answers = [requests.post(f"{pipeline.gateway}/api/buy", json=body, headers={"Idempotency-Key": key}, timeout=10)
               for _ in range(2)]
    assert [a.status_code for a in answers] == [202, 202]
    event_id = answers[0].json()["id"]
    assert answers[1].json()["id"] == event_id
    traces = [a.headers["traceparent"].split("-")[1] for a in answers]
    assert traces[0] != traces[1], "each request is a trace of its own"

    outcomes = []
    for trace_id in traces:
        spans = wait_for_spans(zipkin, trace_id, lambda s: bought_and_consumed(s, event_id), "each copy consumed")
        one(spans, kind="SERVER", service="buy")
        outcomes += [tags(c)["purchase.outcome"] for c in consumed(spans, event_id)]
    assert sorted(outcomes) == ["duplicate", "stored"]
    assert pipeline.collection().count_documents({"eventId": event_id}) == 1


def test_a_poison_record_keeps_its_trace_into_the_dead_letter_topic(pipeline, zipkin):
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{parent}-01".encode()
    producer = KafkaProducer(bootstrap_servers=pipeline.stack.kafka_bootstrap)
    sent = producer.send(pipeline.topic, key=b"poison", value=b"{not json",
                         headers=[("ce_specversion", b"1.0"), ("ce_id", b"poison-" + secrets.token_hex(4).encode()),
                                  ("ce_type", b"com.purchase.created"), ("ce_source", b"/tests"),
                                  ("ce_traceparent", traceparent)]).get(timeout=30)
    producer.close()

    spans = wait_for_spans(zipkin, trace_id, lambda s: any(x.get("kind") == "PRODUCER" for x in s),
                           "the dead letter's send")
    process = one(spans, kind="CONSUMER")
    assert process["parentId"] == parent
    assert tags(process)["purchase.outcome"] == "dead_lettered"
    assert tags(process)["purchase.dead_letter.reason"].startswith("undecodable CloudEvent: DataUnmarshallerError")
    assert (tags(process)["purchase.dead_letter.source_topic"], tags(process)["purchase.dead_letter.source_partition"],
            tags(process)["purchase.dead_letter.source_offset"]) == (pipeline.topic, str(sent.partition),
                                                                      str(sent.offset))
    send = one(spans, kind="PRODUCER")
    assert send["parentId"] == process["id"]
    assert tags(send)["messaging.destination.name"] == pipeline.dead_letter_topic

    consumer = KafkaConsumer(pipeline.dead_letter_topic, bootstrap_servers=pipeline.stack.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=15000)
    letters = [r for r in consumer if dict(r.headers).get("ce_traceparent") == traceparent]
    consumer.close()
    assert len(letters) == 1, "the dead letter carries the record's trace context"


def test_a_buy_with_kafka_down_is_a_503_whose_span_says_why(servers, zipkin, tmp_path):
    env = devstack.function_env(servers, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}", KAFKA_SEND_TIMEOUT_S="1")
    port = free_port()
    process = devstack.start_buy(env, port, tmp_path)
    try:
        trace_id = secrets.token_hex(16)
        started = time.monotonic()
        answer = requests.post(f"http://127.0.0.1:{port}/api/buy", json=purchase("trace-down"), timeout=30,
                               headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
        assert answer.status_code == 503 and time.monotonic() - started < 5
        spans = wait_for_spans(zipkin, trace_id, lambda s: len(s) >= 2, "buy's spans")
    finally:
        process.stop()
    server, send = one(spans, kind="SERVER"), one(spans, kind="PRODUCER")
    assert tags(server)["http.response.status_code"] == "503" and tags(server)["error.type"] == "503"
    assert send["parentId"] == server["id"] and tags(send)["error.type"] == "KafkaUnavailable"
    assert "error" in tags(send), "Zipkin marks the failed send"


def test_past_its_budget_buy_traces_only_callers_traces_and_untraced_records_carry_none(servers, zipkin,
                                                                                       tmp_path):
    env, names = isolated_env(servers, "budget-" + uuid.uuid4().hex[:8], TRACES_PER_SECOND="2")
    port = free_port()
    process = devstack.start_buy(env, port, tmp_path)
    try:
        answers = [requests.post(f"http://127.0.0.1:{port}/api/buy", json=purchase("trace-budget"), timeout=10)
                   for _ in range(12)]
        caller_trace = secrets.token_hex(16)
        called = requests.post(f"http://127.0.0.1:{port}/api/buy", json=purchase("trace-budget"), timeout=10,
                               headers={"traceparent": f"00-{caller_trace}-{secrets.token_hex(8)}-01"})
        traced = {a.json()["id"]: a.headers["traceparent"].split("-")[1] for a in answers
                  if "traceparent" in a.headers}
        for trace_id in traced.values():  # exported before buy stops (its last second's spans are lost)
            wait_for_spans(zipkin, trace_id, lambda s: any(x.get("kind") == "PRODUCER" for x in s), "a traced buy")
    finally:
        process.stop()
    assert [a.status_code for a in answers + [called]] == [202] * 13
    # Two at once, then two a second: a dozen requests within a few seconds start 2 to a few traces.
    assert 2 <= len(traced) < 12, f"{len(traced)} of 12 traced"
    assert called.headers["traceparent"].split("-")[1] == caller_trace, "a caller's trace is always continued"

    consumer = KafkaConsumer(names["topic"], bootstrap_servers=servers.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=10000)
    records = {}
    for r in consumer:
        headers = dict(r.headers)
        records[headers["ce_id"].decode()] = headers.get("ce_traceparent", b"").decode()
        if len(records) == 13:
            break
    consumer.close()
    assert len(records) == 13
    carried = {event_id: parent.split("-")[1] for event_id, parent in records.items() if parent}
    assert carried == {**traced, called.json()["id"]: caller_trace}, "exactly the traced purchases carry a context"


def test_a_history_page_is_a_server_span_over_its_mongodb_find_and_probes_make_none(pipeline, zipkin):
    trace_id, caller_span, probe_trace = secrets.token_hex(16), secrets.token_hex(8), secrets.token_hex(16)
    probe = requests.get(f"{pipeline.history}/healthz", timeout=10,
                         headers={"traceparent": f"00-{probe_trace}-{secrets.token_hex(8)}-01"})
    assert probe.status_code == 200
    page = requests.get(f"{pipeline.gateway}/api/user/trace-reader/purchases", timeout=10,
                        headers={"traceparent": f"00-{trace_id}-{caller_span}-01"})
    assert page.status_code == 200, page.text

    spans = wait_for_spans(zipkin, trace_id, lambda s: len(s) >= 2, "history's spans")
    server = one(spans, kind="SERVER", service="history")
    assert server["parentId"] == caller_span
    assert server["name"] == "get /api/user/{userid}/purchases", "named by route, never by the userId"
    # (The store's first use in this process also ensures its indexes: createIndexes spans.)
    (find,) = [s for s in spans if s.get("kind") == "CLIENT" and s["name"].endswith(".find")]
    assert find["parentId"] == server["id"] and tags(find)["db.system"] == "mongodb"
    # Both requests were served before the page's spans were exported: the probe's would be there.
    assert zipkin.trace(probe_trace) == []


def test_a_headless_browser_shows_the_purchase_in_zipkins_ui(pipeline, zipkin, tmp_path):
    """What the README's picture is: Zipkin's own page of one purchase, as a real browser renders it."""
    from matplotlib import image

    from tools.trace import screenshot

    answer = requests.post(f"{pipeline.gateway}/api/buy", json=purchase("trace-ui-" + uuid.uuid4().hex[:8]),
                           timeout=10)
    trace_id = answer.headers["traceparent"].split("-")[1]
    wait_for_spans(zipkin, trace_id, lambda s: bought_and_consumed(s, answer.json()["id"]), "the purchase's trace")
    pixels = image.imread(screenshot(zipkin, trace_id, tmp_path / "zipkin.png"))
    assert pixels.shape[:2] == (900, 1500)
    # Zipkin colours each service's bars: buy's red and persist-purchase's green are both drawn
    # (a "trace not found" page has neither).
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((r > 0.55) & (g < 0.35) & (b < 0.35)).sum() > 1000, "buy's spans are not drawn"
    assert ((g > 0.4) & (g > r + 0.1) & (b < 0.3)).sum() > 500, "persist-purchase's spans are not drawn"
