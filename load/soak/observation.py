"""What the soak reads while it runs: the broker's offsets and the group's members, recorded on
threads of their own, what those records say about one member, and when the stored count settled.

Stored progress is read from the broker: the consumer commits a record only once it is stored,
and FerretDB counts by scanning, too slowly to be read every second.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kafka.errors import KafkaError
from pymongo.errors import PyMongoError

from load.sampler import BrokerReads
from tools.lag_reader import LagReader

OFFSETS_SAMPLE_S = 1.0
GROUP_SAMPLE_S = 0.5
SETTLE_TIMEOUT_S = 300.0   # after the load, wait at most this long for the stored count to settle
SETTLE_QUIET_S = 5.0       # settled: no lag this long, then every 202 stored
# Group states in which a member list is the coordinator's real view (not a group still loading).
KNOWN_GROUP_STATES = {"Stable", "PreparingRebalance", "CompletingRebalance", "Empty"}


class Recorder:
    """Calls `read` every interval on a thread of its own and keeps (t, value); a failed read
    is kept as (t, None)."""

    def __init__(self, name: str, read, interval_s: float, clock):
        self.read, self.interval_s, self.clock = read, interval_s, clock
        self.samples: list[tuple[float, object]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                value = self.read()
            except Exception:  # noqa: BLE001 - mid-outage any client may raise anything; a gap is data here
                value = None
            self.samples.append((self.clock(), value))
            self.stop.wait(self.interval_s)


def group_members(bootstrap: str, group: str, by: str) -> BrokerReads:
    """Reads of the group's state and members, each member named by its `by` (LagReader.members)."""
    return BrokerReads(bootstrap, lambda reader: reader.members(group, by=by))


def offsets(bootstrap: str, topic: str, group: str) -> BrokerReads:
    """Reads of (records written to the topic, records the group committed, i.e. stored)."""
    def written_and_committed(reader: LagReader) -> tuple[int, int]:
        partitions = reader.read(topic, group)
        return sum(p.end for p in partitions), sum(p.committed or 0 for p in partitions)
    return BrokerReads(bootstrap, written_and_committed)


def records_written(bootstrap: str, topic: str) -> int:
    reader = LagReader(bootstrap)
    try:
        return reader.records_written(topic)
    finally:
        reader.close()


def known(samples, since: float, until: float = float("inf")):
    """The group samples in [since, until] that show the coordinator's real view: (t, members)."""
    return [(t, value[1]) for t, value in samples
            if since <= t <= until and value is not None and value[0] in KNOWN_GROUP_STATES]


def has_client(members, client_id: str) -> bool:
    return any(cid == client_id for cid, _ in members)


def first_absent(samples, client_id: str, since: float, until: float = float("inf")) -> float | None:
    """When the group first showed no member with this client id in two reads in a row."""
    views = known(samples, since, until)
    for (t, members), (_, after) in zip(views, views[1:], strict=False):
        if not has_client(members, client_id) and not has_client(after, client_id):
            return t
    return None


def first_present(samples, client_id: str, since: float, excluding: set[str] = frozenset()) -> float | None:
    """When the group first showed a member with this client id (and a member id not in `excluding`)."""
    for t, members in known(samples, since):
        if any(cid == client_id and mid not in excluding for cid, mid in members):
            return t
    return None


def wait_until_settled(reads: BrokerReads, stored_count: Callable[[], int], accepted: int,
                       clock: Callable[[], float]) -> float | None:
    """Wait (bounded) until the group has committed every record for SETTLE_QUIET_S and the
    store holds at least `accepted` purchases; when that was reached, or None."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    quiet_since = None
    while time.monotonic() < deadline:
        try:
            written, committed = reads()
        except KafkaError:
            written, committed = 0, -1
        if written != committed:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= SETTLE_QUIET_S:
            try:
                if stored_count() >= accepted:
                    return clock()
            except PyMongoError:
                pass
        time.sleep(1.0)
    return None
