"""buy: POST /api/buy -> a purchase CloudEvent on Kafka, answered 202 once the broker acked it.

``Buy`` is the function as an object, built from Settings (its producer, its Idempotency-Key
store, its probes) and started once per worker process; ``buy`` below is the functions-framework
entry point that hands each request to it. An ASGI function (functions-framework serves it with
uvicorn workers): a request waiting for the broker's ack holds no thread, and the ASGI server
stack costs less CPU per request than the WSGI one."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import functions_framework.aio
from opentelemetry import trace
from prometheus_client import Counter, Histogram
from purchase_common import answers, auth, config, idempotency, probes, tracing
from purchase_common.config import Settings
from purchase_common.events import PurchaseRecord, event_id_for, purchase_record, validate_idempotency_key
from purchase_common.lifecycle import PerProcess
from purchase_common.logs import get_logger, log
from purchase_common.producer import Delivery, KafkaUnavailable, Producer
from purchase_common.schema import FIELDS, MAX_BODY_BYTES, ValidationError, parse_json_body, validate_purchase
from starlette.requests import Request
from starlette.responses import Response

answer = answers.ASGI
BUY_PATH = "/api/buy"
# Metric label values must stay a fixed set: an unknown field's name is client-chosen.
KNOWN_FIELDS = {*FIELDS, "body", "Idempotency-Key"}

ACCEPTED = Counter("purchases_accepted_total", "Purchases acknowledged by Kafka and answered 202")
REJECTED = Counter("purchases_rejected_total", "Purchase requests refused", ["reason"])
PRODUCE_LATENCY = Histogram(
    "purchase_produce_seconds",
    "Time from send to broker acknowledgement",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _too_large() -> ValidationError:
    return ValidationError("body", f"request body larger than {MAX_BODY_BYTES} bytes", status=413)


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _too_large()
    return bytes(body)


def _refused(reason: str, response: Response) -> Response:
    REJECTED.labels(reason=reason).inc()
    return response


class Buy:
    def __init__(
        self,
        settings: Settings,
        producer: Producer | None = None,
        fingerprints: idempotency.FingerprintStore | None = None,
    ):
        self.settings = settings
        self.logger = get_logger("buy", settings)
        self.producer = producer or Producer(settings, self.logger)
        self.fingerprints = fingerprints or idempotency.FingerprintStore(
            settings.idempotency_store_path or idempotency.default_path(settings.purchases_topic),
            settings.idempotency_window_s,
        )
        self.probes = probes.app(self.alive, self.ready)
        self.verifier: auth.TokenVerifier | None = None
        self.tracing = tracing.Tracing(settings, "buy")

    def start(self) -> None:
        """Connect now (in the background), not on the first purchase, so the broker connection
        overlaps the server's own start (cold start); the same for the issuer's keys."""
        answers.install_asgi_json_errors()
        self.verifier = auth.start_verifier(self.settings, self.logger)
        self.producer.start()

    def stop(self) -> None:
        self.producer.close()
        self.tracing.shutdown()

    def alive(self) -> bool:
        return True

    def ready(self) -> dict[str, bool]:
        # With Kafka down, buy still answers (503) at once, so Kafka is not a condition; the
        # issuer's keys are: a process without them can accept no purchase at all.
        return auth.readiness(self.verifier)

    async def handle(self, request: Request) -> Response:
        path = request.scope["path"]
        # Probes, metrics and untraced purchases make no span.
        context = self.tracing.request_context(request.headers) if path.rstrip("/") == BUY_PATH else None
        if context is None:
            return await self._answer(request)
        with self.tracing.server_span(request.method, BUY_PATH, path, context) as span:
            response = await self._answer(request)
            tracing.answered(span, response.status_code)
            # The caller's handle on this purchase's trace (`make trace`, a tracing UI).
            response.headers["traceparent"] = tracing.traceparent(span) or ""
        return response

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except Exception as exc:  # a JSON 500, never functions-framework's plain-text crash answer
            log(self.logger, logging.ERROR, "unhandled error", error=type(exc).__name__)
            return answer.error(500, "internal error")

    async def _route(self, request: Request) -> Response:
        path = request.scope["path"].rstrip("/") or "/"
        if path == BUY_PATH:
            if request.method != "POST":
                return _refused("method", answer.error(405, "method not allowed; use POST", headers={"Allow": "POST"}))
            return await self.accept_purchase(request)
        return answer.shared_route(request.method, path, self.probes) or _refused(
            "not_found", answer.error(404, "not found")
        )

    async def accept_purchase(self, request: Request) -> Response:
        principal = None
        if self.verifier is not None:
            # Who is calling comes first: an unauthenticated client learns nothing about bodies.
            try:
                principal = await self.verifier.verify_async(auth.bearer_token(request.headers.get("authorization")))
            except auth.InvalidToken as exc:
                return _refused("unauthenticated", answer.unauthorized(exc))
            except auth.KeysUnavailable as exc:
                log(self.logger, logging.WARNING, "issuer keys unavailable", error=str(exc))
                return _refused(
                    "auth_unavailable",
                    answer.unavailable("sign-in temporarily unavailable; retry later", self.settings),
                )
        if _media_type(request) != "application/json":
            return _refused("content_type", answer.error(415, "Content-Type must be application/json", "Content-Type"))
        try:
            purchase = validate_purchase(parse_json_body(await _read_body(request)))
            idempotency_key = validate_idempotency_key(request.headers.get("Idempotency-Key"))
        except ValidationError as exc:
            reason = f"invalid_{exc.field}" if exc.field in KNOWN_FIELDS else "invalid_unknown_field"
            return _refused(reason, answer.invalid(exc))
        if principal is not None and not auth.may_buy_for(principal, purchase.user_id):
            return _refused(
                "forbidden", answer.forbidden("a token may buy only for its own userId", auth.WRITE_ANY_SCOPE)
            )

        # The key store is a SQLite file shared with the other workers: its wait stays off the loop.
        if idempotency_key is not None and not await asyncio.to_thread(
            self.fingerprints.claim, event_id_for(purchase.user_id, idempotency_key), idempotency.fingerprint(purchase)
        ):
            return _refused(
                "idempotency_key_reused",
                answer.error(
                    422, "Idempotency-Key was already used for a different purchase; use a new key", "Idempotency-Key"
                ),
            )
        record = purchase_record(purchase, idempotency_key, buyer=principal.subject if principal else None)
        started = time.perf_counter()
        try:
            delivery = await self._send(record, purchase.user_id)
        except KafkaUnavailable as exc:
            log(self.logger, logging.WARNING, "kafka unavailable", eventId=record.event_id, error=str(exc))
            return _refused(
                "kafka_unavailable",
                answer.unavailable("purchase service temporarily unavailable; retry later", self.settings),
            )
        PRODUCE_LATENCY.observe(time.perf_counter() - started)
        ACCEPTED.inc()
        log(
            self.logger,
            logging.INFO,
            "purchase accepted",
            eventId=record.event_id,
            userId=purchase.user_id,
            partition=delivery.partition,
            offset=delivery.offset,
        )
        return answer.json({"message": "Purchase accepted", "id": record.event_id}, 202)

    async def _send(self, record: PurchaseRecord, user_id: str) -> Delivery:
        """Send and await the ack; when traced, as a PRODUCER span whose context the record
        carries (the CloudEvent's traceparent), so the consumer continues this trace."""
        topic = self.settings.purchases_topic
        server = trace.get_current_span()
        if not server.get_span_context().is_valid:  # this request is not traced
            return await self.producer.send(topic, record.key, record.value, record.headers)
        server.set_attributes({"purchase.event_id": record.event_id, "purchase.user_id": user_id})
        span = self.tracing.producer_span(topic, record.event_id, record.key)
        try:
            delivery = await self.producer.send(
                topic, record.key, record.value, record.headers + tracing.cloudevent_headers(span)
            )
            tracing.delivered(span, delivery.partition, delivery.offset)
            return delivery
        except KafkaUnavailable as exc:
            tracing.failed(span, exc)
            raise
        finally:
            span.end()


# Read at import, so a bad variable fails the server's start rather than every request.
SETTINGS = config.settings()
function = PerProcess(lambda: Buy(SETTINGS))
# Each worker builds and starts its Buy as it is forked, not on its first purchase:
# librdkafka's threads must start in the worker, never in the pre-fork master.
os.register_at_fork(after_in_child=function.get)


@functions_framework.aio.http
async def buy(request: Request) -> Response:
    return await function.get().handle(request)
