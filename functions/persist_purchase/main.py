"""persist_purchase as a CloudEvent function (one event, e.g. delivered over HTTP by a
Knative/Kafka source): the functions-framework entry point of persist.PersistPurchase, which
the Kafka consumer (``python consumer.py``) runs too."""

from __future__ import annotations

import functions_framework
from cloudevents.abstract import CloudEvent
from persist import PersistPurchase
from purchase_common import config
from purchase_common.lifecycle import PerProcess

# Read at import, so a bad variable fails the server's start rather than every request.
SETTINGS = config.settings()
function = PerProcess(lambda: PersistPurchase(SETTINGS))


@functions_framework.cloud_event
def persist_purchase(cloud_event: CloudEvent) -> None:
    """Store one purchase event. Invalid events raise PoisonRecord (a ValueError)."""
    function.get().handle(cloud_event)
