"""How the HTTP functions answer: JSON errors (never a stack trace), 503 with Retry-After,
and the probe paths handed to the one probe app."""
from __future__ import annotations

from flask import Response, jsonify

from .config import Settings
from .schema import ValidationError


def error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> Response:
    body = {"error": message}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def invalid(exc: ValidationError) -> Response:
    return error(exc.status, exc.message, exc.field)


def unavailable(message: str, settings: Settings) -> Response:
    """The dependency is down: 503, and when to try again."""
    return error(503, message, headers={"Retry-After": str(settings.retry_after_s)})


def json_answer(body, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def probe(probe_app, request) -> Response:
    return Response.from_app(probe_app, request.environ)
