"""history: a user's purchases, newest first, straight from MongoDB."""
from __future__ import annotations

import logging
import urllib.parse

import functions_framework
from flask import Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pymongo.errors import PyMongoError

from purchase_common import storage
from purchase_common.logs import get_logger, log
from purchase_common.schema import ValidationError, validate_user_id

logger = get_logger("history")
REQUESTS = Counter("history_requests_total", "History requests by outcome", ["outcome"])
QUERY_LATENCY = Histogram(
    "history_query_seconds", "MongoDB query time per history request",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
)

get_collection = storage.shared_collection


def _error(status: int, field: str | None, message: str, outcome: str, headers: dict | None = None) -> Response:
    REQUESTS.labels(outcome=outcome).inc()
    body = {"error": message}
    if field is not None:
        body["field"] = field
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _single_param(args, name: str) -> str | None:
    values = args.getlist(name)
    if len(values) > 1:
        raise ValidationError(name, f"{name} given more than once")
    return values[0] if values else None


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return storage.HISTORY_DEFAULT_LIMIT
    if not raw.isdigit() or len(raw) > 6:
        raise ValidationError("limit", f"limit must be an integer from 1 to {storage.HISTORY_MAX_LIMIT}")
    limit = int(raw)
    if not 1 <= limit <= storage.HISTORY_MAX_LIMIT:
        raise ValidationError("limit", f"limit must be an integer from 1 to {storage.HISTORY_MAX_LIMIT}")
    return limit


def _user_id_from(request) -> str:
    path = request.path  # already percent-decoded by werkzeug
    if path.startswith("/api/user/") and path.endswith("/purchases"):
        raw = path[len("/api/user/"):-len("/purchases")]
    elif path.startswith("/api/getAllUserBuys/"):
        raw = path[len("/api/getAllUserBuys/"):].rstrip("/")
    else:
        raw = _single_param(request.args, "userId")
    return validate_user_id(raw)


def _list_purchases(request) -> Response:
    try:
        user_id = _user_id_from(request)
        limit = _parse_limit(_single_param(request.args, "limit"))
        before = _single_param(request.args, "before")
        if before is not None:
            storage.decode_cursor(before)
    except ValidationError as exc:
        return _error(exc.status, exc.field, exc.message, "invalid")
    except storage.InvalidCursor as exc:
        return _error(400, "before", str(exc), "invalid")
    try:
        with QUERY_LATENCY.time():
            documents = storage.find_user_purchases(get_collection(), user_id, limit, before)
    except PyMongoError as exc:
        log(logger, logging.WARNING, "database unavailable", userId=user_id, error=type(exc).__name__)
        return _error(503, None, "purchase history temporarily unavailable; retry later", "db_unavailable",
                      {"Retry-After": "2"})
    REQUESTS.labels(outcome="ok").inc()
    response = jsonify([storage.to_api(doc) for doc in documents])
    if len(documents) == limit:
        # The body stays a plain array (the original API); the next page travels in headers.
        cursor = storage.encode_cursor(documents[-1])
        query = urllib.parse.urlencode({**{k: v for k, v in request.args.items() if k != "before"}, "before": cursor})
        response.headers["X-Next-Cursor"] = cursor
        response.headers["Link"] = f'<{request.path}?{query}>; rel="next"'
    return response


def _is_history_path(path: str) -> bool:
    return (
        (path.startswith("/api/user/") and path.endswith("/purchases"))
        or path == "/api/purchases"
        or path.startswith("/api/getAllUserBuys/")
    )


@functions_framework.http
def history(request):
    path = request.path
    if _is_history_path(path):
        if request.method not in ("GET", "HEAD"):
            return _error(405, None, "method not allowed; use GET", "method", {"Allow": "GET, HEAD"})
        return _list_purchases(request)
    if path == "/healthz":
        return jsonify({"status": "ok"})
    if path == "/readyz":
        try:
            get_collection().database.client.admin.command("ping")
        except PyMongoError:
            return _error(503, None, "database unreachable", "not_ready")
        return jsonify({"status": "ready"})
    if path == "/metrics":
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
    return _error(404, None, "not found", "not_found")
