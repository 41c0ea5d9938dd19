"""How the HTTP functions answer: JSON errors (never a stack trace), 503 with Retry-After,
and the probe paths handed to the one probe app."""
from __future__ import annotations

import functools
import importlib.resources
import json

from flask import Response
from werkzeug.exceptions import HTTPException

from . import probes
from .config import Settings
from .schema import ValidationError


def error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> Response:
    body = {"error": message}
    if field is not None:
        body["field"] = field
    response = json_answer(body, status)
    response.headers.update(headers or {})
    return response


def invalid(exc: ValidationError) -> Response:
    return error(exc.status, exc.message, exc.field)


def unavailable(message: str, settings: Settings) -> Response:
    """The dependency is down: 503, and when to try again."""
    return error(503, message, headers={"Retry-After": str(settings.retry_after_s)})


def json_answer(body, status: int = 200) -> Response:
    """The bytes flask.jsonify writes (compact, sorted keys, a closing newline) for the plain
    JSON values the functions answer with, at half its cost per request (bench/README.md)."""
    return Response(json.dumps(body, separators=(",", ":"), sort_keys=True) + "\n", status, mimetype="application/json")


@functools.cache
def _openapi_bytes() -> bytes:
    return importlib.resources.files(__package__).joinpath("openapi.json").read_bytes()


def openapi(request) -> Response:
    """The HTTP API's OpenAPI 3.1 document (the one copy, shipped in this package)."""
    if request.method not in ("GET", "HEAD"):
        return error(405, "method not allowed; use GET", headers={"Allow": "GET, HEAD"})
    return Response(_openapi_bytes(), 200, mimetype="application/json")


def probe(probe_app, request) -> Response:
    return Response.from_app(probe_app, request.environ)


def shared_route(request, path: str, probe_app) -> Response | None:
    """The paths every HTTP function serves besides its own (probes, /metrics, the OpenAPI
    document), `path` as the function normalised it; None for any other path."""
    if path in probes.PATHS:
        return probe(probe_app, request)
    if path == "/openapi.json":
        return openapi(request)
    return None


def install_json_errors(errorhandler, logger=None) -> None:
    """Answer what Flask decides before the function runs as JSON too: routing failures
    (a path its router rejects, e.g. with %0A in a segment, is a 404) and crashes (500,
    replacing functions-framework's plain-text crash answer). ``errorhandler`` is
    ``functions_framework.errorhandler``, bound to the app while main.py loads."""

    @errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return error(exc.code or 500, (exc.name or "error").lower())

    @errorhandler(500)
    def _crash(exc):
        if logger is not None:
            original = getattr(exc, "original_exception", None) or exc
            logger.error("unhandled error: %s", type(original).__name__)
        return error(500, "internal error")
