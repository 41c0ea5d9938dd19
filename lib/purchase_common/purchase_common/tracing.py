"""Traces: one per purchase, from buy's request through Kafka to the consumer's write.

The OpenTelemetry SDK makes and exports the spans; this module only says which spans the
functions make and how a trace crosses Kafka. ``Tracing(settings, service)`` is one function's
tracer: with no exporter configured (the default) it is off, the functions skip every span and
the cost is one attribute check per request. With one, spans go through a BatchSpanProcessor
(its own thread, a bounded queue: a collector that is down or slow never slows a purchase; what
does not fit is dropped and counted on /metrics as
``otel_sdk_processor_span_processed_total{error_type="queue_full"}``).

Which purchases are traced: every request that carries a caller's ``traceparent`` continues it
(the SDK's sampler, parent-based by default, decides from its flags); a request without one
starts a trace only while the process's ``TRACES_PER_SECOND`` allows (a token bucket, the
rate-limiting sampler of Jaeger and Zipkin's Brave). The rest make no span at all, never even
enter the SDK, and their records carry no trace context, so the consumer makes none either: an
untraced purchase costs one header lookup, and tracing's CPU stays bounded however busy buy is.

Across Kafka the trace travels as the CloudEvents distributed-tracing extension: buy's producer
span's W3C context as the event's ``traceparent``/``tracestate`` attributes, i.e. the
``ce_traceparent``/``ce_tracestate`` headers of the binary-mode record. The consumer makes one
span per record in that trace, and one span per stored batch with a link to each record's span
(the messaging conventions' batch shape); Zipkin keeps no links, so each record's span also
names the batch span in ``purchase.store.trace_id``/``purchase.store.span_id`` tags.
"""

from __future__ import annotations

import atexit
import functools
import importlib.metadata
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .config import Settings

EXPORTERS = ("zipkin_json", "otlp_proto_http", "console", "none")
SHUTDOWN_TIMEOUT_MS = 2000
INTERNAL_METRICS = "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"
_W3C = TraceContextTextMapPropagator()

try:  # the instrumentation scope's version on every span
    _VERSION = importlib.metadata.version("purchase-common")
except importlib.metadata.PackageNotFoundError:
    _VERSION = ""


def exporter_name(settings: Settings) -> str:
    """OTEL_TRACES_EXPORTER, or the exporter whose endpoint is set, else none."""
    name = settings.otel_traces_exporter.strip().lower()
    if not name:
        if settings.otel_exporter_zipkin_endpoint:
            name = "zipkin_json"
        elif settings.otel_exporter_otlp_endpoint:
            name = "otlp_proto_http"
        else:
            name = "none"
    aliases = {"zipkin": "zipkin_json", "otlp": "otlp_proto_http"}
    name = aliases.get(name, name)
    if name not in EXPORTERS:
        raise ValueError(f"OTEL_TRACES_EXPORTER must be one of {', '.join(EXPORTERS)}, got {name!r}")
    return name


def _exporter(name: str, settings: Settings) -> SpanExporter:
    # Each exporter reads its other OTEL_EXPORTER_* variables (headers, timeout) itself.
    if name == "zipkin_json":
        from opentelemetry.exporter.zipkin.json import ZipkinExporter

        return ZipkinExporter(endpoint=settings.otel_exporter_zipkin_endpoint or None)
    if name == "otlp_proto_http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = settings.otel_exporter_otlp_endpoint.rstrip("/")
        return OTLPSpanExporter(endpoint=f"{base}/v1/traces" if base else None)
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter()


