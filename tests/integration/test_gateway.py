"""The local gateway (Envoy, configured by devstack/gateway from routes.json) on its own, in
front of two recording backends: routes per path element as the Ingress does, forwards
requests unchanged but for hop-by-hop headers, keeps upstream connections alive, and answers
what it refuses or cannot reach as JSON. Through the real functions it is tested in
test_http_contract.py and test_hostile_input.py."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from http_cases import ROUTED_PATHS
from support import raw_exchange

from devstack import gateway
from devstack.servers import free_port
from devstack.stack import start_gateway

pytestmark = pytest.mark.integration
SLOW_S = 3
CLIENT_TIMEOUT_S = 1


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

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_PROPFIND = _answer

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
def gateway_process(backends, tmp_path_factory):
    process = start_gateway(free_port(), backends["buy"].server_port, backends["history"].server_port,
                            tmp_path_factory.mktemp("gateway"), upstream_timeout_s=SLOW_S - 1,
                            client_timeout_s=CLIENT_TIMEOUT_S)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def port(gateway_process):
    return gateway_process.port


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


def forwarded_headers(seen: dict) -> dict[str, list[str]]:
    forwarded = {}
    for name, value in seen["headers"]:
        forwarded.setdefault(name.lower(), []).append(value)
    return forwarded


@pytest.mark.parametrize("path,backend", ROUTED_PATHS)
def test_routes_per_path_element_like_the_ingress(port, backends, path, backend):
    before = {name: len(server.seen) for name, server in backends.items()}
    status, headers, body = exchange(port, get(path))
    if backend is None:
        assert status == 404 and headers["content-type"] == "application/json"
        assert body == {"error": "no route for this path"}
    else:
        assert status == 201 and body == {"backend": backend}
        assert backends[backend].seen[-1]["target"] == path
    assert sum(len(server.seen) - before[name] for name, server in backends.items()) == (backend is not None)


def test_forwards_the_request_unchanged_but_hop_by_hop(port, backends):
    payload = b'{"username": "\xc3\xa9", "userId": "1", "price": 1}'
    target = "/api/buy/%7Ea%20b?q=%2F1&q=2&empty="
    request = (f"POST {target} HTTP/1.1\r\nHost: purchase.local\r\ncontent-type: application/json\r\n"
               f"Idempotency-Key: k-1\r\nX-Multi: 1\r\nX-Multi: 2\r\nConnection: close, X-Hop\r\nX-Hop: gone\r\n"
               f"Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive\r\n"
               f"X-Forwarded-For: 6.6.6.6\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload
    status, headers, body = exchange(port, request)
    assert status == 201 and body == {"backend": "buy"}
    seen = backends["buy"].seen[-1]
    assert (seen["method"], seen["target"], seen["body"]) == ("POST", target, payload)
    forwarded = forwarded_headers(seen)
    # Envoy appends the client's address to X-Forwarded-For (for a loopback client, the
    # machine's own address) and adds X-Forwarded-Proto; "TE: trailers" is end to end.
    appended = forwarded.pop("x-forwarded-for")
    assert len(appended) == 1 and appended[0].startswith("6.6.6.6,") and appended[0].count(",") == 1
    # Otherwise exactly these: no hop-by-hop header (nor X-Hop, which Connection names),
    # nothing of Envoy's own (no x-envoy-*, x-request-id, User-Agent).
    assert forwarded == {"host": ["purchase.local"], "content-type": ["application/json"],
                         "idempotency-key": ["k-1"], "x-multi": ["1", "2"], "te": ["trailers"],
                         "x-forwarded-proto": ["http"], "content-length": [str(len(payload))]}
    # The answer: the backend's headers (its own Server), without its hop-by-hop ones or Envoy's.
    assert headers["x-backend"] == "buy" and "keep-alive" not in headers
    assert headers["server"].startswith("BaseHTTP") and not any(name.startswith("x-envoy") for name in headers)


def test_answer_headers_repeat_as_the_backend_sent_them(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(get("/api/user/1/purchases"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n")[0].decode().lower()
    assert head.count("set-cookie:") == 2 and "keep-alive:" not in head


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"])
def test_every_method_is_forwarded(port, backends, method):
    """What a method means is the function's to say (it answers 405 + Allow), as behind the Ingress."""
    status, headers, _ = exchange(port, get("/api/user/1/purchases", method))
    assert status == 201 and backends["history"].seen[-1]["method"] == method
    if method == "HEAD":
        assert headers["content-length"] == str(len(json.dumps({"backend": "history"})))


