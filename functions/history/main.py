"""history: a user's purchases, newest first, straight from MongoDB.

``History`` is the function as an object, built from Settings (its store, its probes), made once
per worker process; ``history`` below is the functions-framework entry point that hands each
request to it."""

from __future__ import annotations

import logging
import urllib.parse

import functions_framework
import gunicorn.config  # type: ignore[import-untyped]
from flask import Request, Response
from prometheus_client import Counter, Histogram
from purchase_common import answers, auth, config, probes, storage, tracing
from purchase_common.config import Settings
from purchase_common.lifecycle import PerProcess
from purchase_common.logs import get_logger, log
from purchase_common.schema import ValidationError, validate_user_id
from pymongo.errors import PyMongoError
from werkzeug.datastructures import MultiDict

REQUESTS = Counter("history_requests_total", "History requests by outcome", ["outcome"])
QUERY_LATENCY = Histogram(
    "history_query_seconds",
    "MongoDB query time per history request",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
)
# The API's path, and the original system's two, kept for its clients.
USER_PATH, LEGACY_PATH, LEGACY_QUERY_PATH = ("/api/user/", "/purchases"), "/api/getAllUserBuys/", "/api/purchases"


def _single_param(args: MultiDict[str, str], name: str) -> str | None:
    values = args.getlist(name)
    if len(values) > 1:
        raise ValidationError(name, f"{name} given more than once")
    return values[0] if values else None


def _limit(raw: str | None) -> int:
    if raw is None:
        return storage.HISTORY_DEFAULT_LIMIT
    # ASCII digits only: str.isdigit() also takes "²" or "٥", which int() refuses or reads as 5.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or not 1 <= int(raw) <= storage.HISTORY_MAX_LIMIT:
        raise ValidationError("limit", f"limit must be an integer from 1 to {storage.HISTORY_MAX_LIMIT}")
    return int(raw)


def _user_id(request: Request) -> str:
    """The canonical (trimmed, validated) userId, wherever the route carries it."""
    path = request.path  # already percent-decoded by werkzeug
    if path.startswith(USER_PATH[0]) and path.endswith(USER_PATH[1]):
        return validate_user_id(path[len(USER_PATH[0]) : -len(USER_PATH[1])])
    if path.startswith(LEGACY_PATH):
        return validate_user_id(path[len(LEGACY_PATH) :].rstrip("/"))
    return validate_user_id(_single_param(request.args, "userId"))


def _next_page_link(request: Request, user_id: str, limit: int, cursor: str) -> str:
    """Built from the canonical userId and limit only, never from the raw path or query: what
    the client sent may carry whitespace that is illegal in a header or not a valid URI."""
    query: dict[str, str | int] = {"limit": limit, "before": cursor}
    if request.path.startswith(USER_PATH[0]):
        path = f"{USER_PATH[0]}{user_id}{USER_PATH[1]}"
    elif request.path.startswith(LEGACY_PATH):
        path = f"{LEGACY_PATH}{user_id}"
    else:
        path, query = LEGACY_QUERY_PATH, {"userId": user_id, **query}
    return f'<{path}?{urllib.parse.urlencode(query)}>; rel="next"'


def _route(path: str) -> str | None:
    """The API route's template (the span's name: never the userId, which would make one name
    per user); None for any other path."""
    if path.startswith(USER_PATH[0]) and path.endswith(USER_PATH[1]):
        return f"{USER_PATH[0]}{{userId}}{USER_PATH[1]}"
    if path.startswith(LEGACY_PATH):
        return f"{LEGACY_PATH}{{userId}}"
    return path if path == LEGACY_QUERY_PATH else None


def _answered(outcome: str, response: Response) -> Response:
    REQUESTS.labels(outcome=outcome).inc()
    return response


