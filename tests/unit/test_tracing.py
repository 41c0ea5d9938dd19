"""purchase_common.tracing's pure parts: which exporter the settings pick, how a trace crosses a
Kafka record, and the consumer's spans per record and per write (the SDK's own in-memory exporter
collects them; the real-Zipkin tests are tests/integration/test_traces.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from purchase_common import config, tracing


@pytest.mark.parametrize("env, expected", [
    ({}, "none"),
    ({"OTEL_EXPORTER_ZIPKIN_ENDPOINT": "http://127.0.0.1:9411/api/v2/spans"}, "zipkin_json"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "otlp_proto_http"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_ZIPKIN_ENDPOINT": "http://x/api/v2/spans"}, "otlp_proto_http"),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_ZIPKIN_ENDPOINT": "http://x/api/v2/spans"}, "none"),
])
def test_the_exporter_is_the_one_named_else_the_one_whose_endpoint_is_set(env, expected):
    assert tracing.exporter_name(config.load(env)) == expected


def test_an_unknown_exporter_is_refused_by_name():
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        tracing.exporter_name(config.load({"OTEL_TRACES_EXPORTER": "jaeger"}))


def test_with_no_exporter_nothing_is_made():
    assert not tracing.Tracing(config.load({}), "buy").enabled


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    t = tracing.Tracing(config.load({}), "test")
    t.tracer, t.enabled = provider.get_tracer("test"), True
    return t, exporter


def record(offset, headers, topic="purchases", partition=0):
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=b"u1", headers=headers)


def test_a_record_continues_the_producers_span_through_its_cloudevent_headers(spans):
    t, exporter = spans
    send = t.producer_span("purchases", "e1", b"u1")
    headers = [("ce_id", b"e1"), *tracing.cloudevent_headers(send)]
    send.end()
    assert [name for name, _ in headers] == ["ce_id", "ce_traceparent"]
    batch = tracing.ConsumedBatch(t, [record(7, headers)], "group")
    with batch.storing([record(7, headers)]) as store:
        pass
    batch.stored([record(7, headers)], store, frozenset())
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    process = by_name["process purchases"]
    assert process.kind == SpanKind.CONSUMER and process.parent.span_id == send.get_span_context().span_id
    assert process.attributes["messaging.message.id"] == "e1"
    assert by_name["store purchases"].parent.span_id == process.context.span_id, "a lone record's write is its child"


def test_a_plain_w3c_header_is_read_too_and_a_record_without_one_starts_a_trace(spans):
    t, exporter = spans
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    records = [record(1, [("traceparent", parent.encode())]), record(2, [])]
    batch = tracing.ConsumedBatch(t, records, "group")
    with batch.storing(records) as store:
        pass
    batch.stored(records, store, frozenset({1}))
    finished = {s.attributes.get("messaging.kafka.offset"): s for s in exporter.get_finished_spans()}
    assert format(finished[1].context.trace_id, "032x") == "ab" * 16
    assert finished[2].parent is None
    assert (finished[1].attributes["purchase.outcome"], finished[2].attributes["purchase.outcome"]) == (
        "stored", "duplicate")
    store_span = next(s for s in exporter.get_finished_spans() if s.name == "store purchases")
    assert store_span.parent is None and len(store_span.links) == 2, "a batch's write links every record"
    assert finished[2].attributes["purchase.store.span_id"] == format(store_span.context.span_id, "016x")


def test_a_dead_letter_is_a_producer_span_under_the_records_span_with_its_reason(spans):
    t, exporter = spans
    poison = record(5, [("ce_id", b"bad")])
    batch = tracing.ConsumedBatch(t, [poison], "group")
    send = batch.dead_letter_sending(poison, "purchases.dlq", "event data is not JSON")
    batch.dead_lettered(poison, send, 0, 42)
    process, = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    dead_letter, = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert dead_letter.parent.span_id == process.context.span_id
    assert process.attributes["purchase.outcome"] == "dead_lettered"
    assert dead_letter.attributes["purchase.dead_letter.source_offset"] == 5
    assert dead_letter.attributes["messaging.kafka.offset"] == 42
