"""What the repository's tooling shares: where things live, how a tool speaks, how it waits,
starts and stops processes, builds into the cache, and talks to a cluster.

Every script, benchmark, load generator, cluster helper and test imports these from here
(KEDA's tests/helper is the model). The product (functions/, lib/) never imports this module.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from purchase_common.retry import Deadline

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
# Outside the clone: a fresh clone (CI's, a second checkout) reuses every download and build.
CACHE_DIR = Path(os.environ.get("PURCHASE_CACHE_DIR")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "purchase-system")
# The upstream Knative and KEDA CRDs the manifests are checked against; read in place, never copied.
CRDS_DIR = Path(os.environ.get("PURCHASE_CRDS_DIR", ROOT.parent / "shared" / "crds"))
GO_BUILD_TIMEOUT_S = 900


def speaker(prefix: str, *, clock: bool = False, stream=sys.stderr) -> Callable[[str], None]:
    """A `say(message)` that prints `[prefix] message` (with the wall time when `clock`)."""
    def say(message: str) -> None:
        stamp = f" {time.strftime('%H:%M:%S')}" if clock else ""
        print(f"[{prefix}{stamp}] {message}", file=stream, flush=True)
    return say


_say = speaker("build")


# --- ports and waits -------------------------------------------------------------------------

def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pick_port(preferred: int | None) -> int:
    """`preferred` when it is free, any free port otherwise."""
    if preferred and port_is_free(preferred):
        return preferred
    return free_port()


def poll_until(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.1,
               what: str = "condition") -> T:
    """Call predicate until it returns something truthy and return that; TimeoutError (naming
    `what` and the last value) after timeout_s."""
    deadline = Deadline(timeout_s)
    last = None
    while not deadline.passed():
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not reached within {timeout_s}s (last value: {last!r})")


def log_tail(log: Path | None, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log and log.exists() else ""


def wait_started(probe: Callable[[], str | None], timeout_s: float, proc: subprocess.Popen | None = None,
                 what: str = "server", log: Path | None = None, interval_s: float = 0.3) -> None:
    """Until probe() returns None (ready; otherwise it returns why not). RuntimeError with the
    log's tail as soon as `proc` exits, TimeoutError with the last reason after timeout_s."""
    deadline = Deadline(timeout_s)
    reason = "not tried"
    while not deadline.passed():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}"
                               + (f"; log {log}:\n{log_tail(log)}" if log else ""))
        reason = probe()
        if reason is None:
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready within {timeout_s:.0f}s ({reason})" + (f"; log {log}" if log else ""))


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None, what: str = "server",
                  log: Path | None = None) -> None:
    """Until something accepts connections on 127.0.0.1:port."""
    def probe() -> str | None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return None
        except OSError as exc:
            return f"127.0.0.1:{port}: {exc}"
    wait_started(probe, timeout_s, proc, what, log, interval_s=0.1)


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None, what: str = "server",
              log: Path | None = None, context=None) -> None:
    """Until `url` answers 200 (`context`: the TLS context for https)."""
    def probe() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=3, context=context) as resp:
                return None if resp.status == 200 else f"{url}: HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            return f"{url}: HTTP {exc.code}"
        except OSError as exc:
            return f"{url}: {exc}"
    wait_started(probe, timeout_s, proc, what, log)


# --- commands and processes ------------------------------------------------------------------

def sh(*argv: str, check: bool = True, timeout_s: float = 60, input_text: str | None = None,
       env: dict | None = None, cwd: Path | None = None) -> str:
    """Run a command to completion (bounded) and return its stdout; RuntimeError with the tails
    of its output when it fails and `check` is set."""
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s,
                            input=input_text, env=env, cwd=cwd)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-3000:]}".rstrip())
    return result.stdout


