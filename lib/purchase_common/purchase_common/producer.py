"""buy's Kafka producer: librdkafka (confluent-kafka) bridged to asyncio.

One producer per worker process, started as the worker is forked or on first use (never in the
pre-fork master: its threads would not survive the fork). ``send`` hands the record to librdkafka
and awaits the broker's acknowledgement (acks=all) as an asyncio future, so a request in flight
costs no thread. One daemon thread serves librdkafka's delivery reports and wakes the waiting
event loop.

Two lanes, each its own librdkafka client: a send that finds no other of this process in
flight takes the *lone* lane (linger 0: it goes out at once, the c=1 latency), one that finds
others in flight takes the *shared* lane (KAFKA_BATCH_LINGER_MS: it waits that long to share a
request with them). librdkafka wakes its broker thread for every record at linger 0 and that
was buy's limit under load, while any linger above 0 slows a lone purchase down (bench/README.md).
Concurrent purchases have no order to keep, and one sent after another's 202 is sent after it,
whichever lane each took. Why librdkafka and not kafka-python: its per-record work runs in C
outside the GIL, and a lone send-and-wait is several times faster (bench/README.md).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, NamedTuple

import confluent_kafka

from .config import Settings, librdkafka_options
from .logs import log

LONE, SHARED = "lone", "shared"
LANES = (LONE, SHARED)
POLL_INTERVAL_S = 0.1  # how soon the report thread notices a close; reports wake it at once


class KafkaUnavailable(RuntimeError):
    """The record was not acknowledged within the send budget; nothing was confirmed."""


class Delivery(NamedTuple):
    """Where the broker put the record, as librdkafka reports it."""

    partition: int | None
    offset: int | None


def _settle(
    future: asyncio.Future[Delivery],
    error: confluent_kafka.KafkaError | None,
    partition: int | None,
    offset: int | None,
) -> None:
    if future.done():  # the request gave up at its budget
        return
    if error is not None:
        future.set_exception(KafkaUnavailable(error.name()))
    else:
        future.set_result(Delivery(partition, offset))


def _expire(future: asyncio.Future[Delivery]) -> None:
    if not future.done():
        future.set_exception(KafkaUnavailable("no acknowledgement within the send budget"))


class _Client:
    """One librdkafka producer and the thread that serves its delivery reports."""

    def __init__(self, options: dict[str, Any]):
        self.kafka = confluent_kafka.Producer(options)
        self.open = True
        self.thread = threading.Thread(target=self._serve_reports, name="kafka-delivery-reports", daemon=True)
        self.thread.start()

    def _serve_reports(self) -> None:
        while self.open:
            try:
                self.kafka.poll(POLL_INTERVAL_S)
            except Exception:  # a callback's error must not end the thread every later send waits on
                logging.getLogger(__name__).exception("delivery report failed")

    def close(self, timeout_s: float) -> None:
        """Deliver what is queued within timeout_s, then stop the report thread."""
        self.kafka.flush(timeout_s)
        self.open = False
        self.thread.join(POLL_INTERVAL_S * 5)


class Producer:
    def __init__(self, settings: Settings, logger: logging.Logger):
        self.settings, self.logger = settings, logger
        self.budget_s = settings.kafka_send_timeout_s
        self._clients: dict[str, _Client] = {}
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._in_flight = 0  # this process's sends awaiting their ack (one event loop)

    async def send(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Delivery:
        """Send with acks=all and await the acknowledgement within the send budget; returns the
        record's partition and offset or raises KafkaUnavailable."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()

        def delivered(error: confluent_kafka.KafkaError | None, message: confluent_kafka.Message) -> None:
            # on the report thread
            if not loop.is_closed():  # else nobody waits for this answer any more
                loop.call_soon_threadsafe(_settle, future, error, message.partition(), message.offset())

        # One timer instead of asyncio.wait_for's task and waiter: the cheaper wait per request.
        expiry = loop.call_later(self.budget_s, _expire, future)
        lane = SHARED if self._in_flight else LONE
        self._in_flight += 1
        try:
            # A list is invariant: one of (str, bytes) is not the stub's list of (str, str | bytes | None).
            wire_headers: Any = headers
            self._ensure_client(lane).kafka.produce(topic, value, key, headers=wire_headers, on_delivery=delivered)
            delivery = await future
        except (BufferError, confluent_kafka.KafkaException, KafkaUnavailable) as exc:
            self._failed()
            raise KafkaUnavailable(str(exc) if isinstance(exc, KafkaUnavailable) else type(exc).__name__) from exc
        finally:
            self._in_flight -= 1
            expiry.cancel()
        self._failing_since = None
        return delivery

    def start(self) -> None:
        """Create both lanes now (they connect in the background) instead of on the first sends."""
        for lane in LANES:
            self._ensure_client(lane)

    def _ensure_client(self, lane: str) -> _Client:
        client = self._clients.get(lane)
        if client is None:
            with self._lock:
                if lane not in self._clients:
                    self._clients[lane] = _Client(self._options(lane))
                client = self._clients[lane]
        return client

    def _options(self, lane: str) -> dict[str, Any]:
        s = self.settings
        budget_ms = int(s.kafka_send_timeout_s * 1000)
        return {
            **librdkafka_options(s),
            "client.id": f"{s.kafka_client_id}-{lane}",
            "acks": "all",
            "enable.idempotence": s.kafka_enable_idempotence,  # why it is off: config.py
            "linger.ms": s.kafka_linger_ms if lane == LONE else s.kafka_batch_linger_ms,
            # Java's (and kafka-python's) key hashing: a userId lands on the same partition
            # whichever client wrote it, so each user's purchases stay in order.
            "partitioner": "murmur2_random",
            # A record not acknowledged within the budget fails locally too, so nothing the
            # client was told is unconfirmed goes out much later.
            "message.timeout.ms": budget_ms,
            "request.timeout.ms": budget_ms,
            # librdkafka refuses a setup timeout under a second (a budget below that failed every start).
            "socket.connection.setup.timeout.ms": max(budget_ms, 1000),
            "reconnect.backoff.max.ms": 1000,
            # A partition whose leader died is re-looked-up at 100 ms, then backing off up to this
            # (librdkafka's default: 1 s), and a refused produce (NOT_ENOUGH_REPLICAS) is retried as
            # often: the new leader is found within a quarter second of the controller electing
            # it, well inside the send budget, instead of up to a second later.
            "topic.metadata.refresh.fast.interval.ms": 100,
            "retry.backoff.ms": 100,
            "retry.backoff.max.ms": 250,
            # Nagle would hold a lone small produce request back: latency at c=1.
            "socket.nagle.disable": True,
            # librdkafka's own log lines go through buy's JSON logger (served by poll()).
            "logger": self.logger,
            "error_cb": self._client_error,
        }

    def _client_error(self, error: confluent_kafka.KafkaError) -> None:
        if error.code() == confluent_kafka.KafkaError._TRANSPORT:
            return  # librdkafka's own log line (through the logger above) already says which broker
        log(self.logger, logging.WARNING, "kafka client error", error=error.name(), detail=error.str())

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
            stale, self._clients, self._failing_since = self._clients, {}, None
        if stale:
            log(self.logger, logging.WARNING, "replacing a Kafka producer that kept failing")
        for client in stale.values():
            threading.Thread(target=client.close, args=(0,), daemon=True).start()

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close(timeout_s)