@functools.cache
def _dropped_spans_meter() -> Any:
    """The SDK counts the spans its queue drops as an OpenTelemetry metric; this reader puts
    that metric on the process's Prometheus registry, i.e. on /metrics. One per process: a
    second reader would list the same series twice."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    return MeterProvider(metric_readers=[PrometheusMetricReader()])


def _counting_processor(exporter: SpanExporter, settings: Settings) -> BatchSpanProcessor:
    """A BatchSpanProcessor that counts what it drops. The SDK makes a component's metrics only
    when OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED is true as it is built, and it is set just for
    this one: a tracer built with it would count every span it starts, a cost on every span."""
    before = os.environ.get(INTERNAL_METRICS)
    os.environ[INTERNAL_METRICS] = "true"
    try:
        queue = settings.otel_bsp_max_queue_size
        return BatchSpanProcessor(
            exporter,
            max_queue_size=queue,
            schedule_delay_millis=settings.otel_bsp_schedule_delay,
            max_export_batch_size=min(512, queue),
            meter_provider=_dropped_spans_meter(),
        )
    finally:
        if before is None:
            del os.environ[INTERNAL_METRICS]
        else:
            os.environ[INTERNAL_METRICS] = before


class TraceBudget:
    """At most ``per_second`` new traces a second: a token bucket holding one second's worth
    (at least one, unless 0), so a quiet process traces every purchase and a busy one a bounded
    number. ``inf`` allows every one, 0 none. Safe across threads (history serves on several)."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic):
        if not per_second >= 0:
            raise ValueError(f"TRACES_PER_SECOND must be 0 or more (inf: every request), got {per_second}")
        self.per_second = per_second
        self.unlimited = math.isinf(per_second)
        self._capacity = max(1.0, per_second) if 0 < per_second < math.inf else 0.0
        self._tokens = self._capacity
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        if self.unlimited:
            return True
        with self._lock:
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.per_second)
            self._last = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


class _HeaderGetter(Getter[Mapping[str, bytes]]):
    """A record's trace context: the CloudEvent's extension attributes, else plain W3C headers
    (a producer instrumented by OpenTelemetry's Kafka instrumentations)."""

    def get(self, carrier: Mapping[str, bytes], key: str) -> list[str] | None:
        raw = carrier.get(f"ce_{key}", carrier.get(key))
        if raw is None:
            return None
        try:
            return [raw.decode("ascii")]
        except (UnicodeDecodeError, AttributeError):
            return None

    def keys(self, carrier: Mapping[str, bytes]) -> list[str]:
        return list(carrier)


_HEADERS = _HeaderGetter()


