"""The life of a function object (the knative/func shape: built from Settings, then ``start``,
``stop``, ``alive``, ``ready`` and its handler) inside a server that forks workers.

A functions-framework entry point is a plain decorated function, so it holds its object in a
``PerProcess``: built and started on first use in each process, never inherited across a fork.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Startable(Protocol):
    def start(self) -> None: ...


F = TypeVar("F", bound=Startable)


class PerProcess(Generic[F]):
    """This process's one function object, made by ``new`` and started on first ``get``. A
    process forked from one that had it makes its own: client threads do not survive a fork."""

    def __init__(self, new: Callable[[], F]):
        self._new = new
        self._lock = threading.Lock()
        self._made: tuple[int, F] | None = None

    def get(self) -> F:
        made = self._made
        if made is None or made[0] != os.getpid():
            with self._lock:
                made = self._made
                if made is None or made[0] != os.getpid():
                    function = self._new()
                    function.start()
                    made = self._made = (os.getpid(), function)
        return made[1]

    def use(self, function: F) -> None:
        """Serve this (started) object in this process instead: tests hand in their own."""
        with self._lock:
            self._made = (os.getpid(), function)
