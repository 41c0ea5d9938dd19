"""Kafka consumer runner for persist_purchase: the process KEDA scales from zero.

Reads binary-mode CloudEvents from the purchases topic in batches, writes them with
main.persist_batch, and commits offsets only after the batch is durably stored. Records
that can never be purchases go to the dead-letter topic with the reason. SIGTERM
finishes the in-flight batch, commits and leaves the group.

Run: python consumer.py   (health, readiness and metrics on HOST:HEALTH_PORT)
"""
from __future__ import annotations

import json
import logging
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from pymongo.errors import PyMongoError

import main
from purchase_common import config
from purchase_common.events import PoisonRecord, from_kafka_record, purchase_from_event
from purchase_common.logs import log

logger = main.logger
CONSUMED = Counter("purchases_consumed_total", "Kafka records read from the purchases topic")
DEAD_LETTERED = Counter("purchases_dead_lettered_total", "Poison records sent to the dead-letter topic")
LAG = Gauge("persist_consumer_lag", "Records behind the partition end, summed over assigned partitions")

BATCH_MAX = config.env_int("CONSUMER_BATCH_MAX", 500)
POLL_TIMEOUT_MS = config.env_int("CONSUMER_POLL_TIMEOUT_MS", 500)
# A dead database is waited out with capped exponential backoff; after this long the process
# exits non-zero (nothing committed, nothing lost) so the orchestrator can decide.
WRITE_RETRY_DEADLINE_S = config.env_float("WRITE_RETRY_DEADLINE_S", 600.0)
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.2, 5.0
COMMIT_TIMEOUT_MS = 15000
KAFKA_OUTAGE_DEADLINE_S = config.env_float("KAFKA_OUTAGE_DEADLINE_S", 600.0)
STARTUP_DEADLINE_S = config.env_float("CONSUMER_STARTUP_DEADLINE_S", 120.0)


class Health:
    """What /healthz and /readyz report, updated by the consumer loop."""

    def __init__(self):
        self.last_beat = time.monotonic()
        self.kafka_ready = False
        self.db_ready = False

    def beat(self):
        self.last_beat = time.monotonic()

    def alive(self) -> bool:
        # The loop beats at least every poll (or backoff step); a minute of silence is a hang.
        return time.monotonic() - self.last_beat < 60

    def ready(self) -> bool:
        return self.kafka_ready and self.db_ready


def serve_health(health: Health, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server naming)
            if self.path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok = health.alive()
                self._json(200 if ok else 503, {"status": "ok" if ok else "stalled"})
            elif self.path == "/readyz":
                self._json(200 if health.ready() else 503,
                           {"kafka": health.kafka_ready, "mongodb": health.db_ready})
            else:
                self._json(404, {"error": "not found"})

        def _json(self, status, body):
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status, payload, content_type):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def new_consumer() -> KafkaConsumer:
    return KafkaConsumer(
        config.purchases_topic(),
        **config.kafka_client_options(),
        group_id=config.consumer_group(),
        auto_offset_reset=config.AUTO_OFFSET_RESET,
        enable_auto_commit=False,
        max_poll_records=BATCH_MAX,
        # A killed replica's partitions move to the survivors after this, not after 45 s.
        session_timeout_ms=config.env_int("CONSUMER_SESSION_TIMEOUT_MS", 10000),
        heartbeat_interval_ms=config.env_int("CONSUMER_HEARTBEAT_MS", 2000),
        max_poll_interval_ms=int(WRITE_RETRY_DEADLINE_S * 1000) + 60000,
        bootstrap_timeout_ms=5000,
        reconnect_backoff_max_ms=2000,
    )


def new_dead_letter_producer() -> KafkaProducer:
    return KafkaProducer(**config.kafka_client_options(), acks="all", linger_ms=0,
                         max_block_ms=10000, request_timeout_ms=10000, delivery_timeout_ms=20000)