def _w3c(span: Span) -> dict[str, str]:
    """The span's context as W3C headers: traceparent, and tracestate when set."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def cloudevent_headers(span: Span) -> list[tuple[str, bytes]]:
    """The span's context as the CloudEvent's distributed-tracing extension: binary-mode
    headers ``ce_traceparent`` (and ``ce_tracestate``)."""
    return [(f"ce_{name}", value.encode("ascii")) for name, value in _w3c(span).items()]


def traceparent(span: Span) -> str | None:
    return _w3c(span).get("traceparent")


def _continues(context: Context) -> bool:
    return trace.get_current_span(context).get_span_context().is_valid


def _sampled(context: Context) -> bool:
    parent = trace.get_current_span(context).get_span_context()
    return parent.is_valid and parent.trace_flags.sampled


def failed(span: Span, error: BaseException | str) -> None:
    span.set_status(Status(StatusCode.ERROR, str(error)))
    span.set_attribute("error.type", error if isinstance(error, str) else type(error).__name__)


class Tracing:
    """One function's tracer. ``enabled`` is False when nothing is exported: callers then make
    no span at all."""

    def __init__(self, settings: Settings, service: str):
        self.settings = settings
        self.exporter = exporter_name(settings)
        self.enabled = self.exporter != "none"
        self.budget = TraceBudget(settings.traces_per_second)
        self._processor: BatchSpanProcessor | None = None
        self.provider: trace.TracerProvider = trace.NoOpTracerProvider()
        if self.enabled:
            self._processor = _counting_processor(_exporter(self.exporter, settings), settings)
            # The SDK logs every dropped span; the counter above says it once per scrape instead.
            logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)
            # The SDK's own exit hook would wait up to 30 s for an unreachable collector.
            provider = TracerProvider(
                resource=Resource.create({SERVICE_NAME: settings.otel_service_name or service}), shutdown_on_exit=False
            )
            provider.add_span_processor(self._processor)
            self.provider = provider
            atexit.register(self.shutdown)
        self.tracer = self.provider.get_tracer("purchase_common", _VERSION)

    def mongodb_listeners(self) -> list[Any]:
        """pymongo command listeners that make a CLIENT span per command run inside a trace (the
        pymongo instrumentation's tracer, handed to one client rather than registered globally).
        A command outside one (a readiness probe's ping, an untraced request's find) makes none:
        the instrumentation's own tracer would start a trace for each."""
        if not self.enabled:
            return []
        from opentelemetry.instrumentation.pymongo import CommandTracer

        class InTraceCommandTracer(CommandTracer):
            def started(self, event: Any) -> None:
                if _continues(context_api.get_current()):
                    super().started(event)

        return [InTraceCommandTracer(self.provider.get_tracer("opentelemetry.instrumentation.pymongo"))]

    def request_context(self, headers: Any) -> Context | None:
        """Where an incoming request's trace goes on: the caller's W3C context, a new trace's
        (empty) one while the budget allows, else None: the request makes no span.
        ``headers``: the framework's own (Starlette's, werkzeug's), whose ``get`` ignores case."""
        if not self.enabled:
            return None
        if headers.get("traceparent") is not None:
            context = _W3C.extract(headers)
            if _continues(context):
                return context
        return Context() if self.budget.take() else None

    def server_span(self, method: str, route: str, path: str, context: Context) -> AbstractContextManager[Span]:
        """The request's SERVER span, current while the handler runs, in ``context``'s trace."""
        return self.tracer.start_as_current_span(
            f"{method} {route}",
            context=context,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route, "url.path": path},
            record_exception=False,
            set_status_on_exception=False,
        )

    def producer_span(self, topic: str, message_id: str, key: bytes) -> Span:
        """A send's PRODUCER span under the current span; the caller ends it at the ack. Not made
        current: nothing runs inside it but the send."""
        return self.tracer.start_span(
            f"send {topic}", kind=SpanKind.PRODUCER, attributes=messaging_attributes("send", topic, message_id, key)
        )

    def shutdown(self) -> None:
        """Export what is queued, waiting at most SHUTDOWN_TIMEOUT_MS."""
        processor, self._processor = self._processor, None
        if processor is not None:
            processor.force_flush(SHUTDOWN_TIMEOUT_MS)
            processor.shutdown()  # type: ignore[no-untyped-call]  # then bounded by the exporter's timeout


