"""A consumer group's offsets read from the broker: committed, log start and end, per partition.

One admin connection per reader, reused for every read (the load sampler reads every
second). Used by `make lag` (tools/kafka_lag.py), load/ and bench/.
"""
from __future__ import annotations

import json
import os
import time

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec
from kafka.errors import KafkaError
from purchase_common import config

from tools.keda_scaler import ROOT, PartitionOffsets

STATE_FILE = ROOT / ".run" / "state.json"


def read_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


def default_bootstrap() -> str:
    """--bootstrap > KAFKA_BOOTSTRAP_SERVERS > .run/state.json (make up / make run) > config default."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"].strip()
    return read_state().get("kafka_bootstrap") or config.Settings().kafka_bootstrap_servers


class LagReader:
    """One admin connection, reused for every sample (the load sampler calls it each second)."""

    def __init__(self, bootstrap: str, timeout_ms: int = 5000):
        self.bootstrap = bootstrap
        self.timeout_ms = timeout_ms
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), client_id="kafka-lag",
                                      request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
                                      reconnect_backoff_max_ms=1000)

    def close(self) -> None:
        self.admin.close()

    def partitions(self, topic: str) -> list[int]:
        described = self.admin.describe_topics([topic])
        if not described or described[0].get("error_code", 0) != 0:
            code = described[0].get("error_code") if described else "?"
            raise LookupError(f"topic {topic!r} not found on {self.bootstrap} (error code {code})")
        return sorted(p["partition_index"] for p in described[0]["partitions"])

    def _committed(self, group: str, tps) -> dict:
        """OffsetFetch; a broker still creating __consumer_offsets answers 'coordinator not
        available' for a few seconds, so retriable errors are retried within the timeout."""
        deadline = time.monotonic() + self.timeout_ms / 1000
        while True:
            try:
                return self.admin.list_group_offsets({group: tps}).get(group, {})
            except KafkaError as exc:
                if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _ends(self, tps) -> dict:
        return self.admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps}, timeout_ms=self.timeout_ms)

    def records_written(self, topic: str) -> int:
        """Records ever written to the topic: the sum of its partitions' end offsets."""
        return sum(o.offset for o in self._ends([TopicPartition(topic, p) for p in self.partitions(topic)]).values())

    def read(self, topic: str, group: str) -> list[PartitionOffsets]:
        tps = [TopicPartition(topic, p) for p in self.partitions(topic)]
        committed = self._committed(group, tps)
        ends = self._ends(tps)
        starts = self.admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in tps}, timeout_ms=self.timeout_ms)
        result = []
        for tp in tps:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset is not None and meta.offset >= 0 else None
            result.append(PartitionOffsets(tp.partition, offset, ends[tp].offset, starts[tp].offset))
        return result

    def members(self, group: str, by: str = "client_id") -> tuple[str, list[tuple[str, str]]]:
        """The group's state and its members as (client id, member id), or (host, member id) with
        by="client_host" when every member has the same client id (the broker writes hosts
        as "/<ip>"); raises KafkaError when the coordinator cannot say (e.g. still loading the
        group after a restart)."""
        info = self.admin.describe_groups([group])[group]
        if info.get("error"):
            raise KafkaError(info["error"])
        return info.get("group_state") or "", sorted((m[by].lstrip("/"), m["member_id"])
                                                     for m in info.get("members") or [])

    def group_state(self, group: str) -> dict:
        try:
            described = self.admin.describe_groups([group])
        except Exception as exc:  # informational only
            return {"state": f"unknown ({type(exc).__name__})", "members": None}
        info = described.get(group) if isinstance(described, dict) else None
        if not info:
            return {"state": "unknown", "members": None}
        state = info.get("group_state") or "unknown"
        if "GroupIdNotFound" in str(info.get("error") or ""):
            state = "no such group yet"
        return {"state": state, "members": len(info.get("members") or [])}
