"""buy: POST /api/buy -> a purchase CloudEvent on Kafka, answered 202 once the broker acked it."""
from __future__ import annotations

import logging
import time

import functions_framework
from prometheus_client import Counter, Histogram

from purchase_common import answers, config, idempotency, probes
from purchase_common.events import build_event, event_id_for, to_kafka_record, validate_idempotency_key
from purchase_common.logs import get_logger, log
from purchase_common.producer import KafkaUnavailable, Producer
from purchase_common.schema import FIELDS, MAX_BODY_BYTES, ValidationError, parse_json_body, validate_purchase

settings = config.settings()
logger = get_logger("buy")
producer = Producer(settings, logger)
fingerprints = idempotency.FingerprintStore(
    settings.idempotency_store_path or idempotency.default_path(settings.purchases_topic),
    settings.idempotency_window_s)
answers.install_json_errors(functions_framework.errorhandler, logger)
# Serving is all readiness means here: with Kafka down, buy still answers (503) at once.
PROBES = probes.app()
# Metric label values must stay a fixed set: an unknown field's name is client-chosen.
KNOWN_FIELDS = {*FIELDS, "body", "Idempotency-Key"}

ACCEPTED = Counter("purchases_accepted_total", "Purchases acknowledged by Kafka and answered 202")
REJECTED = Counter("purchases_rejected_total", "Purchase requests refused", ["reason"])
PRODUCE_LATENCY = Histogram(
    "purchase_produce_seconds", "Time from send to broker acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def _read_body(request) -> bytes:
    too_large = ValidationError("body", f"request body larger than {MAX_BODY_BYTES} bytes", status=413)
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    raw = request.stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise too_large
    return raw


def _refused(reason: str, response):
    REJECTED.labels(reason=reason).inc()
    return response


def accept_purchase(request):
    if request.mimetype != "application/json":
        return _refused("content_type", answers.error(415, "Content-Type must be application/json", "Content-Type"))
    try:
        purchase = validate_purchase(parse_json_body(_read_body(request)))
        idempotency_key = validate_idempotency_key(request.headers.get("Idempotency-Key"))
    except ValidationError as exc:
        reason = f"invalid_{exc.field}" if exc.field in KNOWN_FIELDS else "invalid_unknown_field"
        return _refused(reason, answers.invalid(exc))

    if idempotency_key is not None and not fingerprints.claim(event_id_for(purchase.user_id, idempotency_key),
                                                              idempotency.fingerprint(purchase)):
        return _refused("idempotency_key_reused", answers.error(
            422, "Idempotency-Key was already used for a different purchase; use a new key", "Idempotency-Key"))
    event = build_event(purchase, idempotency_key)
    started = time.perf_counter()
    try:
        metadata = producer.send(settings.purchases_topic, *to_kafka_record(event))
    except KafkaUnavailable as exc:
        log(logger, logging.WARNING, "kafka unavailable", eventId=event["id"], error=str(exc))
        return _refused("kafka_unavailable",
                        answers.unavailable("purchase service temporarily unavailable; retry later", settings))
    PRODUCE_LATENCY.observe(time.perf_counter() - started)
    ACCEPTED.inc()
    log(logger, logging.INFO, "purchase accepted", eventId=event["id"], userId=purchase.user_id,
        partition=metadata.partition, offset=metadata.offset)
    return answers.json_answer({"message": "Purchase accepted", "id": event["id"]}, 202)


@functions_framework.http
def buy(request):
    path = request.path.rstrip("/") or "/"
    if path == "/api/buy":
        if request.method != "POST":
            return _refused("method", answers.error(405, "method not allowed; use POST", headers={"Allow": "POST"}))
        return accept_purchase(request)
    return answers.shared_route(request, path, PROBES) or _refused("not_found", answers.error(404, "not found"))
