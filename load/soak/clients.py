"""The soak's purchases and the clients that offer them: one purchase per slot of a steady rate,
each retried under its own Idempotency-Key until a 202 or its deadline."""
from __future__ import annotations

import heapq
import json
import math
import queue
import threading
import time
from dataclasses import dataclass, field

from purchase_common.events import event_id_for
from purchase_common.retry import Backoff

from load import loadgen

REQUEST_TIMEOUT_S = 10.0   # an attempt unanswered this long counts as "no answer" and is retried
MAX_CLIENT_THREADS = 1000
PURCHASE_DEADLINE_S = 180.0  # a purchase is retried this long after its slot, then abandoned
RETRY_CAP_S = 5.0          # longest wait between two attempts of one purchase (Retry-After included)
USERS = 500
NO_ANSWER = 0              # the status recorded for an attempt without an HTTP answer (loadgen's convention)


def client_threads(rate: float) -> int:
    """Enough threads that purchases are still offered on time when every attempt in flight
    waits out the request timeout (buy queueing behind a dead broker), plus room for retries."""
    return min(MAX_CLIENT_THREADS, math.ceil(rate * REQUEST_TIMEOUT_S) + 32)


@dataclass
class Purchase:
    index: int
    user_id: str
    username: str
    price_cents: int
    key: str
    event_id: str        # what buy derives from (userId, Idempotency-Key): the same for every retry
    offered_at: float    # its slot in the steady rate, seconds after the load started
    attempts: int = 0
    first_sent_at: float | None = None
    accepted_at: float | None = None
    answered_id: str | None = None
    last_status: int | None = None
    abandoned: bool = False
    backoff: Backoff = field(default_factory=lambda: Backoff(cap_s=RETRY_CAP_S))

    @property
    def body(self) -> bytes:
        return json.dumps({"username": self.username, "userId": self.user_id, "price": self.price_cents / 100},
                          separators=(",", ":")).encode()


def make_purchases(rate: float, seconds: float, run_id: str, users: str = "soak",
                   user_count: int = USERS) -> list[Purchase]:
    """One purchase per slot, round-robin over user_count users `<users>-<n>`, keys unique to the run."""
    purchases = []
    for index in range(round(rate * seconds)):
        user_id, key = f"{users}-{index % user_count}", f"soak-{run_id}-{index}"
        purchases.append(Purchase(index, user_id, f"soak user {index % user_count}", 100 + index % 9999, key,
                                  event_id_for(user_id, key), offered_at=index / rate))
    return purchases


class Clients:
    """Offers each purchase at its slot and retries it under its own Idempotency-Key until a
    202 or its deadline. One dispatcher releases due work to a pool of threads; a purchase
    offered for the first time goes before due retries, so the offered rate stays steady
    while retries back off."""

    FIRST, RETRY, STOP = 0, 1, 2

    def __init__(self, target: loadgen.Target, purchases: list[Purchase], threads: int, clock):
        self.target, self.purchases, self.threads, self.clock = target, purchases, threads, clock
        self.work: queue.PriorityQueue = queue.PriorityQueue()
        self.retries: list[tuple[float, int]] = []   # heap of (due, purchase index)
        self.changed = threading.Condition()
        self.outstanding = 0                         # released to the pool, not finished
        self.attempts: list[tuple[float, float, int, int]] = []  # (sent, answered, status, index)
        self.stop = threading.Event()
        self.done = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._attempts, name=f"client-{i}", daemon=True)
                         for i in range(self.threads)]
        self._threads.append(threading.Thread(target=self._dispatch, name="dispatcher", daemon=True))
        for thread in self._threads:
            thread.start()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _dispatch(self) -> None:
        upcoming = 0
        try:
            while not self.stop.is_set():
                now = self.clock()
                with self.changed:
                    while upcoming < len(self.purchases) and self.purchases[upcoming].offered_at <= now:
                        self.work.put((self.FIRST, self.purchases[upcoming].offered_at, upcoming))
                        upcoming += 1
                        self.outstanding += 1
                    while self.retries and self.retries[0][0] <= now:
                        due, index = heapq.heappop(self.retries)
                        self.work.put((self.RETRY, due, index))
                        self.outstanding += 1
                    if upcoming == len(self.purchases) and not self.retries and not self.outstanding:
                        return
                    next_due = min(self.purchases[upcoming].offered_at if upcoming < len(self.purchases) else now + 1,
                                   self.retries[0][0] if self.retries else now + 1)
                    self.changed.wait(timeout=min(max(next_due - now, 0.0), 0.5))
        finally:
            self.done.set()
            for _ in range(self.threads):
                self.work.put((self.STOP, 0.0, -1))

    def _attempts(self) -> None:
        while True:
            kind, _, index = self.work.get()
            if kind == self.STOP:
                return
            retry_at = self._attempt(self.purchases[index])
            with self.changed:
                self.outstanding -= 1
                if retry_at is not None:
                    heapq.heappush(self.retries, (retry_at, index))
                self.changed.notify()

    def _attempt(self, purchase: Purchase) -> float | None:
        """One POST; the time to try again, or None when the purchase is finished."""
        sent = self.clock()
        if purchase.first_sent_at is None:
            purchase.first_sent_at = sent
        purchase.attempts += 1
        status, headers, body = NO_ANSWER, {}, b""
        # A connection per attempt: no idle keep-alive connection closed by the server can pass
        # for a missing answer, and a killed worker's connections die with it.
        conn = loadgen.HttpConnection(self.target, REQUEST_TIMEOUT_S)
        try:
            status, headers, body = conn.request_with_headers(
                loadgen.build_request(self.target, purchase.body, {"Idempotency-Key": purchase.key}))
        except (OSError, ValueError, IndexError):
            status = NO_ANSWER
        finally:
            conn.close()
        answered = self.clock()
        self.attempts.append((sent, answered, status, purchase.index))
        purchase.last_status = status
        if status == 202:
            purchase.accepted_at = answered
            try:
                purchase.answered_id = json.loads(body)["id"]
            except (ValueError, KeyError, TypeError):
                purchase.answered_id = None
            return None
        if status != NO_ANSWER and status < 500:
            return None  # refused: final, and reported as an unexpected answer
        delay = purchase.backoff.delay()
        if status == 503:
            delay = max(delay, min(float(headers.get("retry-after") or 0), RETRY_CAP_S))
        if self.stop.is_set() or answered + delay > purchase.offered_at + PURCHASE_DEADLINE_S:
            purchase.abandoned = True
            return None
        return answered + delay
