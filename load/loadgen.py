"""Bounded purchase load: `hey` when installed, else a Python generator (threads, keep-alive).

Every run stops by itself: after `requests` requests or `duration_s` seconds, whichever comes
first, with a timeout on every request. Each request is recorded as
(start offset s, latency s, HTTP status or 0 for a transport error), so the caller can build a
per-second timeline and percentiles the same way for every generator.
"""
from __future__ import annotations

import csv
import io
import ipaddress
import json
import math
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_DURATION_S = 3600


@dataclass
class Target:
    url: str
    host_header: str | None = None
    path: str = "/api/buy"
    # Sent with every request (scale.sh --header).
    headers: dict = field(default_factory=dict)

    def __post_init__(self):
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"target URL must be http(s)://host[:port], got {self.url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        base = parts.path.rstrip("/")
        self.request_path = (base + self.path) if not base.endswith(self.path) else base
        self.header_host = self.host_header or (parts.netloc if parts.port else parts.hostname)

    @property
    def full_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.request_path}"

    def is_loopback(self) -> bool:
        try:
            infos = socket.getaddrinfo(self.host, self.port, proto=socket.IPPROTO_TCP)
        except socket.gaierror:
            return False
        return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


@dataclass
class LoadResult:
    tool: str
    started_at: float                      # time.monotonic() at start
    wall_s: float = 0.0
    records: list = field(default_factory=list)  # (start offset s, latency s, status; 0 = transport error)
    note: str = ""

    def counts(self) -> dict:
        statuses: dict = {}
        for _, _, status in self.records:
            statuses[status] = statuses.get(status, 0) + 1
        accepted = sum(n for s, n in statuses.items() if 200 <= s < 300)
        return {"sent": len(self.records), "accepted": accepted, "failed": len(self.records) - accepted,
                "statuses": {str(k): v for k, v in sorted(statuses.items())}}


def purchase_body(index: int, users: int) -> bytes:
    return json.dumps({"username": f"load user {index % users}", "userId": f"load-{index % users}",
                       "price": round(1 + (index % 9999) / 100, 2)}, separators=(",", ":")).encode()


class HttpConnection:
    """A minimal keep-alive HTTP/1.1 client: far cheaper per request than http.client."""

    def __init__(self, target: Target, timeout_s: float):
        self.target, self.timeout_s = target, timeout_s
        self.sock: socket.socket | None = None
        self.buffer = b""

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
                self.buffer = b""

    def _connect(self) -> None:
        sock = socket.create_connection((self.target.host, self.target.port), timeout=self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.target.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.target.host)
        self.sock = sock

    def _read_more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def request(self, raw: bytes) -> tuple[int, bytes]:
        status, _, body = self.request_with_headers(raw)
        return status, body

    def request_with_headers(self, raw: bytes) -> tuple[int, dict, bytes]:
        """Send one request; the status, the headers (names lower-cased) and the body."""
        if self.sock is None:
            self._connect()
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buffer:
            self._read_more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(self.buffer) < length:
                self._read_more()
            body, self.buffer = self.buffer[:length], self.buffer[length:]
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked()
        else:  # body until close
            try:
                while True:
                    self._read_more()
            except ConnectionError:
                pass
            body, self.buffer = self.buffer, b""
            self.close()
            return status, headers, body
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buffer:
                self._read_more()
            size_line, self.buffer = self.buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(self.buffer) < size + 2:
                self._read_more()
            body += self.buffer[:size]
            self.buffer = self.buffer[size + 2:]
            if size == 0:
                return body


def build_request(target: Target, body: bytes, extra_headers: dict | None = None) -> bytes:
    headers = [f"POST {target.request_path} HTTP/1.1", f"Host: {target.header_host}",
               "Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: keep-alive"]
    headers += [f"{k}: {v}" for k, v in {**target.headers, **(extra_headers or {})}.items()]
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body


