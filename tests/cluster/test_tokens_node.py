"""Bearer tokens on the node (issue 25): a token from the provider pod (k8s/overlays/node/oidc/),
asked for by its Service name like the functions' pods ask for its keys, buys and reads the
history through the ingress; no token is a 401, another user's token a 403, and the store
records who bought. Its file sorts after the deploy and scaling tests on purpose: its purchase
wakes the consumer, which those tests expect at zero."""
from __future__ import annotations

import uuid

import requests
from clusterlib import POLL_S, wait_until
from purchase_common import config, storage

from cluster.observe import NODE_ISSUER
from devstack import oidc


def token_for(user: str) -> str:
    return oidc.request_token(f"{NODE_ISSUER}/token", user)


def buy(stack, user: str, token: str | None) -> requests.Response:
    headers = {"Host": stack.buy_revision.host}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(f"{stack.buy_revision.url}/api/buy", headers=headers, timeout=35,
                         json={"username": "node auth", "userId": user, "price": 7})


def history(stack, user: str, token: str | None) -> requests.Response:
    headers = {"Host": stack.history_revision.host}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(f"{stack.history_revision.url}/api/user/{user}/purchases", headers=headers, timeout=35)


def test_a_users_token_buys_and_reads_its_own_history_and_nothing_else(stack):
    user, other = "u" + uuid.uuid4().hex[:10], "u" + uuid.uuid4().hex[:10]
    token = token_for(user)

    for answer in (buy(stack, user, None), history(stack, user, None)):
        assert answer.status_code == 401, answer.text
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    refused = buy(stack, user, "not.a.token")
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    for answer in (buy(stack, other, token), history(stack, other, token)):
        assert answer.status_code == 403, answer.text
        assert 'error="insufficient_scope"' in answer.headers["WWW-Authenticate"]

    accepted = buy(stack, user, token)
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["id"]
    # The consumer may be at zero replicas: KEDA starts it on the lag.
    wait_until(lambda: [p["id"] for p in history(stack, user, token).json()] == [event_id], 180, POLL_S,
               "the purchase in its buyer's history")
    client = storage.connect(stack.mongodb_uri)
    try:
        stored = client[config.DATABASE_NAME][config.COLLECTION_NAME].find_one({"eventId": event_id})
    finally:
        client.close()
    assert stored["boughtBy"] == user and stored["userId"] == user
    assert history(stack, other, token_for(other)).json() == []
