"""Every setting of the purchase system, each with its default and its reason, in one place.

``settings()`` reads the environment once per process into one frozen ``Settings``; the
functions take what they need from it, nobody else reads os.environ. The defaults match
the local stack started by ``make run`` (devstack), which prefers these ports; Kubernetes
manifests set the same variables from a ConfigMap. README's configuration table is checked
against this file by tests/unit/test_config.py.
"""

from __future__ import annotations

import functools
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# The fixed names that the Kubernetes manifests (ScaledObject, topic Job) must agree with;
# tests/k8s compare the manifests against these constants.
PURCHASES_TOPIC = "purchases"
DEAD_LETTER_TOPIC = "purchases.dlq"
CONSUMER_GROUP = "persist-purchase"
# KEDA starts this consumer from zero replicas; with "latest" the records that woke it
# would be skipped, so a group without committed offsets starts at the beginning.
AUTO_OFFSET_RESET = "earliest"
TOPIC_PARTITIONS = 6
DATABASE_NAME = "purchases"
COLLECTION_NAME = "purchases"


def _env(name: str, default: Any, why: str, secret: bool = False) -> Any:
    return field(default=default, repr=not secret, metadata={"env": name, "why": why, "secret": secret})


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = _env(
        "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "comma-separated; the local stack's broker"
    )
    mongodb_uri: str = _env(
        "MONGODB_URI",
        "mongodb://127.0.0.1:27017/",
        "the local stack's FerretDB; on Kubernetes the app user's, never logged",
        secret=True,
    )
    purchases_topic: str = _env("PURCHASES_TOPIC", PURCHASES_TOPIC, "tests and benches isolate themselves by topic")
    dead_letter_topic: str = _env("DEAD_LETTER_TOPIC", DEAD_LETTER_TOPIC, "where poison records go, bytes intact")
    consumer_group: str = _env("CONSUMER_GROUP", CONSUMER_GROUP, "the group KEDA's ScaledObject watches")
    mongodb_database: str = _env("MONGODB_DATABASE", DATABASE_NAME, "tests and benches isolate themselves by database")
    mongodb_collection: str = _env("MONGODB_COLLECTION", COLLECTION_NAME, "one document per purchase event")
    mongodb_timeout_ms: int = _env("MONGODB_TIMEOUT_MS", 3000, "a dead database answers 503 within a request budget")
    host: str = _env("HOST", "127.0.0.1", "loopback by default; images set 0.0.0.0 so probes can reach them")
    port: int = _env("PORT", 8080, "read by functions-framework itself; Knative injects it")
    health_port: int = _env("HEALTH_PORT", 8081, "the consumer's /healthz, /readyz and /metrics")
    log_level: str = _env("LOG_LEVEL", "INFO", "JSON log lines carrying eventId from buy through persist")
    # buy
    kafka_send_timeout_s: float = _env(
        "KAFKA_SEND_TIMEOUT_S", 3.0, "whole-request budget for the broker's ack: a 503 comes well under 5 s"
    )
    retry_after_s: int = _env("RETRY_AFTER_S", 2, "what every 503 asks the client to wait")
    kafka_linger_ms: float = _env(
        "KAFKA_LINGER_MS",
        0.0,
        "a purchase with none other in flight goes out at once: a lone purchase would wait out any linger in full",
    )
    kafka_batch_linger_ms: float = _env(
        "KAFKA_BATCH_LINGER_MS",
        1.0,
        "a purchase that finds others in flight waits this long to share a request with them "
        "(more purchases per broker request under concurrency)",
    )
    kafka_enable_idempotence: bool = _env(
        "KAFKA_ENABLE_IDEMPOTENCE",
        False,
        "off: a record retried after a lost ack is absorbed by the unique eventId, and idempotence adds a "
        "producer-id round trip to every cold start",
    )
    kafka_producer_reset_after_s: float = _env(
        "KAFKA_PRODUCER_RESET_AFTER_S",
        15.0,
        "a producer failing every send this long is replaced: client states that never recover by themselves",
    )
    idempotency_window_s: float = _env(
        "IDEMPOTENCY_WINDOW_S", 86400.0, "how long a reused Idempotency-Key must carry the same purchase (else 422)"
    )
    idempotency_store_path: str = _env(
        "IDEMPOTENCY_STORE_PATH",
        "",
        "SQLite file the buy workers of one pod share for key fingerprints; unset: one per topic in the temp folder",
    )
    kafka_client_id: str = _env("KAFKA_CLIENT_ID", "purchase", "names the functions in broker logs")
    kafka_security_protocol: str = _env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", "SASL/TLS to a managed Kafka")
    kafka_sasl_mechanism: str = _env("KAFKA_SASL_MECHANISM", "PLAIN", "with a SASL protocol")
    kafka_sasl_username: str = _env("KAFKA_SASL_USERNAME", "", "with a SASL protocol")
    kafka_sasl_password: str = _env("KAFKA_SASL_PASSWORD", "", "with a SASL protocol; never logged", secret=True)
    kafka_ssl_cafile: str = _env("KAFKA_SSL_CAFILE", "", "with SSL or SASL_SSL and a private CA")
    # buy and history: who is calling (purchase_common/auth.py)
    auth_mode: str = _env(
        "AUTH_MODE",
        "off",
        "jwt: a bearer token from AUTH_ISSUER on every API request (every k8s overlay); "
        "off: the original open API, warned about at start",
    )
    auth_issuer: str = _env(
        "AUTH_ISSUER", "", "with jwt: the tokens' iss, exactly; its discovery document names the keys"
    )
    auth_audience: str = _env("AUTH_AUDIENCE", "purchase-api", "with jwt: the aud a token must carry for this API")
    auth_jwks_url: str = _env(
        "AUTH_JWKS_URL", "", "with jwt: the issuer's keys; unset: the jwks_uri of AUTH_ISSUER's discovery document"
    )
    auth_algorithms: str = _env("AUTH_ALGORITHMS", "RS256,ES256", "comma-separated; asymmetric ones only, never none")
    auth_leeway_s: float = _env("AUTH_LEEWAY_S", 30.0, "clock skew allowed on exp and nbf")
    auth_http_timeout_s: float = _env(
        "AUTH_HTTP_TIMEOUT_S", 2.0, "a JWKS fetch waits this long, then the request is a 503, never a hang"
    )
    auth_refresh_interval_s: float = _env(
        "AUTH_REFRESH_INTERVAL_S", 10.0, "the JWKS is fetched at most once per interval, whatever kids tokens name"
    )
    auth_max_token_chars: int = _env("AUTH_MAX_TOKEN_CHARS", 8192, "a longer bearer token is refused unparsed")
    # every function: traces (purchase_common/tracing.py), the OpenTelemetry SDK's own variable names
    otel_traces_exporter: str = _env(
        "OTEL_TRACES_EXPORTER",
        "",
        "zipkin_json, otlp_proto_http, console or none; unset: whichever endpoint below is set, else none "
        "(nothing is exported and no span is made)",
    )
    otel_exporter_zipkin_endpoint: str = _env(
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT", "", "a Zipkin server's /api/v2/spans (`make run` starts one)"
    )
    otel_exporter_otlp_endpoint: str = _env(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "", "an OpenTelemetry collector's OTLP/HTTP base URL (/v1/traces is added)"
    )
    otel_service_name: str = _env(
        "OTEL_SERVICE_NAME", "", "unset: the function's own name (buy, history, persist-purchase)"
    )
    otel_bsp_schedule_delay: int = _env(
        "OTEL_BSP_SCHEDULE_DELAY",
        1000,
        "ms between exports: a purchase's spans are in the backend a second after it, and a stopping "
        "process has at most this much unexported (the SDK's default is 5000)",
    )
    traces_per_second: float = _env(
        "TRACES_PER_SECOND",
        10.0,
        "new traces each process starts a second, at most: a request without a traceparent is traced while "
        "this allows, else makes no span (nor does its record downstream); a caller's traceparent is always "
        "continued; inf traces every request, 0 only callers' (bench/README.md, Traces: the cost per span)",
    )
    otel_bsp_max_queue_size: int = _env(
        "OTEL_BSP_MAX_QUEUE_SIZE",
        2048,
        "spans waiting for export; past it they are dropped and counted, so a slow collector never slows a purchase",
    )
    # persist-purchase consumer
    consumer_batch_max: int = _env("CONSUMER_BATCH_MAX", 500, "records per poll and per insert_many")
    consumer_poll_timeout_ms: int = _env("CONSUMER_POLL_TIMEOUT_MS", 500, "how long one poll waits for records")
    consumer_session_timeout_ms: int = _env(
        "CONSUMER_SESSION_TIMEOUT_MS", 10000, "a killed replica's partitions move on after this, not after 45 s"
    )
    consumer_heartbeat_ms: int = _env("CONSUMER_HEARTBEAT_MS", 2000, "well inside the session timeout")
    consumer_assignor: str = _env(
        "CONSUMER_ASSIGNOR",
        "range",
        "range (eager): kafka-python's cooperative-sticky (KIP-429) blocks every member's poll through both "
        "of its rounds and the second waits for a heartbeat, so each scale-up stalled longer (bench/README.md)",
    )
    consumer_startup_deadline_s: float = _env(
        "CONSUMER_STARTUP_DEADLINE_S", 120.0, "a broker missing this long at start is a failed start"
    )
    write_retry_deadline_s: float = _env(
        "WRITE_RETRY_DEADLINE_S",
        600.0,
        "a dead database is waited out this long, then exit non-zero, nothing committed, nothing lost",
    )
    kafka_outage_deadline_s: float = _env(
        "KAFKA_OUTAGE_DEADLINE_S", 600.0, "a broker gone this long mid-run: exit non-zero, let the orchestrator decide"
    )

    @property
    def bootstrap_servers(self) -> list[str]:
        return [part.strip() for part in self.kafka_bootstrap_servers.split(",") if part.strip()]


