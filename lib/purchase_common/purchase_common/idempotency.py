"""Idempotency-Key: one key names one purchase. A retry with the same purchase gets the
original answer (same event id); the same key with a different purchase is refused (422).

The event id is derived from (userId, key) (events.event_id_for), so retries of one purchase
are stored once whatever process sends them. What a key was first used for is remembered
in a small SQLite file shared by the worker processes of one buy instance (one pod): buy
needs no database it does not already have, and answers without waiting on MongoDB. A
different purchase sent under the same key to another pod is answered 202 but never
stored: the unique eventId keeps the first one (README, "Idempotency-Key").
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import threading
import time

from .retry import Deadline
from .schema import Purchase

PRUNE_EVERY = 1000  # claims between deletions of expired keys
BUSY_TIMEOUT_S = 5.0  # how long a claim waits for another worker's lock on the file


def fingerprint(purchase: Purchase) -> str:
    """A canonical hash of the validated purchase: trimming or 12 vs 12.00 does not change it."""
    canonical = json.dumps(
        {"username": purchase.username, "userId": purchase.user_id, "priceCents": purchase.price_cents},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def default_path(topic: str) -> str:
    # One file per topic, so test sessions and benches on one machine never share keys.
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in topic)
    return os.path.join(tempfile.gettempdir(), f"purchase-idempotency-{safe}.sqlite3")


def _use_wal(connection: sqlite3.Connection) -> None:
    """WAL mode, so the workers' claims do not block each other's reads. Switching a new file
    to WAL takes a lock SQLite does not wait for (the busy timeout does not cover it): request
    threads of both workers opening the file at once got "database is locked" and a 500 (found
    by the soak, load/soak/), so a busy answer is retried within the same budget."""
    deadline = Deadline(BUSY_TIMEOUT_S)
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or deadline.passed():
                raise
            time.sleep(0.01)


class FingerprintStore:
    """Key (the event id) -> fingerprint of the purchase first sent under it, for window_s."""

    def __init__(self, path: str, window_s: float):
        self.path, self.window_s = path, window_s
        self._local = threading.local()
        self._claims = 0

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            _use_wal(connection)
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS idempotency_keys (event_id TEXT PRIMARY KEY, "
                "fingerprint TEXT NOT NULL, first_seen REAL NOT NULL)"
            )
            self._local.connection = connection
        return connection

    def claim(self, event_id: str, purchase_fingerprint: str) -> bool:
        """True when the key is new (now recorded), expired, or was used for this same purchase."""
        now = time.time()
        connection = self._connection()
        # One statement: concurrent workers racing on a new key both see the winner's fingerprint.
        connection.execute(
            "INSERT INTO idempotency_keys VALUES (?, ?, ?) ON CONFLICT(event_id) DO UPDATE SET "
            "fingerprint = excluded.fingerprint, first_seen = excluded.first_seen "
            "WHERE idempotency_keys.first_seen < ?",
            (event_id, purchase_fingerprint, now, now - self.window_s),
        )
        stored: str
        (stored,) = connection.execute(
            "SELECT fingerprint FROM idempotency_keys WHERE event_id = ?", (event_id,)
        ).fetchone()
        self._claims += 1
        if self._claims % PRUNE_EVERY == 0:
            connection.execute("DELETE FROM idempotency_keys WHERE first_seen < ?", (now - self.window_s,))
        return stored == purchase_fingerprint
