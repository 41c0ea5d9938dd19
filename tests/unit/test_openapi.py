"""The OpenAPI 3.1 document is valid and ships inside purchase_common (so every function image
has it), and what it promises matches the code's own limits."""
from __future__ import annotations

import json
from pathlib import Path

from openapi_spec_validator import validate
from purchase_common import events, schema, storage

DOCUMENT = Path(__file__).resolve().parents[2] / "lib/purchase_common/purchase_common/openapi.json"
PYPROJECT = DOCUMENT.parents[1] / "pyproject.toml"


def load() -> dict:
    return json.loads(DOCUMENT.read_text())


def test_the_document_is_valid_openapi_3_1():
    document = load()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_the_document_is_package_data():
    assert '"openapi.json"' in PYPROJECT.read_text().split("[tool.setuptools.package-data]", 1)[1]


def test_every_operation_documents_its_errors_as_json():
    for path, operations in load()["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert {"400", "404", "405", "503"} <= statuses, (method, path)


def test_limits_match_the_code():
    schemas = load()["components"]["schemas"]
    request = schemas["PurchaseRequest"]["properties"]
    assert request["username"]["maxLength"] == schema.USERNAME_MAX_CHARS
    assert request["price"]["maximum"] == schema.PRICE_MAX
    assert schemas["UserId"]["pattern"] == f"^{schema.USER_ID_PATTERN.pattern}$"
    parameters = load()["components"]["parameters"]
    assert parameters["Limit"]["schema"]["maximum"] == storage.HISTORY_MAX_LIMIT
    assert parameters["Limit"]["schema"]["default"] == storage.HISTORY_DEFAULT_LIMIT
    assert parameters["IdempotencyKey"]["schema"]["maxLength"] == events.IDEMPOTENCY_KEY_MAX_CHARS
