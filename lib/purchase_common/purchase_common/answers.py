"""How the HTTP functions answer: JSON errors (never a stack trace), 503 with Retry-After,
and the probe paths handed to the one probe app. One ``Answers`` per web framework: history is
a Flask (WSGI) function, buy an ASGI (Starlette) one; both answer the same bytes."""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import probes
from .auth import INSUFFICIENT_SCOPE, InvalidToken, www_authenticate
from .config import Settings
from .schema import ValidationError

if TYPE_CHECKING:
    import flask
    import starlette.responses
    from starlette.requests import Request
    from werkzeug.exceptions import HTTPException

JSON = "application/json"
R = TypeVar("R")
Headers = dict[str, str]


# json.dumps with any option set builds a new encoder per call; this one is built once.
_ANSWER_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def json_bytes(body: object) -> bytes:
    """The bytes flask.jsonify writes (compact, sorted keys, a closing newline) for the plain
    JSON values the functions answer with, at a fraction of its cost per request (bench/README.md)."""
    return (_ANSWER_ENCODER.encode(body) + "\n").encode()


@functools.cache
def _openapi_bytes() -> bytes:
    return importlib.resources.files(__package__).joinpath("openapi.json").read_bytes()


class Answers(Generic[R]):
    """``respond(body, status, headers, content_type)`` builds the framework's response."""

    def __init__(self, respond: Callable[[bytes, int, Headers, str], R]):
        self.respond = respond

    def json(self, body: object, status: int = 200, headers: Headers | None = None) -> R:
        return self.respond(json_bytes(body), status, headers or {}, JSON)

    def error(self, status: int, message: str, field: str | None = None, headers: Headers | None = None) -> R:
        body = {"error": message}
        if field is not None:
            body["field"] = field
        return self.json(body, status, headers)

    def invalid(self, exc: ValidationError) -> R:
        return self.error(exc.status, exc.message, exc.field)

    def unavailable(self, message: str, settings: Settings) -> R:
        """The dependency is down: 503, and when to try again."""
        return self.error(503, message, headers={"Retry-After": str(settings.retry_after_s)})

    def unauthorized(self, exc: InvalidToken) -> R:
        """A missing or refused bearer token: 401 with RFC 6750's challenge. Issue 25 answers
        every refused credential 401, a malformed Authorization header (invalid_request) too."""
        return self.error(401, exc.description, headers={"WWW-Authenticate": exc.challenge})

    def forbidden(self, message: str, scope: str) -> R:
        """A valid token asking for another user's data: 403, naming the scope that would allow it."""
        challenge = www_authenticate(INSUFFICIENT_SCOPE, message, scope=scope)
        return self.error(403, message, headers={"WWW-Authenticate": challenge})

    def openapi(self, method: str) -> R:
        """The HTTP API's OpenAPI 3.1 document (the one copy, shipped in this package)."""
        if method not in ("GET", "HEAD"):
            return self.error(405, "method not allowed; use GET", headers={"Allow": "GET, HEAD"})
        return self.respond(_openapi_bytes(), 200, {}, JSON)

    def shared_route(self, method: str, path: str, probe_app: probes.WsgiApp) -> R | None:
        """The paths every HTTP function serves besides its own (probes, /metrics, the OpenAPI
        document), `path` as the function normalised it; None for any other path."""
        if path in probes.PATHS:
            status, headers, body = probes.call(probe_app, path)
            content_type = headers.pop("Content-Type")
            headers.pop("Content-Length", None)  # each framework counts its own
            return self.respond(body, status, headers, content_type)
        if path == "/openapi.json":
            return self.openapi(method)
        return None


def _flask_response(body: bytes, status: int, headers: Headers, content_type: str) -> flask.Response:
    from flask import Response

    return Response(body, status, headers=headers, content_type=content_type)


def _starlette_response(body: bytes, status: int, headers: Headers, content_type: str) -> starlette.responses.Response:
    from starlette.responses import Response

    return Response(body, status, headers=headers, media_type=content_type)


WSGI = Answers(_flask_response)
ASGI = Answers(_starlette_response)


def install_json_errors(errorhandler: Any, logger: logging.Logger | None = None) -> None:
    """Answer what Flask decides before the function runs as JSON too: routing failures
    (a path its router rejects, e.g. with %0A in a segment, is a 404) and crashes (500,
    replacing functions-framework's plain-text crash answer). ``errorhandler`` is
    ``functions_framework.errorhandler``, bound to the app while main.py loads."""
    from werkzeug.exceptions import HTTPException

    def _http_error(exc: HTTPException) -> flask.Response:
        return WSGI.error(exc.code or 500, (exc.name or "error").lower())

    def _crash(exc: BaseException) -> flask.Response:
        if logger is not None:
            original = getattr(exc, "original_exception", None) or exc
            logger.error("unhandled error: %s", type(original).__name__)
        return WSGI.error(500, "internal error")

    errorhandler(HTTPException)(_http_error)
    errorhandler(500)(_crash)


def install_asgi_json_errors() -> None:
    """The same for functions-framework's ASGI mode, which builds its Starlette app with no
    way to add an exception handler: what its router refuses before the function runs (a
    path it cannot match, /robots.txt, a method no route has) would be plain text. Starlette's
    ExceptionMiddleware answers every HTTPException through its ``http_exception`` method;
    this process's Starlette answers them as JSON instead, with the same status and headers."""
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.middleware.exceptions import ExceptionMiddleware

    def http_exception(
        self: ExceptionMiddleware, request: Request, exc: StarletteHTTPException
    ) -> starlette.responses.Response:
        message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail).lower())
        return ASGI.error(exc.status_code, message, headers=dict(exc.headers or {}))

    ExceptionMiddleware.http_exception = http_exception  # type: ignore[method-assign,assignment]