def answered(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
        span.set_attribute("error.type", str(status))


def messaging_attributes(operation: str, topic: str, message_id: str | None, key: bytes | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": topic,
    }
    if message_id is not None:
        attributes["messaging.message.id"] = message_id
    if key is not None:
        attributes["messaging.kafka.message.key"] = key.decode("utf-8", "replace")
    return attributes


def delivered(span: Span, partition: int | None, offset: int | None) -> None:
    if partition is not None:
        span.set_attribute("messaging.destination.partition.id", str(partition))
    if offset is not None:
        span.set_attribute("messaging.kafka.offset", offset)


def _where(record: Any) -> tuple[str, int, int]:
    return (record.topic, record.partition, record.offset)


class ConsumedBatch:
    """The spans of one polled batch: a CONSUMER span per record that carries a sampled trace
    context, in that trace, from the poll that brought it ("consumed") to the write that stored it
    ("stored") or its dead letter; and, per write, a ``store`` span linked to each of them. A
    record without a sampled one (a purchase buy did not trace or record) makes no span: the
    consumer never starts a trace, so every trace is a whole purchase."""

    def __init__(self, tracing: Tracing, records: Sequence[Any], group: str):
        self.tracer = tracing.tracer
        self._spans: dict[tuple[str, int, int], Span] = {}
        self._ids: dict[tuple[str, int, int], str] = {}
        for record in records:
            headers = dict(record.headers or ())
            context = _W3C.extract(headers, getter=_HEADERS)
            if not _sampled(context):  # its producer recorded nothing: neither does the consumer
                continue
            raw_id = headers.get("ce_id")
            event_id = raw_id.decode("utf-8", "replace") if isinstance(raw_id, bytes) else None
            attributes = messaging_attributes("process", record.topic, event_id, record.key)
            attributes["messaging.destination.partition.id"] = str(record.partition)
            attributes["messaging.kafka.offset"] = record.offset
            attributes["messaging.consumer.group.name"] = group
            self._spans[_where(record)] = self.tracer.start_span(
                f"process {record.topic}", context=context, kind=SpanKind.CONSUMER, attributes=attributes
            )
            if event_id is not None:
                self._ids[_where(record)] = event_id

    def traces_any(self, records: Sequence[Any]) -> bool:
        return any(_where(record) in self._spans for record in records)

    def span(self, record: Any) -> Span | None:
        return self._spans.get(_where(record))

    @contextmanager
    def storing(self, records: Sequence[Any]) -> Iterator[Span]:
        """The batch's write as one span, current while it runs (so the database client's
        span is its child): the child of the traced record's span when it is the only one,
        else a root linked to every traced record's span."""
        spans = [span for span in map(self.span, records) if span is not None]
        parent = trace.set_span_in_context(spans[0]) if len(spans) == 1 else Context()
        with self.tracer.start_as_current_span(
            "store purchases",
            context=parent,
            links=[Link(span.get_span_context()) for span in spans],
            attributes={"purchase.batch.size": len(records)},
        ) as span:
            yield span

    def stored(self, records: Sequence[Any], store: Span, duplicate_indexes: frozenset[int]) -> None:
        """End each traced record's span (``records`` in the write's order): stored, or a
        redelivered duplicate the unique eventId absorbed."""
        context = store.get_span_context()
        store_ids = {
            "purchase.store.trace_id": format(context.trace_id, "032x"),
            "purchase.store.span_id": format(context.span_id, "016x"),
        }
        for index, record in enumerate(records):
            span = self._spans.pop(_where(record), None)
            if span is None:
                continue
            outcome = "duplicate" if index in duplicate_indexes else "stored"
            span.set_attributes({**store_ids, "purchase.outcome": outcome})
            span.end()

    def dead_letter_sending(self, record: Any, topic: str, reason: str) -> Span | None:
        """A poison record's dead letter: a PRODUCER span under the record's span, which gets the
        reason and where the record came from. ``dead_lettered`` ends both once the send is acked.
        None when the record is not traced."""
        span = self.span(record)
        if span is None:
            return None
        details = {
            "purchase.dead_letter.reason": reason,
            "purchase.dead_letter.source_topic": record.topic,
            "purchase.dead_letter.source_partition": record.partition,
            "purchase.dead_letter.source_offset": record.offset,
        }
        span.set_attributes({"purchase.outcome": "dead_lettered", **details})
        event_id = self._ids.get(_where(record))
        return self.tracer.start_span(
            f"send {topic}",
            context=trace.set_span_in_context(span),
            kind=SpanKind.PRODUCER,
            attributes={**messaging_attributes("send", topic, event_id, record.key), **details},
        )

    def dead_lettered(self, record: Any, send: Span | None, partition: int | None, offset: int | None) -> None:
        if send is None:
            return
        delivered(send, partition, offset)
        send.end()
        self._spans.pop(_where(record)).end()

    def abandoned(self, error: str) -> None:
        """End what is still open when the process gives up on the batch (it stays uncommitted)."""
        for span in self._spans.values():
            failed(span, error)
            span.end()
        self._spans.clear()
