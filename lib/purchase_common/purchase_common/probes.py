"""/healthz, /readyz and /metrics for every function: one tiny WSGI app.

The HTTP functions hand these paths to it from their entry point; the consumer, which has
no HTTP entry point, serves it on HOST:HEALTH_PORT with ``serve``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

PATHS = ("/healthz", "/readyz", "/metrics")
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def app(alive: Callable[[], bool] = lambda: True, ready: Callable[[], dict[str, bool]] = dict) -> WsgiApp:
    """``alive`` answers liveness; ``ready`` names each dependency that gates readiness
    (``{"mongodb": False}`` -> 503); an empty dict means serving is all readiness takes."""

    def probe(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO", "").rstrip("/")
        content_type = "application/json"
        payload: bytes | dict[str, Any]
        if path == "/metrics":
            status, payload, content_type = 200, generate_latest(), CONTENT_TYPE_LATEST
        elif path == "/healthz":
            ok = alive()
            status, payload = (200, {"status": "ok"}) if ok else (503, {"status": "stalled"})
        elif path == "/readyz":
            checks: dict[str, Any] = ready()
            status, payload = (200 if all(checks.values()) else 503), checks
        else:
            status, payload = 404, {"error": "not found"}
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
        start_response(f"{status} {reason}", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    return probe


def call(probe_app: WsgiApp, path: str) -> tuple[int, dict[str, str], bytes]:
    """Ask the probe app in process (an HTTP function's own server serves the path):
    status, headers, body."""
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer.update(status=int(status.split()[0]), headers=dict(headers))

    body = b"".join(probe_app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, start_response))
    return answer["status"], answer["headers"], body


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck probe never holds the process at exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:  # probes every few seconds would drown the JSON logs
        pass


def serve(wsgi_app: WsgiApp, host: str, port: int) -> WSGIServer:
    """Serve in a daemon thread; ``shutdown()`` the returned server to stop."""
    server = make_server(host, port, wsgi_app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server
