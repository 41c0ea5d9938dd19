"""One retry policy for every wait on a dead dependency: capped exponential backoff with jitter."""

from __future__ import annotations

import random
import time


class Backoff:
    """Delays 0.2, 0.4, 0.8 ... up to ``cap_s``, each drawn from its upper half so that
    replicas that failed together do not retry together."""

    def __init__(self, base_s: float = 0.2, cap_s: float = 5.0):
        self.base_s, self.cap_s = base_s, cap_s
        self._next = base_s

    def delay(self) -> float:
        current, self._next = self._next, min(self._next * 2, self.cap_s)
        return random.uniform(current / 2, current)


class Deadline:
    """A point in monotonic time, for "keep trying until" loops."""

    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds

    def passed(self) -> bool:
        return time.monotonic() > self.at

    def left(self) -> float:
        return self.at - time.monotonic()
