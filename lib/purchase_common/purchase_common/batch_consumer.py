"""The Kafka side of the persist-purchase consumer: the process KEDA scales from zero.

``BatchConsumer`` owns the group membership, the outage and retry policy, the dead-letter
producer and the commit policy (offsets only after a batch is stored); the function's
own loop (functions/persist_purchase/persist.py) only says decode -> write -> commit.
Giving up on a dependency raises ``GaveUp``: the process exits non-zero with nothing
committed, so nothing is lost and the orchestrator decides what happens next.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Gauge
from pymongo.errors import PyMongoError

from . import config, probes
from .logs import log
from .retry import Backoff, Deadline

CONSUMED = Counter("purchases_consumed_total", "Kafka records read from the purchases topic")
DEAD_LETTERED = Counter("purchases_dead_lettered_total", "Poison records sent to the dead-letter topic")
LAG = Gauge("persist_consumer_lag", "Records behind the partition end, summed over assigned partitions")
COMMIT_TIMEOUT_MS = 15000
# The loop beats at least every poll (or backoff step); a minute of silence is a hang.
STALLED_AFTER_S = 60


class GaveUp(RuntimeError):
    """A dependency stayed away past its deadline."""


class Health:
    """What /healthz and /readyz report, updated by the consumer as it goes."""

    def __init__(self):
        self.last_beat = time.monotonic()
        self.kafka_ready = False
        self.db_ready = False

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.last_beat < STALLED_AFTER_S

    def ready(self) -> dict:
        return {"kafka": self.kafka_ready, "mongodb": self.db_ready}


class AssignmentLog(ConsumerRebalanceListener):
    """Each rebalance in the log: which partitions this member gave up and got. KEDA rebalances
    the group whenever it adds or removes a pod, and a start from zero waits for the first one."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def on_partitions_revoked(self, revoked) -> None:
        if revoked:
            log(self.logger, logging.INFO, "partitions revoked", partitions=sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned) -> None:
        log(self.logger, logging.INFO, "partitions assigned", partitions=sorted(tp.partition for tp in assigned))


def new_consumer(settings: config.Settings, logger: logging.Logger) -> KafkaConsumer:
    consumer = KafkaConsumer(
        **config.kafka_client_options(settings),
        group_id=settings.consumer_group,
        auto_offset_reset=config.AUTO_OFFSET_RESET,
        enable_auto_commit=False,
        max_poll_records=settings.consumer_batch_max,
        session_timeout_ms=settings.consumer_session_timeout_ms,
        heartbeat_interval_ms=settings.consumer_heartbeat_ms,
        # A batch may wait out a dead database this long without losing the partitions.
        max_poll_interval_ms=int(settings.write_retry_deadline_s * 1000) + 60000,
        bootstrap_timeout_ms=5000,
        reconnect_backoff_max_ms=2000,
        # What one fetch may bring: 256 KiB a partition, 1 MiB in all, i.e. ~850 and ~3,400
        # purchase records, still several CONSUMER_BATCH_MAX batches ahead. kafka-python's
        # defaults (1 MiB a partition, 50 MiB) buffer ~18,000 unpacked records from a backlog
        # on 6 partitions: peak RSS 76-82 -> 52-59 MiB, no slower (bench/README.md, issue 12).
        # A record batch larger than these still comes whole (the broker returns at least one).
        max_partition_fetch_bytes=256 * 1024,
        fetch_max_bytes=1024 * 1024,
    )
    consumer.subscribe([settings.purchases_topic], listener=AssignmentLog(logger))
    return consumer


def new_dead_letter_producer(settings: config.Settings) -> KafkaProducer:
    return KafkaProducer(**config.kafka_client_options(settings), acks="all", linger_ms=0,
                         max_block_ms=10000, request_timeout_ms=10000, delivery_timeout_ms=20000)


