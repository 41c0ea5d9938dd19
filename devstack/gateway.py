"""Local stand-in for the production ingress: one port, the same routes, two backends.

    /api/buy                       -> buy
    /api/user/... /api/purchases   -> history
    /api/getAllUserBuys/...        -> history

Like the ingress for host purchase.local, it forwards method, path, query, headers and
body unchanged (no rewriting), keeps upstream connections alive per thread, and answers
502/504 as JSON when a backend is down or slow. Whatever it refuses itself (unknown
methods, a malformed Content-Length or request line, a client that stalls) is JSON too.
"""
from __future__ import annotations

import argparse
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Path prefixes as the production Ingress declares them (pathType: Prefix, matched per
# path element); tests/k8s checks that the Ingress has exactly these.
ROUTES = (
    ("/api/buy", "buy"),
    ("/api/user", "history"),
    ("/api/purchases", "history"),
    ("/api/getAllUserBuys", "history"),
)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade"}
MAX_FORWARD_BODY = 2 * 1024 * 1024
UPSTREAM_TIMEOUT_S = 15
# A client that announces a body and stops sending (or idles on a kept-alive connection)
# frees its thread after this long instead of holding it forever.
CLIENT_TIMEOUT_S = 60
FORWARDED_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
ALLOWED = {"buy": "POST", "history": "GET, HEAD"}


def route(path: str) -> str | None:
    for prefix, backend in ROUTES:
        if path == prefix or path.startswith(prefix + "/"):
            return backend
    return None


class BadRequest(ValueError):
    pass


def body_length(values: list[str]) -> int:
    """Content-Length as RFC 9110 allows it: ASCII digits only, one value (repeats must agree)."""
    if not values:
        return 0
    if len({value.strip() for value in values}) != 1:
        raise BadRequest("conflicting Content-Length headers")
    value = values[0].strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise BadRequest("Content-Length must be a non-negative integer")
    return int(value)


def make_handler(backends: dict[str, tuple[str, int]]):
    local = threading.local()

    class Gateway(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = CLIENT_TIMEOUT_S
        # Headers and body go out in separate writes; with Nagle on, the second waits for
        # the client's delayed ACK (~40 ms per request).
        disable_nagle_algorithm = True

        def _connection(self, backend: str) -> http.client.HTTPConnection:
            pool = getattr(local, "pool", None)
            if pool is None:
                pool = local.pool = {}
            if backend not in pool:
                host, port = backends[backend]
                pool[backend] = http.client.HTTPConnection(host, port, timeout=UPSTREAM_TIMEOUT_S)
            return pool[backend]

        def _reply(self, status: int, body: dict, headers: dict | None = None) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
                self.wfile.write(payload)

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            # http.server's own refusals (bad request line, headers too long, ...) as JSON, not HTML.
            self.close_connection = True
            self._reply(code, {"error": message or self.responses.get(code, ("error",))[0]})

        def __getattr__(self, name: str):
            # Any method without a do_ handler (TRACE, CONNECT, PROPFIND, ...) gets a JSON 405,
            # where http.server would answer 501 in HTML.
            if name.startswith("do_"):
                return self._unknown_method
            raise AttributeError(name)

        def _unknown_method(self) -> None:
            self.close_connection = True  # any body it sent is not read
            backend = route(urlsplit(self.path).path)
            allow = ALLOWED.get(backend, ", ".join(FORWARDED_METHODS))
            self._reply(405, {"error": f"method {self.command} not allowed"}, {"Allow": allow})

        def _forward(self) -> None:
            path = urlsplit(self.path).path
            if path == "/healthz":
                return self._reply(200, {"status": "ok"})
            backend = route(path)
            if backend is None:
                return self._reply(404, {"error": "no route for this path"})
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self.close_connection = True
                return self._reply(411, {"error": "send a Content-Length; chunked bodies are not forwarded"})
            try:
                length = body_length(self.headers.get_all("Content-Length") or [])
            except BadRequest as exc:
                # The body's end is unknown, so the connection cannot carry another request.
                self.close_connection = True
                return self._reply(400, {"error": str(exc), "field": "Content-Length"})
            if length > MAX_FORWARD_BODY:
                self.close_connection = True
                return self._reply(413, {"error": "request body too large", "field": "body"})
            try:
                body = self.rfile.read(length) if length else None
            except TimeoutError:
                self.close_connection = True
                return self._reply(408, {"error": "request body not received in time", "field": "body"})
            if body is not None and len(body) < length:
                self.close_connection = True
                return self._reply(400, {"error": "request body shorter than its Content-Length", "field": "body"})
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["X-Forwarded-For"] = self.client_address[0]
            for attempt in (1, 2):
                connection = self._connection(backend)
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    upstream = connection.getresponse()
                    payload = upstream.read()
                    break
                except TimeoutError:
                    connection.close()
                    return self._reply(504, {"error": f"{backend} did not answer in time"})
                except (ConnectionError, http.client.HTTPException, OSError):
                    connection.close()
                    # A kept-alive connection the backend closed is retried once on a fresh one.
                    if attempt == 2:
                        return self._reply(502, {"error": f"{backend} is unreachable"})
            self.send_response(upstream.status)
            for name, value in upstream.getheaders():
                if name.lower() not in HOP_BY_HOP and name.lower() not in ("content-length", "server", "date"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _forward

        def log_message(self, *args):
            pass

    return Gateway


class GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    # listen() backlog; the default of 5 resets connections under a burst of clients.
    request_queue_size = 1024


def serve(port: int, backends: dict[str, tuple[str, int]], host: str = "127.0.0.1") -> ThreadingHTTPServer:
    return GatewayServer((host, port), make_handler(backends))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--buy", required=True, help="host:port of the buy function")
    parser.add_argument("--history", required=True, help="host:port of the history function")
    args = parser.parse_args()
    backends = {}
    for name in ("buy", "history"):
        host, port = getattr(args, name).rsplit(":", 1)
        backends[name] = (host, int(port))
    serve(args.port, backends).serve_forever()


if __name__ == "__main__":
    main()
