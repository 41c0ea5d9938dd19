"""What the scale-event benches record, against the real broker and a real /metrics endpoint:
the group's committed offsets as they move, a member's duplicates counter, and records read back
to their (partition, offset) by event id (bench/scale_events.py, bench/common.py)."""
from __future__ import annotations

import http.server
import threading
import time
import uuid

import pytest

from bench import scale_events
from bench.common import purchase_record, record_positions
from tools.common import poll_until

pytestmark = pytest.mark.integration


class Metrics(http.server.BaseHTTPRequestHandler):
    duplicates = 0.0

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = f"# TYPE purchases_duplicates_total counter\npurchases_duplicates_total {Metrics.duplicates}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metrics_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


def test_offsets_counters_and_positions_are_recorded_from_the_real_broker(servers, metrics_url):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from devstack.servers import ensure_topics

    topic, group = f"scale-rec-{uuid.uuid4().hex[:8]}", f"scale-rec-{uuid.uuid4().hex[:8]}"
    ensure_topics(servers.kafka_bootstrap, {topic: 2})
    producer = KafkaProducer(bootstrap_servers=servers.kafka_bootstrap, acks="all")
    sent = {}
    for index in range(10):
        key, value, headers = purchase_record(index)
        metadata = producer.send(topic, key=key, value=value, headers=headers, partition=index % 2).get(30)
        sent[dict(headers)["ce_id"].decode()] = (metadata.partition, metadata.offset)
    producer.flush(30)
    start = {0: 2, 1: 2}  # the first two of each partition come before the run
    expected = {event_id: where for event_id, where in sent.items() if where[1] >= 2}

    recording = scale_events.Recording()
    committer = KafkaConsumer(bootstrap_servers=servers.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    try:
        with scale_events.Sampler(recording, servers.kafka_bootstrap, topic, group, lambda: {"member": metrics_url}):
            poll_until(lambda: len(recording.samples) >= 3, 30, 0.05, "three samples")
            committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(3, "", -1)})
            Metrics.duplicates = 4.0
            poll_until(lambda: recording.samples[-1][1].get(0) == 3, 30, 0.05, "the commit sampled")
            poll_until(lambda: recording.duplicates.get("member") == 4.0, 30, 0.1, "the counter scraped")
            time.sleep(scale_events.SAMPLE_S * 2)
    finally:
        committer.close()
        Metrics.duplicates = 0.0
    assert recording.samples[0][1] == {0: 0, 1: 0} and recording.samples[0][2] == {0: 5, 1: 5}
    assert recording.samples[-1][1] == {0: 3, 1: 0}
    assert recording.duplicate_totals[-1][1] == 4.0
    assert record_positions(servers.kafka_bootstrap, topic, start, partitions=2) == expected
