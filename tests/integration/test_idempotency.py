"""Idempotency-Key on the real stack (buy runs two worker processes, which share the key
store): the same key and purchase gets the original answer; a different purchase under the
same key gets 422 and nothing is produced; exactly the first purchase is stored."""
from __future__ import annotations

import uuid

import pytest
import requests
from support import end_offsets, wait_until

pytestmark = pytest.mark.integration
ATTEMPTS = 6  # enough that both buy workers answer some of them



def test_key_reused_with_another_purchase_is_422_and_never_produced(pipeline):
    user_id, key = "idem-" + uuid.uuid4().hex[:8], "order-" + uuid.uuid4().hex
    purchase = {"username": "first", "userId": user_id, "price": 12.5}
    session = requests.Session()

    def buy(body):
        return session.post(f"{pipeline.gateway}/api/buy", json=body, headers={"Idempotency-Key": key}, timeout=10)

    first = buy(purchase)
    assert first.status_code == 202, first.text
    retries = [buy(purchase) for _ in range(ATTEMPTS)]
    assert {(r.status_code, r.json()["id"]) for r in retries} == {(202, first.json()["id"])}

    before = end_offsets(pipeline.stack.kafka_bootstrap, pipeline.topic)
    for changed in [{"price": 13}, {"username": "second"}] * (ATTEMPTS // 2):
        refused = buy({**purchase, **changed})
        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == "Idempotency-Key" and refused.json()["error"]
    assert end_offsets(pipeline.stack.kafka_bootstrap, pipeline.topic) == before, "a refused purchase was produced"

    collection = pipeline.collection()
    wait_until(lambda: collection.count_documents({"userId": user_id}) == 1, 30, message="purchase stored")
    (stored,) = collection.find({"userId": user_id})
    assert (stored["eventId"], stored["username"], stored["priceCents"]) == (first.json()["id"], "first", 1250)
