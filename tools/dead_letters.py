"""Show what is in the dead-letter topic: each poison record's reason, source and bytes.

    python -m tools.dead_letters [--bootstrap HOST:PORT] [--topic purchases.dlq] [--limit 50] [--json]

Reads from the beginning without a consumer group, so looking commits nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from purchase_common import config

STATE = Path(__file__).resolve().parent.parent / ".run" / "state.json"


def default_bootstrap() -> str:
    if STATE.exists() and "KAFKA_BOOTSTRAP_SERVERS" not in __import__("os").environ:
        return json.loads(STATE.read_text())["kafka_bootstrap"]
    return config.settings().kafka_bootstrap_servers


def read_dead_letters(bootstrap: str, topic: str, limit: int, timeout_s: float = 10) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=10000)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            raise SystemExit(f"topic {topic!r} does not exist on {bootstrap}")
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        found: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < limit and time.monotonic() < deadline:
            if all(consumer.position(tp) >= ends[tp] for tp in partitions):
                break
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or []}
                    found.append({
                        "dlq_offset": record.offset,
                        "reason": headers.pop("dlq_reason", "?"),
                        "source": f"{headers.pop('dlq_source_topic', '?')}[{headers.pop('dlq_source_partition', '?')}]"
                                  f"@{headers.pop('dlq_source_offset', '?')}",
                        "key": record.key.decode("utf-8", "replace") if record.key else None,
                        "headers": headers,
                        "value": (record.value or b"").decode("utf-8", "replace")[:500],
                    })
        return found[:limit]
    finally:
        consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: the local stack)")
    parser.add_argument("--topic", default=config.settings().dead_letter_topic)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args()
    letters = read_dead_letters(args.bootstrap or default_bootstrap(), args.topic, args.limit)
    if args.json:
        for letter in letters:
            print(json.dumps(letter, ensure_ascii=False))
        return 0
    print(f"{len(letters)} dead letter(s) in {args.topic}")
    for letter in letters:
        print(f"- #{letter['dlq_offset']} from {letter['source']} key={letter['key']!r}: {letter['reason']}")
        print(f"    value: {letter['value'][:200]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