class BatchConsumer:
    def __init__(self, settings: config.Settings, stop: threading.Event, logger: logging.Logger):
        self.settings, self.stop, self.logger = settings, stop, logger
        self.health = Health()
        self.consumer: KafkaConsumer | None = None
        self._dlq: KafkaProducer | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._behind: tuple[Future, Callable[[list], object], list, list] | None = None

    @property
    def running(self) -> bool:
        return self.consumer is not None and not self.stop.is_set()

    def full(self, records: list) -> bool:
        """A whole CONSUMER_BATCH_MAX batch: the consumer is behind a backlog."""
        return len(records) >= self.settings.consumer_batch_max

    def connect(self, open_store: Callable[[], object]) -> None:
        """Join the group (retrying a broker that is not there yet), then open the store."""
        deadline, backoff = Deadline(self.settings.consumer_startup_deadline_s), Backoff()
        while self.consumer is None and not self.stop.is_set():
            try:
                self.consumer = new_consumer(self.settings, self.logger)
            except KafkaError as exc:
                if deadline.passed():
                    log(self.logger, logging.ERROR, "kafka unreachable at start-up; giving up", error=str(exc))
                    raise GaveUp("kafka unreachable at start-up") from exc
                log(self.logger, logging.WARNING, "kafka unreachable at start-up; retrying", error=str(exc))
                self.stop.wait(backoff.delay())
        if self.consumer is None:
            return
        self.health.kafka_ready = True
        try:
            open_store()
            self.health.db_ready = True
        except PyMongoError as exc:
            log(self.logger, logging.WARNING, "mongodb unreachable at start-up; will retry on write", error=str(exc))
        log(self.logger, logging.INFO, "consumer started", topic=self.settings.purchases_topic,
            group=self.settings.consumer_group)

    def poll(self) -> list:
        """The next batch in partition order ([] when stopping), riding out a broker outage."""
        backoff, down_since = Backoff(), None
        while not self.stop.is_set():
            self.health.beat()
            # With a batch being written behind, take only what is at hand: when nothing is,
            # that batch is committed as soon as it is stored, not after a poll's wait.
            timeout_ms = 0 if self._behind is not None else self.settings.consumer_poll_timeout_ms
            try:
                polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.settings.consumer_batch_max)
            except KafkaError as exc:
                self.health.kafka_ready = False
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > self.settings.kafka_outage_deadline_s:
                    log(self.logger, logging.ERROR, "kafka unreachable for too long; exiting", error=repr(exc))
                    raise GaveUp("kafka unreachable for too long") from exc
                delay = backoff.delay()
                log(self.logger, logging.WARNING, "kafka poll failed; backing off", error=repr(exc),
                    delay_s=round(delay, 2))
                self.stop.wait(delay)
                continue
            self.health.kafka_ready = True
            records = [record for tp in sorted(polled) for record in polled[tp]]
            CONSUMED.inc(len(records))
            return records
        return []

    def dead_letter(self, poison: list) -> None:
        """Send (record, reason) pairs to the dead-letter topic with their original bytes."""
        if not poison:
            return
        if self._dlq is None:
            self._dlq = new_dead_letter_producer(self.settings)
        futures = []
        for record, reason in poison:
            headers = list(record.headers or []) + [
                ("dlq_reason", reason.encode("utf-8")),
                ("dlq_source_topic", record.topic.encode()),
                ("dlq_source_partition", str(record.partition).encode()),
                ("dlq_source_offset", str(record.offset).encode()),
            ]
            futures.append(self._dlq.send(self.settings.dead_letter_topic, key=record.key, value=record.value,
                                          headers=headers))
            log(self.logger, logging.WARNING, "dead-lettered", reason=reason, partition=record.partition,
                offset=record.offset)
        # Raises after the producer's own bounded retries: the batch is then not committed,
        # the process exits non-zero and the records are redelivered to the next consumer.
        for future in futures:
            future.get(timeout=30)
        DEAD_LETTERED.inc(len(poison))

    def write(self, store: Callable[[list], object], events: list) -> None:
        """store(events), waiting out a dead database with the partitions paused (group
        membership kept); gives up at the deadline or on a stop, leaving the batch uncommitted."""
        deadline, backoff = Deadline(self.settings.write_retry_deadline_s), Backoff()
        paused = False
        try:
            while True:
                try:
                    store(events)
                    self.health.db_ready = True
                    return
                except PyMongoError as exc:
                    self.health.db_ready = False
                    if self.stop.is_set() or deadline.passed():
                        log(self.logger, logging.ERROR, "mongodb write abandoned; batch left uncommitted",
                            error=type(exc).__name__, events=len(events))
                        raise GaveUp("mongodb write abandoned") from exc
                    delay = backoff.delay()
                    log(self.logger, logging.WARNING, "mongodb write failed; backing off",
                        error=type(exc).__name__, delay_s=round(delay, 2))
                    if not paused:
                        self.consumer.pause(*self.consumer.assignment())
                        paused = True
                    self._wait_paused(delay)
        finally:
            if paused:
                self.consumer.resume(*self.consumer.paused())

    def write_behind(self, store: Callable[[list], object], events: list, records: list) -> None:
        """Start store(events) on the writer thread and return at once: the next poll and decode
        overlap the database's answer (pymongo waits for it outside the GIL). commit_written()
        waits for it and commits the batch; nothing else is written or committed before that."""
        if self._behind is not None:
            raise RuntimeError("the batch written behind was not committed yet")
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="mongodb-writer")
        self._behind = (self._writer.submit(store, events), store, events, records)

    def commit_written(self) -> None:
        """Wait for the batch written behind (if any), then commit it. A write that failed is
        retried here under write()'s policy first; giving up leaves it uncommitted."""
        if self._behind is None:
            return
        future, store, events, records = self._behind
        self._behind = None
        try:
            future.result()
            self.health.db_ready = True
        except PyMongoError:
            self.write(store, events)
        self.commit(records)

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

    def commit(self, records: list) -> None:
        """Commit past every record of the (stored) batch, then refresh the lag gauge."""
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
            log(self.logger, logging.WARNING, "commit failed; records will be redelivered", error=repr(exc))
        self._update_lag()

    def _update_lag(self) -> None:
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

    def close(self) -> None:
        if self._writer is not None:
            # A write still in flight (when giving up) finishes or fails within pymongo's own
            # timeouts; its batch stays uncommitted either way and is read again.
            self._writer.shutdown(wait=True)
            self._writer, self._behind = None, None
        if self.consumer is not None:
            # Offsets were committed per batch; closing sends LeaveGroup so partitions move at once.
            self.consumer.close(autocommit=False)
            self.consumer = None
        if self._dlq is not None:
            self._dlq.close(timeout=5)
            self._dlq = None
        log(self.logger, logging.INFO, "consumer stopped")


def run(consume: Callable[[BatchConsumer], None], open_store: Callable[[], object],
        settings: config.Settings, logger: logging.Logger) -> int:
    """The consumer process: probes on HOST:HEALTH_PORT at once (alive while it waits for
    the broker), SIGTERM/SIGINT finish the batch in hand, commit and leave the group.
    Returns the exit code."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    batches = BatchConsumer(settings, stop, logger)
    server = probes.serve(probes.app(batches.health.alive, batches.health.ready), settings.host,
                          settings.health_port)
    try:
        batches.connect(open_store)
        consume(batches)
        return 0
    except GaveUp:
        return 1
    finally:
        batches.close()
        server.shutdown()
