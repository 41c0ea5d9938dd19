"""buy's Idempotency-Key store (purchase_common/idempotency.py) when both gunicorn workers'
request threads open a new file at the same moment, as at the start of a load: every claim is
answered. The soak (load/soak/) once got a 500 here, "database is locked" on the switch to WAL."""
from __future__ import annotations

import multiprocessing
import threading
import time

from purchase_common.idempotency import FingerprintStore

WORKERS, THREADS, TRIALS = 2, 8, 10


def claim_all_at(path: str, start_at: float, errors) -> None:
    """One worker process: THREADS threads each claiming a key of their own at start_at."""
    store = FingerprintStore(path, window_s=3600)

    def claim(index: int) -> None:
        time.sleep(max(0.0, start_at - time.time()))
        try:
            assert store.claim(f"{multiprocessing.current_process().name}-{index}", "fingerprint")
        except Exception as exc:  # noqa: BLE001 - whatever it is, the parent reports it
            errors.put(repr(exc))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)


def test_concurrent_first_claims_from_two_processes_all_succeed(tmp_path):
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for trial in range(TRIALS):
        path = str(tmp_path / f"keys-{trial}.sqlite3")
        start_at = time.time() + 0.3
        workers = [context.Process(target=claim_all_at, args=(path, start_at, errors), name=f"w{i}")
                   for i in range(WORKERS)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
            assert worker.exitcode == 0
    found = []
    while not errors.empty():
        found.append(errors.get(timeout=1))
    assert not found, found