def _parse(name: str, raw: str, default: object) -> Any:
    kind: Any = type(default)
    if kind is bool:
        if raw.lower() not in ("true", "false"):
            raise ValueError(f"environment variable {name} must be true or false, got {raw!r}")
        return raw.lower() == "true"
    try:
        return kind(raw)
    except ValueError as exc:
        raise ValueError(
            f"environment variable {name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}"
        ) from exc


def load(environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings from an environment mapping; an unset or blank variable keeps its default."""
    values: dict[str, Any] = {}
    for setting in fields(Settings):
        name = setting.metadata["env"]
        raw = environ.get(name, "").strip()
        if raw:
            values[setting.name] = _parse(name, raw, setting.default)
    return Settings(**values)


@functools.cache
def settings() -> Settings:
    """This process's settings, read from the environment on first use."""
    return load()


def secret_values(s: Settings) -> tuple[str, ...]:
    """The secrets these settings hold (a URI's password, not the whole URI), for log redaction."""
    values = []
    for setting in fields(Settings):
        if setting.metadata.get("secret"):
            value = str(getattr(s, setting.name))
            if "://" in value:
                value = urllib.parse.urlsplit(value).password or ""
            if value:
                values.append(urllib.parse.unquote(value))
                values.append(value)
    return tuple(sorted(set(values), key=len, reverse=True))


def variables() -> dict[str, tuple[object, str]]:
    """Environment variable -> (default, why): what README's configuration table documents."""
    return {f.metadata["env"]: (f.default, f.metadata["why"]) for f in fields(Settings)}


def kafka_client_options(s: Settings) -> dict[str, Any]:
    """Connection options every Kafka client shares; SASL/TLS only when configured."""
    protocol = s.kafka_security_protocol.upper()
    options: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap_servers,
        "client_id": s.kafka_client_id,
        "security_protocol": protocol,
    }
    if protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=s.kafka_sasl_mechanism,
            sasl_plain_username=s.kafka_sasl_username,
            sasl_plain_password=s.kafka_sasl_password,
        )
    if protocol.endswith("SSL") and s.kafka_ssl_cafile:
        options["ssl_cafile"] = s.kafka_ssl_cafile
    return options


def librdkafka_options(s: Settings) -> dict[str, Any]:
    """The same connection options in librdkafka's names (buy's producer)."""
    options = kafka_client_options(s)
    named = {
        "bootstrap.servers": ",".join(options["bootstrap_servers"]),
        "client.id": options["client_id"],
        "security.protocol": options["security_protocol"],
    }
    if "sasl_mechanism" in options:
        named.update(
            {
                "sasl.mechanism": options["sasl_mechanism"],
                "sasl.username": options["sasl_plain_username"],
                "sasl.password": options["sasl_plain_password"],
            }
        )
    if "ssl_cafile" in options:
        named["ssl.ca.location"] = options["ssl_cafile"]
    return named
