"""The local gateway (devstack/gateway, a Go program) on its own, in front of two recording
backends: routes as devstack.gateway.route says, forwards requests byte for byte, keeps
upstream connections alive, and answers what it refuses or cannot reach as JSON.
Through the real functions it is tested in test_http_contract.py and test_hostile_input.py."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devstack import gateway
from devstack.servers import free_port
from devstack.stack import start_gateway
from support import raw_exchange

pytestmark = pytest.mark.integration
SLOW_S = 3


class Backend(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str):
        self.name, self.seen, self.connections = name, [], set()

        class Recorder(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.seen.append({"method": self.command, "target": self.path, "headers": self.headers.items(),
                                    "body": body})
                server.connections.add(self.client_address)
                if "slow" in self.path:
                    time.sleep(SLOW_S)
                # Closes after answering without saying so, like a backend whose keep-alive ran out.
                self.close_connection = "drop" in self.path
                payload = json.dumps({"backend": server.name}).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Backend", server.name)
                self.send_header("Set-Cookie", "a=1")
                self.send_header("Set-Cookie", "b=2")
                self.send_header("Keep-Alive", "timeout=5")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

            def log_message(self, *args):
                pass

        server = self
        super().__init__(("127.0.0.1", 0), Recorder)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def backends():
    servers = {name: Backend(name) for name in ("buy", "history")}
    yield servers
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def port(backends, tmp_path_factory):
    process = start_gateway(free_port(), backends["buy"].server_port, backends["history"].server_port,
                            tmp_path_factory.mktemp("gateway"), extra=("--upstream-timeout", f"{SLOW_S - 1}s",
                                                                        "--client-timeout", "1s"))
    yield process.port
    process.stop()


def exchange(port: int, request: bytes):
    status, headers, body, _ = raw_exchange(port, request)
    return status, headers, (json.loads(body) if body else None)


def read_answer(stream) -> tuple[bytes, bytes]:
    """One answer from a kept-alive connection: its status line and body."""
    status, length = stream.readline(), 0
    while (line := stream.readline()) != b"\r\n":
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status, stream.read(length)


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: purchase.local\r\nConnection: close\r\n\r\n".encode()


@pytest.mark.parametrize("path", [
    "/api/buy", "/api/buy/", "/api/buy?x=1", "/api/buyer", "/api/user/42/purchases", "/api/user", "/api/users/1",
    "/api/purchases?userId=555", "/api/getAllUserBuys/u-1", "/api/getAllUserBuysX", "/api%2Fbuy", "/", "/nope",
])
def test_routes_as_devstack_gateway_route_says(port, path):
    status, headers, body = exchange(port, get(path))
    expected = gateway.route(path.split("?")[0])
    if expected is None:
        assert status == 404 and headers["content-type"] == "application/json" and body["error"]
    else:
        assert status == 201 and body == {"backend": expected}


def test_forwards_the_request_unchanged_but_hop_by_hop(port, backends):
    payload = b'{"username": "\xc3\xa9", "userId": "1", "price": 1}'
    target = "/api/buy/%7Ea%20b?q=%2F1&q=2&empty="
    request = (f"POST {target} HTTP/1.1\r\nHost: purchase.local\r\ncontent-type: application/json\r\n"
               f"Idempotency-Key: k-1\r\nX-Multi: 1\r\nX-Multi: 2\r\nConnection: close, X-Hop\r\nX-Hop: gone\r\n"
               f"Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Forwarded-For: 6.6.6.6\r\n"
               f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
    status, headers, body = exchange(port, request)
    assert status == 201 and body == {"backend": "buy"}
    seen = backends["buy"].seen[-1]
    assert (seen["method"], seen["target"], seen["body"]) == ("POST", target, payload)
    forwarded = {}
    for name, value in seen["headers"]:
        forwarded.setdefault(name.lower(), []).append(value)
    # Exactly these: no hop-by-hop header, nothing of the gateway's own (no Accept-Encoding,
    # User-Agent), the client's X-Forwarded-For replaced.
    assert forwarded == {"host": ["purchase.local"], "content-type": ["application/json"],
                         "idempotency-key": ["k-1"], "x-multi": ["1", "2"], "x-forwarded-for": ["127.0.0.1"],
                         "content-length": [str(len(payload))]}
    # The answer: the backend's headers (both cookies), without its hop-by-hop ones.
    assert headers["x-backend"] == "buy" and "keep-alive" not in headers


def test_answer_headers_repeat_as_the_backend_sent_them(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(get("/api/user/1/purchases"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n")[0].decode().lower()
    assert head.count("set-cookie:") == 2 and "keep-alive:" not in head


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_every_forwarded_method(port, backends, method):
    status, headers, _ = exchange(port, get("/api/user/1/purchases", method))
    assert status == 201 and backends["history"].seen[-1]["method"] == method
    if method == "HEAD":
        assert headers["content-length"] == str(len(json.dumps({"backend": "history"})))


def test_upstream_connections_are_kept_alive(port, backends):
    before = len(backends["history"].connections)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        stream = sock.makefile("rb")
        for _ in range(20):
            sock.sendall(b"GET /api/user/1/purchases HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(stream)[0].startswith(b"HTTP/1.1 201")
    assert len(backends["history"].connections) - before <= 1


def test_a_kept_alive_connection_the_backend_closed_is_retried_on_a_fresh_one(port, backends):
    before = len(backends["history"].seen)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        stream = sock.makefile("rb")
        for path in ("/api/user/drop", "/api/user/1", "/api/user/2"):
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode())
            assert read_answer(stream) == (b"HTTP/1.1 201 Created\r\n", b'{"backend": "history"}')
    assert [s["target"] for s in backends["history"].seen[before:]] == ["/api/user/drop", "/api/user/1", "/api/user/2"]


@pytest.mark.parametrize("request_bytes,status,field", [
    (b"TRACE /api/buy HTTP/1.1\r\nHost: x\r\n\r\n", 405, None),
    (b"POST /api/buy HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n", 413, "body"),
    (b"POST /api/buy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, None),
    (b"POST /api/buy HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}", 408, "body"),
    (b"GET /api/buy HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431, None),
    (b"GET /api/buy HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400, None),
    (b"POST /api/buy HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n", 400, "Content-Length"),
])
def test_refusals_are_json_and_close(port, request_bytes, status, field):
    got, headers, body = exchange(port, request_bytes)
    assert got == status and headers["content-type"] == "application/json" and body["error"]
    assert body.get("field") == field and headers["connection"] == "close"
    if status == 405:
        assert headers["allow"] == "POST"


def test_a_refusal_survives_what_the_client_still_sends(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /api/buy HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        time.sleep(0.2)  # the refusal is out and the gateway is closing
        sock.sendall(b"x" * 100_000)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.endswith(b'"field":"Content-Length"}')


def test_slow_backend_is_504_and_down_backend_is_502(port, tmp_path):
    status, _, body = exchange(port, get("/api/user/slow"))
    assert status == 504 and body == {"error": "history did not answer in time"}
    process = start_gateway(free_port(), free_port(), free_port(), tmp_path)
    try:
        status, _, body = exchange(process.port, get("/api/buy"))
        assert status == 502 and body == {"error": "buy is unreachable"}
        status, _, body = exchange(process.port, get("/healthz"))
        assert status == 200 and body == {"status": "ok"}
    finally:
        process.stop()


def test_listens_on_loopback_only(port):
    addresses = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    for address in addresses - {"127.0.0.1"}:
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=1).close()
