"""persist_purchase: store purchase CloudEvents in MongoDB, each event id exactly once.

``persist_purchase`` is the CloudEvent function (one event, e.g. delivered over HTTP by a
Knative/Kafka source); the Kafka consumer's loop over batches of the same events
(``consume``, run by ``python consumer.py``) is in persist.py, which both share.
"""
from __future__ import annotations

import functions_framework

from persist import consume, decode, persist_batch, run_consumer  # noqa: F401  (one module's API)
from purchase_common.events import purchase_from_event


@functions_framework.cloud_event
def persist_purchase(cloud_event):
    """Store one purchase event. Invalid events raise PoisonRecord (a ValueError)."""
    persist_batch([purchase_from_event(cloud_event)])
