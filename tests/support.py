"""Helpers shared by test modules (importable, unlike conftest.py)."""
from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests
from purchase_common import config

from devstack import stack as devstack
from devstack.servers import ensure_topics
from tools.common import poll_until

ANSWER_WITHIN_S = 5


def raw_exchange(port: int, request: bytes) -> tuple[int, dict, bytes, float]:
    """Send bytes as they are; return status, headers, body and how long the answer took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN_S) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer to {request[:60]!r}"
            received += chunk
        head, body = received.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines[1:])}
        while len(body) < int(headers.get("content-length", 0)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body, time.monotonic() - started


def isolated_env(stack: devstack.Stack, tag: str, **overrides: str) -> tuple[dict, dict]:
    """Function env using a topic, dead-letter topic, group and database of this tag only
    (the topics are created here); ``overrides`` set or replace variables."""
    names = {"topic": f"purchases-{tag}", "dead_letter_topic": f"purchases-{tag}.dlq",
             "group": f"persist-{tag}", "database": f"purchases_{tag}"}
    ensure_topics(stack.kafka_bootstrap, {names["topic"]: config.TOPIC_PARTITIONS, names["dead_letter_topic"]: 1})
    settings = {"PURCHASES_TOPIC": names["topic"], "DEAD_LETTER_TOPIC": names["dead_letter_topic"],
                "CONSUMER_GROUP": names["group"], "MONGODB_DATABASE": names["database"],
                "LOG_LEVEL": os.environ.get("TEST_FUNCTION_LOG_LEVEL", "INFO"),
                # Every purchase traced, whatever other tests spent of a budget (test_traces tests it).
                "TRACES_PER_SECOND": "inf", **overrides}
    return devstack.function_env(stack, **settings), names


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1, message: str = "condition"):
    """tools.common.poll_until for a test: its timeout is the test's failure (an AssertionError,
    which pytest reports as the failed check, not as an error in the code under test)."""
    try:
        return poll_until(predicate, timeout_s, interval_s, message)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


@dataclass
class LoadResult:
    accepted: list = field(default_factory=list)   # event ids answered 202
    statuses: dict = field(default_factory=dict)    # status -> count
    slowest_s: float = 0.0
    errors: int = 0                                 # transport errors (no HTTP answer)


def send_purchases(buy_url: str, count: int | None = None, duration_s: float | None = None,
                   concurrency: int = 8, users: int = 20, timeout_s: float = 10,
                   max_rate: float | None = None) -> LoadResult:
    """Bounded load: stops after `count` requests or `duration_s` seconds, whichever is set;
    `max_rate` caps the offered requests per second (all workers together)."""
    assert count or duration_s
    result, lock = LoadResult(), threading.Lock()
    deadline = time.monotonic() + (duration_s or 600)
    counter = iter(range(count or 10**9))

    def worker():
        session = requests.Session()
        interval = concurrency / max_rate if max_rate else 0.0
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            if interval:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + interval, time.monotonic() - interval)
            with lock:
                index = next(counter, None)
            if index is None:
                return
            body = {"username": f"user {index}", "userId": f"u{index % users}", "price": (index % 5000) / 100}
            started = time.monotonic()
            try:
                response = session.post(f"{buy_url}/api/buy", json=body, timeout=timeout_s)
            except requests.RequestException:
                with lock:
                    result.errors += 1
                continue
            elapsed = time.monotonic() - started
            with lock:
                result.slowest_s = max(result.slowest_s, elapsed)
                result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
                if response.status_code == 202:
                    result.accepted.append(response.json()["id"])
            if response.status_code == 503:
                time.sleep(0.05)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return result


def end_offsets(bootstrap: str, topic: str) -> int:
    """Records ever written to a topic (sum of its partitions' end offsets)."""
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()
