"""Entry point of the persist-purchase image: `python consumer.py` runs the Kafka consumer
(persist.consume on purchase_common.batch_consumer), the process KEDA scales from zero.

Health, readiness and metrics are served on HOST:HEALTH_PORT. SIGTERM finishes the batch in
hand, commits and leaves the group; giving up on Kafka or MongoDB exits 1, nothing committed.
"""
import sys

from persist import run_consumer

if __name__ == "__main__":
    sys.exit(run_consumer())
