"""The process's one Kafka producer for buy: created on first use, shared by every request
thread, bounded by the send budget, and replaced when it keeps failing."""
from __future__ import annotations

import logging
import threading
import time

from kafka import KafkaProducer
from kafka.errors import KafkaError

from .config import Settings, kafka_client_options
from .logs import log

# After a failed connect, refuse at once for this long instead of piling up waiters.
CONNECT_RETRY_INTERVAL_S = 1.0


class KafkaUnavailable(RuntimeError):
    """The record was not acknowledged within the send budget; nothing was confirmed."""


class Producer:
    def __init__(self, settings: Settings, logger: logging.Logger):
        self.settings, self.logger = settings, logger
        self.budget_s = settings.kafka_send_timeout_s
        self._client: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._last_connect_failure = 0.0
        self._failing_since: float | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    def send(self, topic: str, key: bytes, value: bytes, headers: list):
        """Send with acks=all and wait for the acknowledgement, all within one budget;
        returns the record's metadata or raises KafkaUnavailable."""
        started = time.perf_counter()
        client = self._connect()
        try:
            future = client.send(topic, key=key, value=value, headers=headers)
            metadata = future.get(timeout=max(0.1, self.budget_s - (time.perf_counter() - started)))
        except KafkaError as exc:
            self._failed()
            raise KafkaUnavailable(type(exc).__name__) from exc
        self._failing_since = None
        return metadata

    def _connect(self) -> KafkaProducer:
        if self._client is not None:
            return self._client
        if time.monotonic() - self._last_connect_failure < CONNECT_RETRY_INTERVAL_S:
            raise KafkaUnavailable("Kafka connection failed moments ago")
        if not self._lock.acquire(timeout=self.budget_s):
            raise KafkaUnavailable("timed out waiting for the Kafka connection")
        try:
            if self._client is None:
                try:
                    self._client = self._new_client()
                except KafkaError as exc:
                    self._last_connect_failure = time.monotonic()
                    raise KafkaUnavailable(str(exc)) from exc
            return self._client
        finally:
            self._lock.release()

    def _new_client(self) -> KafkaProducer:
        s = self.settings
        timeout_ms = int(s.kafka_send_timeout_s * 1000)
        return KafkaProducer(
            **kafka_client_options(s),
            acks="all",
            enable_idempotence=s.kafka_enable_idempotence,  # why it is off: config.py
            linger_ms=s.kafka_linger_ms,
            max_block_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
            delivery_timeout_ms=timeout_ms + s.kafka_linger_ms,
            bootstrap_timeout_ms=timeout_ms,
            reconnect_backoff_max_ms=1000,
            # kafka-python's own client metrics (Sensor.record on every record and request) are
            # read by nothing, buy exports its own: off, 4-8 % less CPU per record (bench/README.md).
            metrics_enabled=False,
        )

    def _failed(self) -> None:
        """A last resort against client states that never recover by themselves: a producer
        that failed every send for kafka_producer_reset_after_s is replaced."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            return
        if now - self._failing_since <= self.settings.kafka_producer_reset_after_s:
            return
        with self._lock:
            stale, self._client, self._failing_since = self._client, None, None
        if stale is not None:
            log(self.logger, logging.WARNING, "replacing a Kafka producer that kept failing")
            threading.Thread(target=stale.close, kwargs={"timeout": 0}, daemon=True).start()