def spawn(name: str, argv: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """argv in the background, its output appended to log. `name` is the caller's label for it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        # A session of its own: it is stopped by PID, and a terminal Ctrl-C reaches only the manager.
        return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (a zombie, or an unreadable PID file's 0, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child still answers kill(0); its state is after the parenthesised name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_pid(pid: int, timeout_s: float = 15, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group, then SIGKILL after a bounded wait."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = Deadline(wait_s)
        while not deadline.passed():
            if (proc.poll() is not None) if proc is not None else not pid_alive(pid):
                return
            time.sleep(0.1)


@dataclass
class Process:
    """A server the tooling started: its name, process, port and log."""
    name: str
    proc: subprocess.Popen
    port: int
    log: Path
    extra: dict = field(default_factory=dict)

    def stop(self, timeout_s: float = 15) -> None:
        stop_pid(self.proc.pid, timeout_s, self.proc)


def serve_until_stopped(stop: Callable[[], None], proc: subprocess.Popen) -> None:
    """A server's foreground command: wait for Ctrl-C, SIGTERM or the server's exit, then stop()."""
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(1) and proc.poll() is None:
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop()


# --- builds cached outside the clone ---------------------------------------------------------

def cached_build(home: Path, product: str, stamp: str, what: str, build: Callable[[Path], Path]) -> Path:
    """home/product, made once by `build(work_dir)` (which returns the path it made); a marker
    holding `stamp` says it is complete, so an interrupted build is redone. Each build has a
    work directory of its own under home, so two clones building at once do not collide."""
    target, marker = home / product, home / ".complete"
    if target.exists() and marker.exists() and marker.read_text().strip() == stamp:
        return target
    _say(f"{what} (first run only)")
    started = time.monotonic()
    home.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=home))
    try:
        made = build(work)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(made, target)
        marker.write_text(stamp + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _say(f"{what}: done in {time.monotonic() - started:.1f}s")
    return target


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on lock_file (created if missing) for the block: two processes
    (CI's background cluster build and the suite's image tests, say) building the same cached
    artifact take turns instead of writing one file at once."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def require_go(name: str) -> None:
    if shutil.which("go") is None:
        raise RuntimeError(f"{name} is built with Go (1.24+; it also builds FerretDB); 'go' is not on PATH")


def go_install(module: str, version: str, name: str, timeout_s: float = GO_BUILD_TIMEOUT_S) -> Path:
    """A Go command built once with `go install module@version` into CACHE_DIR/name-version/name,
    reused by every clone."""
    def build(out: Path) -> Path:
        require_go(name)
        # `go install module@version` takes no -mod flag; GOTOOLCHAIN=local fails at once
        # instead of fetching a newer Go should the module ever ask for one.
        env = dict(os.environ, GOBIN=str(out), GOFLAGS="", CGO_ENABLED="0", GOTOOLCHAIN="local")
        sh("go", "install", "-ldflags=-s -w", f"{module}@{version}", env=env, timeout_s=timeout_s)
        parts = module.split("/")
        # The command is named after the module's last element, a major-version suffix (/v5) left out.
        return out / (parts[-2] if len(parts) > 1 and parts[-1][1:].isdigit() and parts[-1][0] == "v" else parts[-1])

    return cached_build(CACHE_DIR / f"{name}-{version}", name, version,
                        f"building {name} {version} from the Go module proxy", build)


def build_go_program(name: str, source: Path, files: tuple[str, ...]) -> Path:
    """A Go program of this repository (source: its folder, files: all its build inputs),
    built once per version of those files into the cache outside the clone."""
    digest = hashlib.sha256()
    for file in files:
        digest.update((source / file).read_bytes())
    version = digest.hexdigest()[:16]

    def build(out: Path) -> Path:
        require_go(name)
        # GOTOOLCHAIN=local fails at once instead of fetching a newer Go should go.mod ask for one.
        env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly", GOTOOLCHAIN="local")
        sh("go", "build", "-trimpath", "-o", str(out / name), ".", cwd=source, env=env, timeout_s=GO_BUILD_TIMEOUT_S)
        return out / name

    return cached_build(CACHE_DIR / name / version, name, version,
                        f"building {name} with Go (once per version of {source.relative_to(ROOT)})", build)


# A throwaway project whose only job is `mvn dependency:copy-dependencies` of its dependencies.
MAVEN_FETCH_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.purchase</groupId>
  <artifactId>{name}</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""


def apt_install(*packages: str) -> bool:
    """Install Debian packages when running as root where apt-get exists (a fresh machine, as
    .ci/run does); False when this process cannot."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sh("apt-get", "update", "-qq", env=env, timeout_s=600)
    sh("apt-get", "install", "-y", "-qq", *packages, env=env, timeout_s=900)
    return True


def fetch_maven_jars(home: Path, name: str, artifacts, transitive: bool = True, timeout_s: float = 1800) -> Path:
    """Copy (groupId, artifactId, version) jars, with their dependencies unless transitive is
    False, from Maven Central into home/libs."""
    home.mkdir(parents=True, exist_ok=True)
    dependencies = "\n".join(f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
                             f"<version>{v}</version></dependency>" for g, a, v in artifacts)
    (home / "pom.xml").write_text(MAVEN_FETCH_POM.format(name=name, dependencies=dependencies))
    sh("mvn", "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={home / 'libs'}",
       *([] if transitive else ["-DexcludeTransitive=true"]), cwd=home, timeout_s=timeout_s)
    return home / "libs"


# --- a cluster through kubectl ---------------------------------------------------------------

class Kube:
    """kubectl against one cluster (a kubeconfig, or a context of kubectl's own configuration),
    every call bounded, with the reads the tooling repeats."""

    def __init__(self, kubectl: str | Path = "kubectl", kubeconfig: Path | None = None, context: str | None = None,
                 namespace: str | None = None, timeout_s: float = 120, request_timeout_s: float | None = None):
        self.kubectl_path = Path(kubectl)
        self.kubeconfig, self.context, self.namespace = kubeconfig, context, namespace
        self.timeout_s, self.request_timeout_s = timeout_s, request_timeout_s

    def argv(self, *args: str) -> list[str]:
        """The kubectl command line for args (for a caller that runs it itself, e.g. a watch)."""
        argv = [str(self.kubectl_path)]
        if self.kubeconfig:
            argv.append(f"--kubeconfig={self.kubeconfig}")
        if self.context:
            argv.append(f"--context={self.context}")
        if self.request_timeout_s:
            argv.append(f"--request-timeout={self.request_timeout_s:g}s")
        return argv + list(args)

    def run(self, *args: str, input_text: str | None = None, check: bool = True,
            timeout_s: float | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(self.argv(*args), input=input_text, capture_output=True, text=True,
                                timeout=timeout_s or self.timeout_s)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}")
        return result

    def _scope(self, namespace: str | None) -> list[str]:
        namespace = namespace or self.namespace
        return [f"--namespace={namespace}"] if namespace else []

    def read(self, *args: str, namespace: str | None = None) -> dict:
        """`kubectl <args> -o json`, parsed; RuntimeError with kubectl's last line when it fails."""
        result = self.run(*args, *self._scope(namespace), "-o", "json", check=False)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"kubectl exited {result.returncode}")
        return json.loads(result.stdout)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        """One object, or None when it does not exist."""
        try:
            return self.read("get", kind, name, namespace=namespace)
        except RuntimeError as exc:
            if "NotFound" in str(exc) or "not found" in str(exc):
                return None
            raise

    def items(self, kind: str, selector: str | None = None, namespace: str | None = None) -> list[dict]:
        return self.read("get", kind, *([f"--selector={selector}"] if selector else []), namespace=namespace)["items"]

    def apply(self, documents: list[dict]) -> str:
        import yaml

        return self.run("apply", "-f", "-", input_text=yaml.safe_dump_all(documents, sort_keys=False)).stdout

    @staticmethod
    def condition(obj: dict | None, kind: str) -> str | None:
        """The status ("True", "False", "Unknown") of one of an object's conditions, None if absent."""
        for cond in (obj or {}).get("status", {}).get("conditions", []) or []:
            if cond.get("type") == kind:
                return cond.get("status")
        return None