class History:
    def __init__(self, settings: Settings, store: storage.Store | None = None):
        self.settings = settings
        self.logger = get_logger("history", settings)
        self.tracing = tracing.Tracing(settings, "history")
        self.store = store or storage.Store(settings, self.tracing.mongodb_listeners())
        self.probes = probes.app(self.alive, self.ready)
        self.verifier: auth.TokenVerifier | None = None

    def start(self) -> None:
        """Only the issuer's keys are fetched ahead (in the background): the store connects on
        first use, so history starts (and answers 503) with the database down."""
        self.verifier = auth.start_verifier(self.settings, self.logger)

    def stop(self) -> None:
        self.store.close()
        self.tracing.shutdown()

    def alive(self) -> bool:
        return True

    def ready(self) -> dict[str, bool]:
        # Ready only while MongoDB answers: a history pod that cannot read is taken out of rotation.
        return {"mongodb": self.store.reachable(), **auth.readiness(self.verifier)}

    def handle(self, request: Request) -> Response:
        route = _route(request.path)
        # Probes, metrics, strays and untraced requests make no span.
        context = self.tracing.request_context(request.headers) if route is not None else None
        if route is None or context is None:
            return self._answer(request)
        with self.tracing.server_span(request.method, route, request.path, context) as span:
            response = self._answer(request)
            tracing.answered(span, response.status_code)
        return response

    def _answer(self, request: Request) -> Response:
        path = request.path
        if (
            (path.startswith(USER_PATH[0]) and path.endswith(USER_PATH[1]))
            or path == LEGACY_QUERY_PATH
            or path.startswith(LEGACY_PATH)
        ):
            if request.method not in ("GET", "HEAD"):
                return _answered(
                    "method", answers.WSGI.error(405, "method not allowed; use GET", headers={"Allow": "GET, HEAD"})
                )
            return self.list_purchases(request)
        return answers.WSGI.shared_route(request.method, path, self.probes) or _answered(
            "not_found", answers.WSGI.error(404, "not found")
        )

    def caller(self, request: Request) -> auth.Principal | Response | None:
        """The verified caller, or the answer refusing the request; None with AUTH_MODE=off."""
        if self.verifier is None:
            return None
        try:
            return self.verifier.verify(auth.bearer_token(request.headers.get("Authorization")))
        except auth.InvalidToken as exc:
            return _answered("unauthenticated", answers.WSGI.unauthorized(exc))
        except auth.KeysUnavailable as exc:
            log(self.logger, logging.WARNING, "issuer keys unavailable", error=str(exc))
            return _answered(
                "auth_unavailable",
                answers.WSGI.unavailable("sign-in temporarily unavailable; retry later", self.settings),
            )

    def list_purchases(self, request: Request) -> Response:
        # Who is calling comes first: an unauthenticated client learns nothing about parameters.
        principal = self.caller(request)
        if isinstance(principal, Response):
            return principal
        user_id = None
        try:
            user_id, limit = _user_id(request), _limit(_single_param(request.args, "limit"))
            if principal is not None and not auth.may_read(principal, user_id):
                return _answered(
                    "forbidden",
                    answers.WSGI.forbidden("a token may read only its own userId's purchases", auth.READ_ANY_SCOPE),
                )
            before = _single_param(request.args, "before")
            if before is not None:
                storage.decode_cursor(before)
            with QUERY_LATENCY.time():
                documents = self.store.find_user_purchases(user_id, limit, before)
        except ValidationError as exc:
            return _answered("invalid", answers.WSGI.invalid(exc))
        except storage.InvalidCursor as exc:
            return _answered("invalid", answers.WSGI.error(400, str(exc), "before"))
        except PyMongoError as exc:
            log(self.logger, logging.WARNING, "database unavailable", userId=user_id, error=type(exc).__name__)
            return _answered(
                "db_unavailable",
                answers.WSGI.unavailable("purchase history temporarily unavailable; retry later", self.settings),
            )
        response = _answered("ok", answers.WSGI.json([storage.to_api(doc) for doc in documents]))
        if len(documents) == limit:
            # The body stays a plain array (the original API); the next page travels in headers.
            cursor = storage.encode_cursor(documents[-1])
            response.headers["X-Next-Cursor"] = cursor
            response.headers["Link"] = _next_page_link(request, user_id, limit, cursor)
        return response


# gunicorn refuses a header field over 8190 bytes itself, with an HTML 431; an oversized
# Authorization header must reach the verifier and get the API's JSON 401 (AUTH_MAX_TOKEN_CHARS).
# Set before functions-framework builds its gunicorn config, i.e. while this module loads.
gunicorn.config.LimitRequestFieldSize.default = 32768

# Read at import, so a bad variable fails the server's start rather than every request.
SETTINGS = config.settings()
function = PerProcess(lambda: History(SETTINGS))
# Flask takes error handlers only while the app is made, i.e. while this module loads.
answers.install_json_errors(functions_framework.errorhandler, get_logger("history", SETTINGS))


@functions_framework.http
def history(request: Request) -> Response:
    return function.get().handle(request)
