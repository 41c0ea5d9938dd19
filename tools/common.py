"""What the repository's tooling shares: where things live, how a tool speaks, how it waits.

Every script, benchmark, load generator, cluster helper and test imports these from here
(KEDA's tests/helper is the model). The product (functions/, lib/) never imports this module.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from purchase_common.retry import Deadline

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
# Outside the clone: a fresh clone (CI's, a second checkout) reuses every download and build.
CACHE_DIR = Path(os.environ.get("PURCHASE_CACHE_DIR")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "purchase-system")
# The upstream Knative and KEDA CRDs the manifests are checked against; read in place, never copied.
CRDS_DIR = Path(os.environ.get("PURCHASE_CRDS_DIR", ROOT.parent / "shared" / "crds"))


def speaker(prefix: str, *, clock: bool = False, stream=sys.stderr) -> Callable[[str], None]:
    """A `say(message)` that prints `[prefix] message` (with the wall time when `clock`)."""
    def say(message: str) -> None:
        stamp = f" {time.strftime('%H:%M:%S')}" if clock else ""
        print(f"[{prefix}{stamp}] {message}", file=stream, flush=True)
    return say


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll_until(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.1,
               what: str = "condition") -> T:
    """Call predicate until it returns something truthy and return that; TimeoutError (naming
    `what` and the last value) after timeout_s."""
    deadline = Deadline(timeout_s)
    last = None
    while not deadline.passed():
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not reached within {timeout_s}s (last value: {last!r})")


def sh(*argv: str, check: bool = True, timeout_s: float = 60, input_text: str | None = None,
       env: dict | None = None) -> str:
    """Run a command to completion (bounded) and return its stdout; RuntimeError with its
    stderr when it fails and `check` is set."""
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s,
                            input=input_text, env=env)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout
