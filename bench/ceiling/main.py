"""The HTTP ceiling of `make bench`: buy's server stack and settings (functions-framework,
gunicorn workers and threads, the same env), with a function that parses the body and answers
202 like buy but sends nothing to Kafka. buy's rate over this one is what the Kafka round trip
and buy's own work cost; this one's rate is the most any change to buy's code could reach."""
from __future__ import annotations

import json
import uuid

import functions_framework


@functions_framework.http
def ceiling(request):
    request.get_json(silent=True)
    body = json.dumps({"message": "Purchase accepted", "id": str(uuid.uuid4())})
    return body, 202, {"Content-Type": "application/json"}
