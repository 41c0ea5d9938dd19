"""The HTTP ceiling on functions-framework's ASGI server (`--asgi` / FUNCTION_USE_ASGI: gunicorn
with uvicorn workers, Starlette): the same work as ceiling/main.py (parse the body, answer 202,
nothing sent to Kafka), to compare the two server models under buy's settings (bench.ab)."""
from __future__ import annotations

import json
import uuid

import functions_framework.aio
from starlette.responses import Response


@functions_framework.aio.http
async def ceiling(request):
    try:
        json.loads(await request.body())
    except ValueError:
        pass
    body = json.dumps({"message": "Purchase accepted", "id": str(uuid.uuid4())})
    return Response(body, 202, media_type="application/json")
