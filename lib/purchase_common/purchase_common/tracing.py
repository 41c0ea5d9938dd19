"""Traces: one per purchase, from buy's request through Kafka to the consumer's write.

The OpenTelemetry SDK makes and exports the spans; this module only says which spans the
functions make and how a trace crosses Kafka. ``Tracing(settings, service)`` is one function's
tracer: with no exporter configured (the default) it is off, the functions skip every span and
the cost is one attribute check per request. With one, spans go through a BatchSpanProcessor
(its own thread, a bounded queue: a collector that is down or slow never slows a purchase; what
does not fit is dropped and counted on /metrics as
``otel_sdk_processor_span_processed_total{error_type="queue_full"}``).

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
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

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
# The CloudEvents distributed-tracing extension's attributes, as Kafka binary-mode headers.
CE_TRACEPARENT, CE_TRACESTATE = "ce_traceparent", "ce_tracestate"
_W3C = TraceContextTextMapPropagator()

Headers = Sequence[tuple[str, bytes]]

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
    # The SDK makes its processor metrics only when this variable says so (read when the
    # processor is built).
    os.environ.setdefault("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    return MeterProvider(metric_readers=[PrometheusMetricReader()])


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


def cloudevent_headers(span: Span) -> list[tuple[str, bytes]]:
    """The span's context as the CloudEvent's distributed-tracing headers."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    return [(f"ce_{name}", value.encode("ascii")) for name, value in carrier.items()]


def traceparent(span: Span) -> str | None:
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def http_context(headers: Any) -> Context:
    """An incoming request's W3C trace context (an empty context when it carries none).
    ``headers``: the framework's own (Starlette's, werkzeug's), whose ``get`` ignores case."""
    return _W3C.extract(headers)


def failed(span: Span, error: BaseException | str, description: str = "") -> None:
    span.set_status(Status(StatusCode.ERROR, description or str(error)))
    span.set_attribute("error.type", error if isinstance(error, str) else type(error).__name__)


class Tracing:
    """One function's tracer. ``enabled`` is False when nothing is exported: callers then make
    no span at all."""

    def __init__(self, settings: Settings, service: str):
        self.settings = settings
        self.exporter = exporter_name(settings)
        self.enabled = self.exporter != "none"
        self._processor: BatchSpanProcessor | None = None
        self.provider: trace.TracerProvider = trace.NoOpTracerProvider()
        if self.enabled:
            queue = settings.otel_bsp_max_queue_size
            self._processor = BatchSpanProcessor(
                _exporter(self.exporter, settings),
                max_queue_size=queue,
                schedule_delay_millis=settings.otel_bsp_schedule_delay,
                max_export_batch_size=min(512, queue),
                meter_provider=_dropped_spans_meter(),
            )
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
        """pymongo command listeners that make a CLIENT span per command (the pymongo
        instrumentation's tracer, handed to one client rather than registered globally)."""
        if not self.enabled:
            return []
        from opentelemetry.instrumentation.pymongo import CommandTracer

        return [CommandTracer(self.provider.get_tracer("opentelemetry.instrumentation.pymongo"))]

    def server_span(self, method: str, route: str, path: str, headers: Any) -> AbstractContextManager[Span]:
        """The request's SERVER span, current while the handler runs, continuing the caller's trace."""
        return self.tracer.start_as_current_span(
            f"{method} {route}",
            context=http_context(headers),
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


class ConsumedBatch:
    """The spans of one polled batch: a CONSUMER span per record in the record's own trace,
    from the poll that brought it ("consumed") to the write that stored it ("stored") or its
    dead letter; and, per write, a ``store`` span linked to each of them."""

    def __init__(self, tracing: Tracing, records: Sequence[Any], group: str):
        self.tracer = tracing.tracer
        self._spans: dict[tuple[str, int, int], Span] = {}
        self._ids: dict[tuple[str, int, int], str] = {}
        for record in records:
            headers = dict(record.headers or ())
            raw_id = headers.get("ce_id")
            event_id = raw_id.decode("utf-8", "replace") if isinstance(raw_id, bytes) else None
            attributes = messaging_attributes("process", record.topic, event_id, record.key)
            attributes["messaging.destination.partition.id"] = str(record.partition)
            attributes["messaging.kafka.offset"] = record.offset
            attributes["messaging.consumer.group.name"] = group
            where = (record.topic, record.partition, record.offset)
            self._spans[where] = self.tracer.start_span(
                f"process {record.topic}",
                context=_W3C.extract(headers, getter=_HEADERS),
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            )
            if event_id is not None:
                self._ids[where] = event_id

    def span(self, record: Any) -> Span:
        return self._spans[(record.topic, record.partition, record.offset)]

    @contextmanager
    def storing(self, records: Sequence[Any]) -> Iterator[Span]:
        """The batch's write as one span, current while it runs (so the database client's
        span is its child): the child of the record's span when it is the only one, else a
        root linked to every record's span."""
        spans = [self.span(record) for record in records]
        parent = trace.set_span_in_context(spans[0]) if len(spans) == 1 else Context()
        with self.tracer.start_as_current_span(
            "store purchases",
            context=parent,
            links=[Link(span.get_span_context()) for span in spans],
            attributes={"purchase.batch.size": len(spans)},
        ) as span:
            yield span

    def stored(self, records: Sequence[Any], store: Span, duplicate_indexes: frozenset[int]) -> None:
        """End each record's span (``records`` in the write's order): stored, or a redelivered
        duplicate the unique eventId absorbed."""
        context = store.get_span_context()
        store_ids = {
            "purchase.store.trace_id": format(context.trace_id, "032x"),
            "purchase.store.span_id": format(context.span_id, "016x"),
        }
        for index, record in enumerate(records):
            span = self._spans.pop((record.topic, record.partition, record.offset))
            outcome = "duplicate" if index in duplicate_indexes else "stored"
            span.set_attributes({**store_ids, "purchase.outcome": outcome})
            span.end()

    def dead_letter_sending(self, record: Any, topic: str, reason: str) -> Span:
        """A poison record's dead letter: a PRODUCER span under the record's span, which gets the
        reason and where the record came from. ``dead_lettered`` ends both once the send is acked."""
        span = self.span(record)
        details = {
            "purchase.dead_letter.reason": reason,
            "purchase.dead_letter.source_topic": record.topic,
            "purchase.dead_letter.source_partition": record.partition,
            "purchase.dead_letter.source_offset": record.offset,
        }
        span.set_attributes({"purchase.outcome": "dead_lettered", **details})
        event_id = self._ids.get((record.topic, record.partition, record.offset))
        return self.tracer.start_span(
            f"send {topic}",
            context=trace.set_span_in_context(span),
            kind=SpanKind.PRODUCER,
            attributes={**messaging_attributes("send", topic, event_id, record.key), **details},
        )

    def dead_lettered(self, record: Any, send: Span, partition: int | None, offset: int | None) -> None:
        delivered(send, partition, offset)
        send.end()
        self._spans.pop((record.topic, record.partition, record.offset)).end()

    def abandoned(self, error: str) -> None:
        """End what is still open when the process gives up on the batch (it stays uncommitted)."""
        for span in self._spans.values():
            failed(span, error)
            span.end()
        self._spans.clear()
