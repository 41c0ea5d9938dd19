"""purchase_common.tracing's pure parts: which exporter the settings pick, how a trace crosses a
Kafka record, and the consumer's spans per record and per write (the SDK's own in-memory exporter
collects them; the real-Zipkin tests are tests/integration/test_traces.py)."""
from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from opentelemetry import trace
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


TRACEPARENT = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"


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


def test_a_plain_w3c_header_is_read_too_and_a_record_without_one_makes_no_span(spans):
    t, exporter = spans
    plain = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    cloudevent = "00-" + "12" * 16 + "-" + "34" * 8 + "-01"
    records = [record(1, [("traceparent", plain.encode())]), record(2, []),
               record(3, [("ce_traceparent", cloudevent.encode())])]
    batch = tracing.ConsumedBatch(t, records, "group")
    with batch.storing(records) as store:
        pass
    batch.stored(records, store, frozenset({2}))
    finished = {s.attributes.get("messaging.kafka.offset"): s for s in exporter.get_finished_spans()
                if s.kind == SpanKind.CONSUMER}
    assert sorted(finished) == [1, 3], "the untraced record makes no span: the consumer starts no trace"
    assert format(finished[1].context.trace_id, "032x") == "ab" * 16
    assert format(finished[3].context.trace_id, "032x") == "12" * 16
    assert (finished[1].attributes["purchase.outcome"], finished[3].attributes["purchase.outcome"]) == (
        "stored", "duplicate")
    store_span = next(s for s in exporter.get_finished_spans() if s.name == "store purchases")
    assert store_span.parent is None and len(store_span.links) == 2, "a batch's write links every traced record"
    assert store_span.attributes["purchase.batch.size"] == 3
    assert finished[3].attributes["purchase.store.span_id"] == format(store_span.context.span_id, "016x")


def test_records_without_a_sampled_context_make_no_span(spans):
    t, exporter = spans
    unsampled = ("ce_traceparent", ("00-" + "ab" * 16 + "-" + "cd" * 8 + "-00").encode())
    records = [record(1, []), record(2, [("ce_id", b"e2")]), record(3, [unsampled])]
    batch = tracing.ConsumedBatch(t, [*records, record(4, [("ce_traceparent", TRACEPARENT.encode())])], "group")
    assert not batch.traces_any(records) and batch.traces_any([record(4, [])])
    assert batch.dead_letter_sending(record(2, []), "purchases.dlq", "bad") is None
    assert exporter.get_finished_spans() == ()


def test_a_dead_letter_is_a_producer_span_under_the_records_span_with_its_reason(spans):
    t, exporter = spans
    poison = record(5, [("ce_id", b"bad"), ("ce_traceparent", TRACEPARENT.encode())])
    batch = tracing.ConsumedBatch(t, [poison], "group")
    send = batch.dead_letter_sending(poison, "purchases.dlq", "event data is not JSON")
    batch.dead_lettered(poison, send, 0, 42)
    process, = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    dead_letter, = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert dead_letter.parent.span_id == process.context.span_id
    assert process.attributes["purchase.outcome"] == "dead_lettered"
    assert dead_letter.attributes["purchase.dead_letter.source_offset"] == 5
    assert dead_letter.attributes["messaging.kafka.offset"] == 42


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_trace_budget_allows_a_seconds_worth_at_once_then_its_rate():
    clock = Clock()
    budget = tracing.TraceBudget(4, clock)
    assert [budget.take() for _ in range(6)] == [True] * 4 + [False] * 2, "a burst gets one second's worth"
    clock.now += 0.5
    assert [budget.take() for _ in range(3)] == [True, True, False], "then 4 a second"
    clock.now += 60
    assert sum(budget.take() for _ in range(10)) == 4, "an idle minute saves no more than a second's worth"


def test_a_budget_under_one_a_second_still_holds_one_trace():
    clock = Clock()
    budget = tracing.TraceBudget(0.5, clock)
    assert [budget.take(), budget.take()] == [True, False]
    clock.now += 1.0
    assert not budget.take()
    clock.now += 1.0
    assert budget.take()


@pytest.mark.parametrize("per_second, taken", [(float("inf"), 1000), (0, 0)])
def test_inf_allows_every_trace_and_0_none(per_second, taken):
    budget = tracing.TraceBudget(per_second, Clock())
    assert sum(budget.take() for _ in range(1000)) == taken


def test_a_negative_budget_is_refused_by_name():
    with pytest.raises(ValueError, match="TRACES_PER_SECOND"):
        tracing.TraceBudget(-1)


def traced(env: dict) -> tracing.Tracing:
    return tracing.Tracing(config.load({"OTEL_TRACES_EXPORTER": "console", **env}), "test")


def is_trace(context) -> bool:
    return trace.get_current_span(context).get_span_context().is_valid


def test_a_callers_traceparent_is_continued_whatever_the_budget():
    t = traced({"TRACES_PER_SECOND": "0"})
    context = t.request_context({"traceparent": TRACEPARENT})
    assert context is not None
    parent = trace.get_current_span(context).get_span_context()
    assert (format(parent.trace_id, "032x"), format(parent.span_id, "016x")) == ("ab" * 16, "cd" * 8)
    assert t.request_context({}) is None, "no budget: a request without a trace makes none"
    assert t.request_context({"traceparent": "junk"}) is None, "an unreadable traceparent is no trace"


def test_requests_without_a_traceparent_start_traces_while_the_budget_allows():
    t = traced({"TRACES_PER_SECOND": "3"})
    started = [t.request_context({}) for _ in range(10)]
    assert sum(context is not None for context in started) == 3
    assert not any(is_trace(context) for context in started if context is not None), "each a new trace's root"


def test_with_no_exporter_no_request_is_traced():
    assert tracing.Tracing(config.load({}), "buy").request_context({"traceparent": TRACEPARENT}) is None


def test_mongodb_commands_make_spans_only_inside_a_trace(spans):
    from pymongo.monitoring import CommandStartedEvent, CommandSucceededEvent

    t, exporter = spans
    provider = SimpleNamespace(get_tracer=lambda name: t.tracer)
    listener, = tracing.Tracing.mongodb_listeners(SimpleNamespace(enabled=True, provider=provider))
    server = ("127.0.0.1", 27017)

    def command(request_id: int) -> None:
        listener.started(CommandStartedEvent({"find": "purchases"}, "db", request_id, server, request_id))
        listener.succeeded(CommandSucceededEvent(timedelta(milliseconds=1), {"ok": 1}, "find", request_id, server,
                                                 request_id, database_name="db"))

    command(1)  # a probe's ping, an untraced request's find
    assert exporter.get_finished_spans() == ()
    with t.tracer.start_as_current_span("request") as request:
        command(2)
    find = next(s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT)
    assert find.parent.span_id == request.get_span_context().span_id