class PythonLoad:
    """`concurrency` threads, one keep-alive connection each; optional pacing to `rate` req/s."""

    tool = "python"

    def __init__(self, target: Target, requests: int, concurrency: int, duration_s: float,
                 timeout_s: float = 10.0, rate: float | None = None, users: int = 1000,
                 on_response=None, body=None):
        self.target, self.requests, self.concurrency = target, requests, concurrency
        self.duration_s = min(duration_s, MAX_DURATION_S)
        self.timeout_s, self.rate, self.users = timeout_s, rate, users
        self.on_response = on_response  # called (index, status, body, sent_at) from worker threads
        self.body = body or (lambda index: purchase_body(index, self.users))  # index -> request body bytes
        self.result: LoadResult | None = None
        self.stop = threading.Event()
        self._next = 0
        self._lock = threading.Lock()

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.requests:
                return None
            index = self._next
            self._next += 1
            return index

    def _worker(self, start: float, deadline: float, records: list) -> None:
        conn = HttpConnection(self.target, self.timeout_s)
        try:
            while not self.stop.is_set():
                index = self._take()
                if index is None:
                    return
                if self.rate:
                    slot = start + index / self.rate
                    delay = slot - time.monotonic()
                    if delay > 0:
                        if slot >= deadline:
                            return
                        time.sleep(delay)
                if time.monotonic() >= deadline:
                    return
                raw = build_request(self.target, self.body(index))
                sent = time.monotonic()
                status, body = 0, b""
                try:
                    status, body = self.request_with_one_retry(conn, raw)
                except (OSError, ValueError, IndexError):
                    conn.close()
                records.append((sent - start, time.monotonic() - sent, status))
                if self.on_response is not None:
                    self.on_response(index, status, body, sent)
        finally:
            conn.close()

    @staticmethod
    def request_with_one_retry(conn: HttpConnection, raw: bytes) -> tuple[int, bytes]:
        # A keep-alive connection the server closed while idle fails on first use: reconnect once.
        reused = conn.sock is not None
        try:
            return conn.request(raw)
        except (ConnectionError, BrokenPipeError):
            conn.close()
            if not reused:
                raise
            return conn.request(raw)

    def run(self) -> LoadResult:
        start = time.monotonic()
        deadline = start + self.duration_s
        result = LoadResult(self.tool, start)
        self.result = result
        threads = [threading.Thread(target=self._worker, args=(start, deadline, result.records), daemon=True,
                                    name=f"load-{i}") for i in range(self.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0) + self.timeout_s + 5)
        self.stop.set()
        result.wall_s = time.monotonic() - start
        return result


class HeyLoad:
    """rakyll/hey: one fixed body, per-request CSV (-o csv) gives the same records."""

    tool = "hey"

    def __init__(self, target: Target, requests: int, concurrency: int, duration_s: float,
                 timeout_s: float = 10.0, rate: float | None = None, users: int = 1000):
        self.target, self.requests, self.concurrency = target, requests, concurrency
        self.duration_s, self.timeout_s, self.rate = min(duration_s, MAX_DURATION_S), timeout_s, rate
        self.result: LoadResult | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("hey") is not None

    def command(self) -> list[str]:
        argv = ["hey", "-n", str(self.requests), "-c", str(self.concurrency), "-m", "POST",
                "-T", "application/json", "-d", purchase_body(0, 1).decode(), "-t", str(max(int(self.timeout_s), 1)),
                "-o", "csv"]
        if self.target.host_header:
            argv += ["-host", self.target.host_header]
        for name, value in self.target.headers.items():
            argv += ["-H", f"{name}: {value}"]
        if self.rate:
            argv += ["-q", f"{max(self.rate / self.concurrency, 0.01):.2f}"]
        return argv + [self.target.full_url]

    def run(self) -> LoadResult:
        start = time.monotonic()
        result = LoadResult(self.tool, start)
        self.result = result
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.PIPE)
            try:
                proc.wait(timeout=self.duration_s)
            except subprocess.TimeoutExpired:
                # hey's -z would drop -n; the duration bound is enforced here instead (SIGINT: hey reports).
                proc.send_signal(2)
                try:
                    proc.wait(timeout=self.timeout_s + 5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
                result.note = f"stopped by the {self.duration_s:.0f}s duration bound"
            result.wall_s = time.monotonic() - start
            out.seek(0)
            text = out.read().decode("utf-8", "replace")
        for row in csv.DictReader(io.StringIO(text)):
            try:
                result.records.append((float(row["offset"]), float(row["response-time"]), int(row["status-code"])))
            except (KeyError, ValueError, TypeError):
                continue
        errors = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
        if not result.records and errors:
            result.note = (result.note + "; " if result.note else "") + errors.strip()[:300]
        return result


def choose(tool: str, target: Target, **kwargs):
    if tool == "hey" or (tool == "auto" and HeyLoad.available()):
        if not HeyLoad.available():
            raise RuntimeError("--tool hey: hey is not on PATH")
        kwargs.pop("on_response", None)
        kwargs.pop("body", None)
        return HeyLoad(target, **kwargs)
    return PythonLoad(target, **kwargs)


def percentiles(values: list[float], points=(50, 95, 99)) -> dict:
    if not values:
        return {f"p{p}": None for p in points}
    ordered = sorted(values)
    result = {}
    for p in points:
        rank = max(math.ceil(p / 100 * len(ordered)), 1)  # nearest-rank
        result[f"p{p}"] = ordered[rank - 1]
    return result