def test_a_chunked_body_reaches_the_backend_whole_with_its_length(port, backends):
    request = (b"POST /api/buy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert exchange(port, request)[0] == 201
    seen = backends["buy"].seen[-1]
    forwarded = forwarded_headers(seen)
    assert seen["body"] == b"{}" and forwarded["content-length"] == ["2"] and "transfer-encoding" not in forwarded


def test_upstream_connections_are_kept_alive(port, backends):
    before = len(backends["history"].connections)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        stream = sock.makefile("rb")
        for _ in range(20):
            sock.sendall(b"GET /api/user/1/purchases HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(stream)[0].startswith(b"HTTP/1.1 201")
    assert len(backends["history"].connections) - before <= 1


def test_a_kept_alive_connection_the_backend_closed_is_not_reused(port, backends):
    before = len(backends["history"].seen)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        stream = sock.makefile("rb")
        for path in ("/api/user/drop", "/api/user/1", "/api/user/2"):
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode())
            assert read_answer(stream) == (b"HTTP/1.1 201 Created\r\n", b'{"backend": "history"}')
    assert [s["target"] for s in backends["history"].seen[before:]] == ["/api/user/drop", "/api/user/1", "/api/user/2"]


# Just over the limit: what the client still has to send when the 413 comes fits the socket buffers.
BIG = gateway.MAX_BODY_BYTES + 4096


@pytest.mark.parametrize("request_bytes,status,error", [
    (b"POST /api/buy HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n", 413,
     {"error": "request body too large", "field": "body"}),
    (b"POST /api/buy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + f"{BIG:x}\r\n".encode()
     + b"a" * BIG + b"\r\n0\r\n\r\n", 413, {"error": "request body too large", "field": "body"}),
    (b"POST /api/buy HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}", 408,
     {"error": "request not received in time"}),
    (b"GET /api/buy HTTP/1.1\r\nHost: x\r\n", 408, {"error": "request not received in time"}),
    (b"GET /api/buy HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431,
     {"error": "request header fields too large"}),
    (b"GET /api/buy HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400, {"error": "malformed request: http1.codec_error"}),
    (b"POST /api/buy HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n", 400,
     {"error": "malformed request: http1.codec_error"}),
    (b"CONNECT /api/buy HTTP/1.1\r\nHost: x\r\n\r\n", 400, {"error": "malformed request: http1.invalid_url"}),
    (b"FOO /api/buy HTTP/1.1\r\nHost: x\r\n\r\n", 400, {"error": "malformed request: http1.codec_error"}),
], ids=["content-length too large", "chunked body too large", "stalled body", "stalled head", "headers too large",
        "bad request line", "bad content-length", "connect with a path", "unknown method token"])
def test_refusals_are_json_and_close(port, request_bytes, status, error):
    got, headers, body, elapsed = raw_exchange(port, request_bytes)
    assert got == status and headers["content-type"] == "application/json" and json.loads(body) == error
    assert headers["connection"] == "close"
    assert elapsed < CLIENT_TIMEOUT_S + 2


def test_a_refusal_reaches_a_client_that_keeps_sending(port):
    """The refusal is written before Envoy stops reading; it resets the connection a second
    later (its delayed close) if unread bytes are left, by when the client has the answer."""
    refusal = b'{"error":"malformed request: http1.codec_error"}\n'
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /api/buy HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        time.sleep(0.2)  # the refusal is out and the gateway is closing
        sock.sendall(b"x" * 100_000)
        answer = b""
        while not answer.endswith(refusal):
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and f"content-length: {len(refusal)}".encode() in answer


def test_an_idle_client_connection_is_closed(port):
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S + 3) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
    assert time.monotonic() - started < CLIENT_TIMEOUT_S + 2


def test_slow_backend_is_504_and_down_backend_is_502(port, tmp_path):
    status, headers, body = exchange(port, get("/api/user/slow"))
    assert status == 504 and body == {"error": "history did not answer in time"}
    # A second Envoy beside the first (no hot-restart shared memory between them).
    process = start_gateway(free_port(), free_port(), free_port(), tmp_path)
    try:
        for path, backend in (("/api/buy", "buy"), ("/api/user/1/purchases", "history")):
            status, headers, body = exchange(process.port, get(path))
            assert status == 502 and body == {"error": f"{backend} is unreachable"}
            assert headers["content-type"] == "application/json"
        status, headers, body = exchange(process.port, get("/healthz"))
        assert status == 200 and body == {"status": "ok"} and headers["content-type"] == "application/json"
    finally:
        process.stop()


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address as /proc/net/tcp* writes it, port) of every TCP socket the process listens on."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            inodes.add(os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[").removesuffix("]"))
        except OSError:
            pass
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for fields in (line.split() for line in list(handle)[1:]):
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    address, port = fields[1].split(":")
                    found.add((address, int(port, 16)))
    return found


def test_listens_on_its_port_on_loopback_only_and_nothing_else(gateway_process):
    """No admin interface, no second listener: only 127.0.0.1:<port> (0100007F in /proc)."""
    assert listening_sockets(gateway_process.proc.pid) == {("0100007F", gateway_process.port)}
