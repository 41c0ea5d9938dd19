"""The HTTP ceiling of `make bench`: buy's server stack and settings (functions-framework's ASGI
mode: gunicorn with uvicorn workers, Starlette; the same env), with a function that reads the
body and answers 202 like buy but sends nothing to Kafka. buy's rate over this one is what the
Kafka round trip and buy's own work cost; this one's rate is the most any change to buy's code
could reach on this server."""
from __future__ import annotations

import json
import uuid

import functions_framework.aio
from purchase_common import answers


@functions_framework.aio.http
async def ceiling(request):
    try:
        json.loads(await request.body())
    except ValueError:
        pass
    return answers.ASGI.json({"message": "Purchase accepted", "id": str(uuid.uuid4())}, 202)