class Runner:
    def __init__(self, stop: threading.Event, health: Health):
        self.stop = stop
        self.health = health
        self.consumer: KafkaConsumer | None = None
        self._dlq: KafkaProducer | None = None

    def connect(self) -> bool:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        delay = BACKOFF_BASE_S
        while not self.stop.is_set():
            try:
                self.consumer = new_consumer()
                self.health.kafka_ready = True
                break
            except KafkaError as exc:
                if time.monotonic() > deadline:
                    log(logger, logging.ERROR, "kafka unreachable at start-up; giving up", error=str(exc))
                    return False
                log(logger, logging.WARNING, "kafka unreachable at start-up; retrying", error=str(exc))
                self.stop.wait(delay)
                delay = min(delay * 2, BACKOFF_CAP_S)
        try:
            main.get_collection()
            self.health.db_ready = True
        except PyMongoError as exc:
            log(logger, logging.WARNING, "mongodb unreachable at start-up; will retry on write", error=str(exc))
        return self.consumer is not None

    def split(self, records):
        """Decode each record: (purchase events, [(record, reason)] for poison ones)."""
        events, poison = [], []
        for record in records:
            try:
                events.append(purchase_from_event(from_kafka_record(record.key, record.value, record.headers)))
            except PoisonRecord as exc:
                poison.append((record, str(exc)))
        return events, poison

    def dead_letter(self, poison) -> None:
        if not poison:
            return
        if self._dlq is None:
            self._dlq = new_dead_letter_producer()
        futures = []
        for record, reason in poison:
            headers = list(record.headers or []) + [
                ("dlq_reason", reason.encode("utf-8")),
                ("dlq_source_topic", record.topic.encode()),
                ("dlq_source_partition", str(record.partition).encode()),
                ("dlq_source_offset", str(record.offset).encode()),
            ]
            futures.append(self._dlq.send(config.dead_letter_topic(), key=record.key, value=record.value,
                                          headers=headers))
            log(logger, logging.WARNING, "dead-lettered", reason=reason, partition=record.partition,
                offset=record.offset)
        # Raises after the producer's own bounded retries: the batch is then not committed,
        # the process exits non-zero and the records are redelivered to the next consumer.
        for future in futures:
            future.get(timeout=30)
        DEAD_LETTERED.inc(len(poison))

    def write(self, events) -> bool:
        """Write with capped, jittered exponential backoff. False: gave up, do not commit."""
        deadline = time.monotonic() + WRITE_RETRY_DEADLINE_S
        delay = BACKOFF_BASE_S
        paused = False
        try:
            while True:
                try:
                    main.persist_batch(events)
                    self.health.db_ready = True
                    return True
                except PyMongoError as exc:
                    self.health.db_ready = False
                    if self.stop.is_set() or time.monotonic() > deadline:
                        log(logger, logging.ERROR, "mongodb write abandoned; batch left uncommitted",
                            error=type(exc).__name__, events=len(events))
                        return False
                    log(logger, logging.WARNING, "mongodb write failed; backing off",
                        error=type(exc).__name__, delay_s=round(delay, 2))
                    if not paused:
                        self.consumer.pause(*self.consumer.assignment())
                        paused = True
                    self._wait_paused(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, BACKOFF_CAP_S)
        finally:
            if paused:
                self.consumer.resume(*self.consumer.paused())

    def poll(self) -> dict | None:
        """Poll; ride out a broker outage with backoff. None: Kafka gone for too long."""
        delay, down_since = BACKOFF_BASE_S, None
        while not self.stop.is_set():
            try:
                polled = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=BATCH_MAX)
                self.health.kafka_ready = True
                return polled
            except KafkaError as exc:
                self.health.kafka_ready = False
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > KAFKA_OUTAGE_DEADLINE_S:
                    log(logger, logging.ERROR, "kafka unreachable for too long; exiting", error=repr(exc))
                    return None
                log(logger, logging.WARNING, "kafka poll failed; backing off", error=repr(exc),
                    delay_s=round(delay, 2))
                self.health.beat()
                self.stop.wait(random.uniform(delay / 2, delay))
                delay = min(delay * 2, BACKOFF_CAP_S)
        return {}

    def _wait_paused(self, seconds: float) -> None:
        """Keep the group membership alive while waiting; rewind anything a rebalance let through."""
        self.health.beat()
        try:
            stray = self.consumer.poll(timeout_ms=int(seconds * 1000))
        except KafkaError:
            self.stop.wait(seconds)
            return
        for tp, records in stray.items():
            self.consumer.seek(tp, min(r.offset for r in records))
            self.consumer.pause(tp)

    def commit(self, records) -> None:
        offsets = {}
        for record in records:
            tp = (record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, -1), record.offset)
        to_commit = {TopicPartition(t, p): OffsetAndMetadata(o + 1, "", -1) for (t, p), o in offsets.items()}
        try:
            self.consumer.commit(to_commit, timeout_ms=COMMIT_TIMEOUT_MS)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance or a broker outage: the records are re-read (by us or the new owner)
            # and the unique eventId index turns the re-write into a no-op; a later commit
            # of higher offsets covers these too.
            log(logger, logging.WARNING, "commit failed; records will be redelivered", error=repr(exc))

    def update_lag(self) -> None:
        """Lag from what the last fetch already told us: no extra broker round trip."""
        total = 0
        try:
            for tp in self.consumer.assignment():
                high = self.consumer.highwater(tp)
                if high is not None:
                    total += max(high - self.consumer.position(tp, timeout_ms=1000), 0)
        except KafkaError:
            return
        LAG.set(total)

    def run(self) -> int:
        if not self.connect():
            return 1
        log(logger, logging.INFO, "consumer started", topic=config.purchases_topic(), group=config.consumer_group())
        try:
            while not self.stop.is_set():
                self.health.beat()
                polled = self.poll()
                if polled is None:
                    return 1
                records = [record for tp in sorted(polled) for record in polled[tp]]
                if not records:
                    continue
                CONSUMED.inc(len(records))
                events, poison = self.split(records)
                self.dead_letter(poison)
                if not self.write(events):
                    return 1
                self.commit(records)
                self.update_lag()
            return 0
        finally:
            self.close()

    def close(self) -> None:
        if self.consumer is not None:
            # Offsets were committed per batch; closing sends LeaveGroup so partitions move at once.
            self.consumer.close(autocommit=False)
            self.consumer = None
        if self._dlq is not None:
            self._dlq.close(timeout=5)
            self._dlq = None
        log(logger, logging.INFO, "consumer stopped")


def main_entry() -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    health = Health()
    server = serve_health(health, config.bind_host(), config.env_int("HEALTH_PORT", 8081))
    try:
        return Runner(stop, health).run()
    finally:
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main_entry())
