"""buy: POST /api/buy -> a purchase CloudEvent on Kafka, answered 202 once the broker acked it."""
from __future__ import annotations

import logging
import threading
import time

import functions_framework
from flask import Response, jsonify
from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from purchase_common import config
from purchase_common.events import build_event, to_kafka_record, validate_idempotency_key
from purchase_common.logs import get_logger, log
from purchase_common.schema import FIELDS, MAX_BODY_BYTES, ValidationError, parse_json_body, validate_purchase

# Whole-request budget for an unreachable or slow broker: the answer is 503 well under 5 s.
SEND_TIMEOUT_S = config.env_float("KAFKA_SEND_TIMEOUT_S", 3.0)
RETRY_AFTER_S = config.env_int("RETRY_AFTER_S", 2)
# After a failed connect, answer 503 at once for this long instead of piling up waiters.
CONNECT_RETRY_INTERVAL_S = 1.0
KNOWN_FIELDS = {*FIELDS, "body", "Idempotency-Key"}
TOPIC = config.purchases_topic()

logger = get_logger("buy")
ACCEPTED = Counter("purchases_accepted_total", "Purchases acknowledged by Kafka and answered 202")
REJECTED = Counter("purchases_rejected_total", "Purchase requests refused", ["reason"])
PRODUCE_LATENCY = Histogram(
    "purchase_produce_seconds", "Time from send to broker acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

# A producer that has failed every send for this long is replaced: a last resort against
# client states that never recover by themselves.
PRODUCER_RESET_AFTER_S = config.env_float("KAFKA_PRODUCER_RESET_AFTER_S", 15.0)

_producer: KafkaProducer | None = None
_producer_lock = threading.Lock()
_last_connect_failure = 0.0
_failing_since: float | None = None


class KafkaUnavailable(RuntimeError):
    pass


def _new_producer() -> KafkaProducer:
    timeout_ms = int(SEND_TIMEOUT_S * 1000)
    return KafkaProducer(
        **config.kafka_client_options(),
        acks="all",
        # Off on purpose: kafka-python 3.0's idempotent producer stays wedged after a broker
        # restart that expired in-flight batches (seen in tests/faults). Retried duplicates
        # are harmless: the event id is fixed before sending and is unique in MongoDB.
        enable_idempotence=config.env_str("KAFKA_ENABLE_IDEMPOTENCE", "false") == "true",
        linger_ms=config.env_int("KAFKA_LINGER_MS", 2),
        max_block_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
        delivery_timeout_ms=timeout_ms + config.env_int("KAFKA_LINGER_MS", 2),
        bootstrap_timeout_ms=timeout_ms,
        reconnect_backoff_max_ms=1000,
    )


def get_producer() -> KafkaProducer:
    """One producer per process, created on first use and reused by every request thread."""
    global _producer, _last_connect_failure
    if _producer is not None:
        return _producer
    if time.monotonic() - _last_connect_failure < CONNECT_RETRY_INTERVAL_S:
        raise KafkaUnavailable("Kafka connection failed moments ago")
    if not _producer_lock.acquire(timeout=SEND_TIMEOUT_S):
        raise KafkaUnavailable("timed out waiting for the Kafka connection")
    try:
        if _producer is None:
            try:
                _producer = _new_producer()
            except KafkaError as exc:
                _last_connect_failure = time.monotonic()
                raise KafkaUnavailable(str(exc)) from exc
        return _producer
    finally:
        _producer_lock.release()


def _record_send_outcome(ok: bool) -> None:
    global _producer, _failing_since
    if ok:
        _failing_since = None
        return
    now = time.monotonic()
    if _failing_since is None:
        _failing_since = now
    elif now - _failing_since > PRODUCER_RESET_AFTER_S:
        with _producer_lock:
            stale, _producer, _failing_since = _producer, None, None
        if stale is not None:
            log(logger, logging.WARNING, "replacing a Kafka producer that kept failing")
            threading.Thread(target=stale.close, kwargs={"timeout": 0}, daemon=True).start()


def _error(status: int, field: str | None, message: str, reason: str, headers: dict | None = None) -> Response:
    REJECTED.labels(reason=reason).inc()
    body = {"error": message}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _read_body(request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ValidationError("body", f"request body larger than {MAX_BODY_BYTES} bytes", status=413)
    raw = request.stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise ValidationError("body", f"request body larger than {MAX_BODY_BYTES} bytes", status=413)
    return raw


def _accept_purchase(request) -> Response:
    if request.mimetype != "application/json":
        return _error(415, "Content-Type", "Content-Type must be application/json", "content_type")
    try:
        purchase = validate_purchase(parse_json_body(_read_body(request)))
        idempotency_key = validate_idempotency_key(request.headers.get("Idempotency-Key"))
    except ValidationError as exc:
        # Label values must stay a fixed set: an unknown field's name is client-chosen.
        reason = f"invalid_{exc.field}" if exc.field in KNOWN_FIELDS else "invalid_unknown_field"
        return _error(exc.status, exc.field, exc.message, reason)

    event = build_event(purchase, idempotency_key)
    key, value, headers = to_kafka_record(event)
    started = time.perf_counter()
    try:
        future = get_producer().send(TOPIC, key=key, value=value, headers=headers)
        # One budget for connecting and acknowledgement together, so a 503 never takes longer.
        metadata = future.get(timeout=max(0.1, SEND_TIMEOUT_S - (time.perf_counter() - started)))
    except (KafkaUnavailable, KafkaError) as exc:
        if not isinstance(exc, KafkaUnavailable):
            _record_send_outcome(False)
        log(logger, logging.WARNING, "kafka unavailable", eventId=event["id"], error=type(exc).__name__)
        return _error(503, None, "purchase service temporarily unavailable; retry later", "kafka_unavailable",
                      {"Retry-After": str(RETRY_AFTER_S)})
    _record_send_outcome(True)
    PRODUCE_LATENCY.observe(time.perf_counter() - started)
    ACCEPTED.inc()
    log(logger, logging.INFO, "purchase accepted", eventId=event["id"], userId=purchase.user_id,
        partition=metadata.partition, offset=metadata.offset)
    response = jsonify({"message": "Purchase accepted", "id": event["id"]})
    response.status_code = 202
    return response


@functions_framework.http
def buy(request):
    path = request.path.rstrip("/") or "/"
    if path == "/api/buy":
        if request.method != "POST":
            return _error(405, None, "method not allowed; use POST", "method", {"Allow": "POST"})
        return _accept_purchase(request)
    if path in ("/healthz", "/readyz"):
        # Serving is all readiness means here: with Kafka down, buy still answers (503).
        return jsonify({"status": "ok", "kafka": "connected" if _producer is not None else "not connected"})
    if path == "/metrics":
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
    return _error(404, None, "not found", "not_found")
