"""The OpenAPI contract, fuzzed by schemathesis against the live stack through the gateway:
no 5xx, every answer conforms to the document (status, content type, headers, body), and
afterwards every stored document is a valid purchase (and every 202 was stored). Run twice:
against the open API (AUTH_MODE=off, `pipeline`) and against AUTH_MODE=jwt (`auth_pipeline`),
where each example carries no token, a refused one, a user's or a support client's (401, 403
and the answers behind them must conform too).

Bounded for `make test`: a fixed number of examples per operation, derandomized (the same
inputs every run), no example database."""
from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from purchase_common.auth import READ_ANY_SCOPE, WRITE_ANY_SCOPE
from purchase_common.schema import validate_purchase
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import wait_until

pytestmark = pytest.mark.integration
DOCUMENT = Path(__file__).resolve().parents[2] / "lib/purchase_common/purchase_common/openapi.json"
EXAMPLES_PER_OPERATION = 60
AUTH_EXAMPLES_PER_OPERATION = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
STORED_FIELDS = {"_id", "eventId", "username", "userId", "priceCents", "timestamp"}

schema = schemathesis.openapi.from_path(str(DOCUMENT))
accepted_ids: list[str] = []


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None, deadline=None,
          phases=[Phase.explicit, Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case, pipeline):
    response = case.call_and_validate(base_url=pipeline.gateway, checks=CHECKS, timeout=15)
    if case.operation.path == "/api/buy" and response.status_code == 202:
        accepted_ids.append(response.json()["id"])


def test_fuzzing_stored_only_valid_purchases(pipeline):
    collection = pipeline.collection()
    if accepted_ids:
        wait_until(lambda: collection.count_documents({"eventId": {"$in": accepted_ids}}) == len(set(accepted_ids)),
                   60, message="every purchase answered 202 stored")
    documents = list(collection.find({}))
    assert documents
    for document in documents:
        assert set(document) == STORED_FIELDS, document
        assert isinstance(document["priceCents"], int) and not isinstance(document["priceCents"], bool)
        assert isinstance(document["timestamp"], dt.datetime)
        purchase = validate_purchase({"username": document["username"], "userId": document["userId"],
                                      "price": Decimal(document["priceCents"]) / 100})
        # Stored exactly as validated: trimmed, cents unchanged.
        assert (purchase.username, purchase.user_id, purchase.price_cents) == \
            (document["username"], document["userId"], document["priceCents"]), document


@pytest.fixture(scope="module")
def authorizations(auth_pipeline):
    """What each example sends as Authorization, in turn: none, a refused token, user 555's
    (403 for every other userId), a client with both any-user scopes (through to the function)."""
    provider = auth_pipeline.provider
    return itertools.cycle([None, "Bearer not.a.token", f"Bearer {provider.token('555')}",
                            f"Bearer {provider.token('support-1', [READ_ANY_SCOPE, WRITE_ANY_SCOPE])}"])


@schema.parametrize()
@settings(max_examples=AUTH_EXAMPLES_PER_OPERATION, derandomize=True, database=None, deadline=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_api_with_tokens_conforms_to_its_openapi_document(case, auth_pipeline, authorizations):
    authorization = next(authorizations)
    headers = dict(case.headers or {})
    headers.pop("Authorization", None)
    if authorization is not None:
        headers["Authorization"] = authorization
    case.headers = headers
    response = case.call_and_validate(base_url=auth_pipeline.gateway, checks=CHECKS, timeout=15)
    if authorization in (None, "Bearer not.a.token"):
        # 401, or what the gateway or router refuses before the function: never an answer with data.
        assert response.status_code not in (200, 202), response.text
