"""The trace backend of local runs and tests: Zipkin's server (io.zipkin:zipkin-server, the
`exec` jar: collector, API and UI in one), from Maven Central.

It runs on the installed Java 17, from one jar cached outside the clone (tools.common.CACHE_DIR),
with in-memory storage, on 127.0.0.1 only and a free port, and is stopped by PID like every other
server of the stack. The functions export to it with OpenTelemetry's Zipkin JSON exporter
(`trace_env`); `make trace ID=<event id>` (tools/trace.py) reads a purchase back from its API.

    python -m devstack.zipkin fetch         # the jar, once
    python -m devstack.zipkin serve DIR     # a server until Ctrl-C
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tools.common import (
    CACHE_DIR,
    Process,
    cached_build,
    free_port,
    serve_until_stopped,
    sh,
    spawn,
    speaker,
    wait_http,
)

VERSION = "3.6.1"
ARTIFACT = f"io.zipkin:zipkin-server:{VERSION}:jar:exec"
# A JVM on a busy two-core machine: Spring Boot and Armeria take a while before the first answer.
START_TIMEOUT_S = 120.0
FETCH_TIMEOUT_S = 1800
HEAP = "256m"
# In-memory storage drops the oldest traces beyond this many spans, so a long test session or a
# load run keeps the heap bounded (Zipkin's default of 500000 would not fit HEAP).
MAX_SPANS = 100_000
# What Zipkin reads from its environment is set here alone: the stack's own KAFKA_BOOTSTRAP_SERVERS
# (or RABBIT_URI, ES_HOSTS, ...) in ours would switch on its collectors or storage for those.
INHERITED_ENV = ("PATH", "HOME", "LANG", "TMPDIR", "JAVA_HOME")

say = speaker("zipkin")


def fetch() -> Path:
    """The server's executable jar, fetched from Maven Central once."""
    if shutil.which("java") is None or shutil.which("mvn") is None:
        raise RuntimeError("Zipkin's server needs 'java' (17+) and 'mvn' on PATH")

    def build(work: Path) -> Path:
        # No project: dependency:copy takes the one artifact (its classifier included) by coordinate.
        sh("mvn", "-q", "-B", "dependency:copy", f"-Dartifact={ARTIFACT}", f"-DoutputDirectory={work}",
           cwd=work, timeout_s=FETCH_TIMEOUT_S)
        return work / f"zipkin-server-{VERSION}-exec.jar"

    return cached_build(CACHE_DIR / f"zipkin-{VERSION}", "zipkin-server.jar", VERSION,
                        f"fetching Zipkin {VERSION} from Maven Central", build)


def trace_env(base_url: str) -> dict[str, str]:
    """The OTEL_* variables that make a function export its spans to the Zipkin at base_url."""
    return {"OTEL_TRACES_EXPORTER": "zipkin_json", "OTEL_EXPORTER_ZIPKIN_ENDPOINT": f"{base_url}/api/v2/spans"}


@dataclass
class Zipkin:
    """A Zipkin server this tooling started: where its API and UI are, and its process."""
    process: Process

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.process.port}"

    @property
    def ui_url(self) -> str:
        return f"{self.base_url}/zipkin/"

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until its health check answers (its storage is up and it takes spans); stopped on failure."""
        try:
            wait_http(f"{self.base_url}/health", timeout_s, self.process.proc, "Zipkin", self.process.log)
        except BaseException:
            self.stop(5)
            raise

    def stop(self, timeout_s: float = 15) -> None:
        self.process.stop(timeout_s)


def command(jar: Path, port: int) -> list[str]:
    # Armeria's port list is replaced as a whole by the command line, so every field of the one
    # port is given: the address (127.0.0.1 rather than every interface), the port, the protocol.
    return ["java", f"-Xmx{HEAP}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
            "-jar", str(jar), "--armeria.ports[0].ip=127.0.0.1", f"--armeria.ports[0].port={port}",
            "--armeria.ports[0].protocols[0]=http", "--logging.level.root=WARN",
            "--logging.level.com.linecorp.armeria.server.Server=INFO"]


def start(data_dir: Path, port: int | None = None, wait: bool = True,
          timeout_s: float = START_TIMEOUT_S) -> Zipkin:
    """Zipkin on 127.0.0.1:port (a free one by default). wait=False returns once the JVM is
    started, so the caller can start other servers meanwhile and call wait_ready() later."""
    jar = fetch()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env.update(STORAGE_TYPE="mem", MEM_MAX_SPANS=str(MAX_SPANS), SELF_TRACING_ENABLED="false",
               COLLECTOR_SCRIBE_ENABLED="false")
    log = data_dir / "zipkin.log"
    proc = spawn("zipkin", command(jar, port), log, env=env, cwd=data_dir)
    zipkin = Zipkin(Process("zipkin", proc, port, log))
    if wait:
        zipkin.wait_ready(timeout_s)
    return zipkin


def rss_mb(pid: int) -> float:
    """Resident memory of a process (MB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.zipkin", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch the jar from Maven Central (once)")
    serve = commands.add_parser("serve", help="run a server until Ctrl-C; prints its start time and memory")
    serve.add_argument("data_dir", type=Path)
    serve.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(fetch())
        return 0
    started = time.monotonic()
    zipkin = start(args.data_dir, args.port)
    say(f"UI {zipkin.ui_url}, spans to {trace_env(zipkin.base_url)['OTEL_EXPORTER_ZIPKIN_ENDPOINT']}; "
        f"ready {time.monotonic() - started:.1f}s after start, RSS {rss_mb(zipkin.process.proc.pid):.0f} MB; "
        "Ctrl-C stops it")
    serve_until_stopped(zipkin.stop, zipkin.process.proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
