"""The persist-purchase consumer: the process KEDA scales from zero, and its loop.

``BatchConsumer.consume`` is the loop, its steps numbered in one place; the function hands it
only its ``decode`` (one record -> one event, or PoisonRecord) and its ``write`` (events ->
MongoDB). Around them this module owns the group membership, the outage and retry policy, the
dead-letter producer and the commit policy (offsets only after a batch is stored). Giving up on
a dependency raises ``GaveUp``: the process exits non-zero with nothing committed, so nothing
is lost and the orchestrator decides what happens next.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, Protocol, TypeVar

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Gauge
from pymongo.errors import PyMongoError

from . import config, probes
from .events import PoisonRecord
from .logs import log
from .retry import Backoff, Deadline
from .storage import WriteResult
from .tracing import ConsumedBatch, Tracing

CONSUMED = Counter("purchases_consumed_total", "Kafka records read from the purchases topic")
DEAD_LETTERED = Counter("purchases_dead_lettered_total", "Poison records sent to the dead-letter topic")
LAG = Gauge("persist_consumer_lag", "Records behind the partition end, summed over assigned partitions")
COMMIT_TIMEOUT_MS = 15000
# The loop beats at least every poll (or backoff step); a minute of silence is a hang.
STALLED_AFTER_S = 60

E = TypeVar("E")
ConsumerRecord = Any  # kafka-python's ConsumerRecord: topic, partition, offset, key, value, headers


class GaveUp(RuntimeError):
    """A dependency stayed away past its deadline."""


class Stopped(Exception):
    """SIGTERM or SIGINT arrived: the loop finishes what it holds and returns."""


class Function(Protocol[E]):
    """What the loop needs of the function it runs (persist_purchase's ``PersistPurchase``)."""

    tracing: Tracing

    def start(self) -> None:
        """Open what ``write`` needs; a store that is down must not raise (``write`` retries)."""

    def stop(self) -> None: ...

    def ready(self) -> dict[str, bool]:
        """The function's own dependencies, each ready or not (``{"mongodb": True}``)."""

    def decode(self, record: ConsumerRecord) -> E:
        """One record as one event; PoisonRecord when it can never be one."""

    def write(self, events: list[E]) -> WriteResult:
        """Store the events (a redelivered one is a no-op); PyMongoError when the store is down."""


class AssignmentLog(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python has no type hints
    """Each rebalance in the log: which partitions this member gave up and got. KEDA rebalances
    the group whenever it adds or removes a pod, and a start from zero waits for the first one."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            log(self.logger, logging.INFO, "partitions revoked", partitions=sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log(self.logger, logging.INFO, "partitions assigned", partitions=sorted(tp.partition for tp in assigned))


# The group's assignors by CONSUMER_ASSIGNOR. Not static membership (group_instance_id, KIP-345):
# a static member sends no LeaveGroup, so each pod KEDA removes would hold its partitions
# unconsumed for a whole session timeout.
ASSIGNORS = {"cooperative-sticky": (CooperativeStickyAssignor,), "range": (RangePartitionAssignor,)}


def new_consumer(settings: config.Settings, logger: logging.Logger) -> KafkaConsumer:
    try:
        assignors = ASSIGNORS[settings.consumer_assignor]
    except KeyError:
        raise ValueError(f"CONSUMER_ASSIGNOR must be one of {sorted(ASSIGNORS)}") from None
    consumer = KafkaConsumer(
        **config.kafka_client_options(settings),
        group_id=settings.consumer_group,
        partition_assignment_strategy=assignors,
        auto_offset_reset=config.AUTO_OFFSET_RESET,
        enable_auto_commit=False,
        max_poll_records=settings.consumer_batch_max,
        session_timeout_ms=settings.consumer_session_timeout_ms,
        heartbeat_interval_ms=settings.consumer_heartbeat_ms,
        # A batch may wait out a dead database this long without losing the partitions.
        max_poll_interval_ms=int(settings.write_retry_deadline_s * 1000) + 60000,
        bootstrap_timeout_ms=5000,
        reconnect_backoff_max_ms=2000,
        # What one fetch may bring: still several CONSUMER_BATCH_MAX batches of purchase
        # records ahead, where kafka-python's defaults (1 MiB a partition, 50 MiB) buffer tens
        # of thousands of unpacked records from a backlog: a larger peak RSS, no faster
        # (bench/README.md).
        # A record batch larger than these still comes whole (the broker returns at least one).
        max_partition_fetch_bytes=256 * 1024,
        fetch_max_bytes=1024 * 1024,
    )
    consumer.subscribe([settings.purchases_topic], listener=AssignmentLog(logger))
    return consumer


def new_dead_letter_producer(settings: config.Settings) -> KafkaProducer:
    return KafkaProducer(
        **config.kafka_client_options(settings),
        acks="all",
        linger_ms=0,
        max_block_ms=10000,
        request_timeout_ms=10000,
        delivery_timeout_ms=20000,
    )


class BatchConsumer(Generic[E]):
    """One consumer process: its group membership, its loop (``consume``) and its health.
    ``kafka`` and ``dead_letters`` are made on first need unless given (tests give fakes)."""

    def __init__(
        self,
        function: Function[E],
        settings: config.Settings,
        stop: threading.Event,
        logger: logging.Logger,
        kafka: KafkaConsumer | None = None,
        dead_letters: KafkaProducer | None = None,
    ):
        self.function, self.settings, self.stop, self.logger = function, settings, stop, logger
        self.kafka = kafka
        self.kafka_ready = kafka is not None
        self.last_beat = time.monotonic()
        self._dlq = dead_letters
        self._writer: ThreadPoolExecutor | None = None
        # The batch being written behind: its write, events, records, spans and the records it stores.
        self._behind: (
            tuple[Future[None], list[E], list[ConsumerRecord], ConsumedBatch | None, list[ConsumerRecord]] | None
        ) = None

    def alive(self) -> bool:
        return time.monotonic() - self.last_beat < STALLED_AFTER_S

    def ready(self) -> dict[str, bool]:
        return {"kafka": self.kafka_ready, **self.function.ready()}

    def _beat(self) -> None:
        self.last_beat = time.monotonic()

    def connect(self) -> None:
        """Join the group (retrying a broker that is not there yet), then start the function."""
        deadline, backoff = Deadline(self.settings.consumer_startup_deadline_s), Backoff()
        while self.kafka is None:
            if self.stop.is_set():
                raise Stopped
            try:
                self.kafka = new_consumer(self.settings, self.logger)
            except KafkaError as exc:
                if deadline.passed():
                    log(self.logger, logging.ERROR, "kafka unreachable at start-up; giving up", error=str(exc))
                    raise GaveUp("kafka unreachable at start-up") from exc
                log(self.logger, logging.WARNING, "kafka unreachable at start-up; retrying", error=str(exc))
                self.stop.wait(backoff.delay())
        self.kafka_ready = True
        self.function.start()
        log(
            self.logger,
            logging.INFO,
            "consumer started",
            topic=self.settings.purchases_topic,
            group=self.settings.consumer_group,
        )

    def consume(self) -> None:
        """The loop, until told to stop. Its steps, in this order, are the invariant:

        1. poll the next batch, in partition order, riding out a broker outage;
        2. decode each record into an event, or into poison with its reason;
        3. dead-letter the poison with its original bytes (a send that fails ends the process
           before anything of the batch is committed);
        4. write: first the batch written behind on the last turn, if any, is waited for and
           committed; then this batch is written, on the writer thread when it is a whole
           CONSUMER_BATCH_MAX batch (behind a backlog: its write overlaps the next poll and
           decode, and it is committed at the next turn's step 4), otherwise here, waiting out a
           dead database;
        5. commit the batch written here, at once, so a quiet topic's commit never waits for a poll.

        So every batch is stored before it is committed, and committed before the next one is
        written. A stop ends the loop at step 1, after the batch written behind is committed."""
        try:
            while True:
                records = self._poll()  # 1
                batch = self._traced(records)
                events, stored, poison = self._decode(records)  # 2
                self._dead_letter(poison, batch)  # 3
                self._commit_written()  # 4
                if not records:
                    continue
                if len(records) >= self.settings.consumer_batch_max:
                    self._write_behind(events, stored, records, batch)  # 4, committed at the next turn's 4
                    continue
                self._write(events, stored, batch)  # 4
                self._commit(records)  # 5
        except Stopped:
            self._commit_written()

    def _poll(self) -> list[ConsumerRecord]:
        """The next batch in partition order, riding out a broker outage; Stopped on a stop."""
        backoff, down_since = Backoff(), None
        while True:
            if self.stop.is_set():
                raise Stopped
            self._beat()
            # With a batch being written behind, take only what is at hand: when nothing is,
            # that batch is committed as soon as it is stored, not after a poll's wait.
            timeout_ms = 0 if self._behind is not None else self.settings.consumer_poll_timeout_ms
            try:
                polled = self._kafka.poll(timeout_ms=timeout_ms, max_records=self.settings.consumer_batch_max)
            except KafkaError as exc:
                self.kafka_ready = False
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > self.settings.kafka_outage_deadline_s:
                    log(self.logger, logging.ERROR, "kafka unreachable for too long; exiting", error=repr(exc))
                    raise GaveUp("kafka unreachable for too long") from exc
                delay = backoff.delay()
                log(
                    self.logger,
                    logging.WARNING,
                    "kafka poll failed; backing off",
                    error=repr(exc),
                    delay_s=round(delay, 2),
                )
                self.stop.wait(delay)
                continue
            self.kafka_ready = True
            records = [record for tp in sorted(polled) for record in polled[tp]]
            CONSUMED.inc(len(records))
            return records

    def _traced(self, records: list[ConsumerRecord]) -> ConsumedBatch | None:
        """The batch's spans (one per record that carries a trace), when traces are exported."""
        if not records or not self.function.tracing.enabled:
            return None
        batch = ConsumedBatch(self.function.tracing, records, self.settings.consumer_group)
        return batch if batch.traces_any(records) else None

    def _decode(
        self, records: list[ConsumerRecord]
    ) -> tuple[list[E], list[ConsumerRecord], list[tuple[ConsumerRecord, str]]]:
        """Events, the records they came from, and the poison with its reason."""
        events, stored, poison = [], [], []
        for record in records:
            try:
                events.append(self.function.decode(record))
                stored.append(record)
            except PoisonRecord as exc:
                poison.append((record, str(exc)))
        return events, stored, poison

    def _dead_letter(self, poison: list[tuple[ConsumerRecord, str]], batch: ConsumedBatch | None) -> None:
        """Send (record, reason) pairs to the dead-letter topic with their original bytes."""
        if not poison:
            return
        if self._dlq is None:
            self._dlq = new_dead_letter_producer(self.settings)
        futures, sends = [], []
        for record, reason in poison:
            headers = list(record.headers or []) + [
                ("dlq_reason", reason.encode("utf-8")),
                ("dlq_source_topic", record.topic.encode()),
                ("dlq_source_partition", str(record.partition).encode()),
                ("dlq_source_offset", str(record.offset).encode()),
            ]
            if batch is not None:
                sends.append(batch.dead_letter_sending(record, self.settings.dead_letter_topic, reason))
            futures.append(
                self._dlq.send(self.settings.dead_letter_topic, key=record.key, value=record.value, headers=headers)
            )
            log(
                self.logger,
                logging.WARNING,
                "dead-lettered",
                reason=reason,
                partition=record.partition,
                offset=record.offset,
            )
        # Raises after the producer's own bounded retries: the batch is then not committed,
        # the process exits non-zero and the records are redelivered to the next consumer.
        for i, future in enumerate(futures):
            metadata = future.get(timeout=30)
            if batch is not None:
                batch.dead_lettered(poison[i][0], sends[i], metadata.partition, metadata.offset)
        DEAD_LETTERED.inc(len(poison))

    def _store(self, events: list[E], records: list[ConsumerRecord], batch: ConsumedBatch | None) -> None:
        """One write of the events, as the batch's store span when any of them is traced."""
        if batch is None or not batch.traces_any(records):
            self.function.write(events)
            return
        with batch.storing(records) as span:
            result = self.function.write(events)
            span.set_attributes(
                {"purchase.batch.inserted": result.inserted, "purchase.batch.duplicates": result.duplicates}
            )
        batch.stored(records, span, result.duplicate_indexes)

    def _write(self, events: list[E], records: list[ConsumerRecord], batch: ConsumedBatch | None) -> None:
        """Write the events, waiting out a dead database with the partitions paused (group
        membership kept); gives up at the deadline or on a stop, leaving the batch uncommitted."""
        deadline, backoff = Deadline(self.settings.write_retry_deadline_s), Backoff()
        paused = False
        try:
            while True:
                try:
                    self._store(events, records, batch)
                    return
                except PyMongoError as exc:
                    if self.stop.is_set() or deadline.passed():
                        if batch is not None:
                            batch.abandoned(type(exc).__name__)
                        log(
                            self.logger,
                            logging.ERROR,
                            "mongodb write abandoned; batch left uncommitted",
                            error=type(exc).__name__,
                            events=len(events),
                        )
                        raise GaveUp("mongodb write abandoned") from exc
                    delay = backoff.delay()
                    log(
                        self.logger,
                        logging.WARNING,
                        "mongodb write failed; backing off",
                        error=type(exc).__name__,
                        delay_s=round(delay, 2),
                    )
                    if not paused:
                        self._kafka.pause(*self._kafka.assignment())
                        paused = True
                    self._wait_paused(delay)
        finally:
            if paused:
                self._kafka.resume(*self._kafka.paused())

    def _write_behind(
        self,
        events: list[E],
        stored: list[ConsumerRecord],
        records: list[ConsumerRecord],
        batch: ConsumedBatch | None,
    ) -> None:
        """Start the write on the writer thread and return at once: the next poll and decode
        overlap the database's answer (pymongo waits for it outside the GIL)."""
        if self._behind is not None:
            raise RuntimeError("the batch written behind was not committed yet")
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="mongodb-writer")
        self._behind = (self._writer.submit(self._store, events, stored, batch), events, records, batch, stored)

    def _commit_written(self) -> None:
        """Wait for the batch written behind (if any), then commit it. A write that failed is
        retried here under _write's policy first; giving up leaves it uncommitted."""
        if self._behind is None:
            return
        future, events, records, batch, stored = self._behind
        self._behind = None
        try:
            future.result()
        except PyMongoError:
            self._write(events, stored, batch)
        self._commit(records)

    def _wait_paused(self, seconds: float) -> None:
        """Keep the group membership alive while waiting; rewind anything a rebalance let through."""
        self._beat()
        try:
            stray = self._kafka.poll(timeout_ms=int(seconds * 1000))
        except KafkaError:
            self.stop.wait(seconds)
            return
        for tp, records in stray.items():
            self._kafka.seek(tp, min(r.offset for r in records))
            self._kafka.pause(tp)

    def _commit(self, records: list[ConsumerRecord]) -> None:
        """Commit past every record of the (stored) batch, then refresh the lag gauge."""
        offsets: dict[tuple[str, int], int] = {}
        for record in records:
            tp = (record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, -1), record.offset)
        to_commit = {TopicPartition(t, p): OffsetAndMetadata(o + 1, "", -1) for (t, p), o in offsets.items()}
        try:
            self._kafka.commit(to_commit, timeout_ms=COMMIT_TIMEOUT_MS)
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
            for tp in self._kafka.assignment():
                high = self._kafka.highwater(tp)
                if high is not None:
                    total += max(high - self._kafka.position(tp, timeout_ms=1000), 0)
        except KafkaError:
            return
        LAG.set(total)

    @property
    def _kafka(self) -> KafkaConsumer:
        if self.kafka is None:
            raise RuntimeError("not connected")
        return self.kafka

    def close(self) -> None:
        if self._writer is not None:
            # A write still in flight (when giving up) finishes or fails within pymongo's own
            # timeouts; its batch stays uncommitted either way and is read again.
            self._writer.shutdown(wait=True)
            self._writer, self._behind = None, None
        if self.kafka is not None:
            # Offsets were committed per batch; closing sends LeaveGroup so partitions move at once.
            self.kafka.close(autocommit=False)
            self.kafka = None
        if self._dlq is not None:
            self._dlq.close(timeout=5)
            self._dlq = None
        self.function.stop()
        log(self.logger, logging.INFO, "consumer stopped")


def run(function: Function[E], settings: config.Settings, logger: logging.Logger) -> int:
    """The consumer process: probes on HOST:HEALTH_PORT at once (alive while it waits for
    the broker), SIGTERM/SIGINT finish the batch in hand, commit and leave the group.
    Returns the exit code."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    consumer = BatchConsumer(function, settings, stop, logger)
    server = probes.serve(probes.app(consumer.alive, consumer.ready), settings.host, settings.health_port)
    try:
        consumer.connect()
        consumer.consume()
        return 0
    except Stopped:  # before the group was joined
        return 0
    except GaveUp:
        return 1
    finally:
        consumer.close()
        server.shutdown()
