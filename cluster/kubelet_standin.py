"""Plays the node for ONE Deployment (persist-purchase): there is no kubelet in the loopback cluster.

It watches the Deployment's ``spec.replicas`` through the API server and keeps that many local
persist_purchase consumer processes running (devstack.stack.start_consumer) against the local
Kafka and FerretDB named by the environment. A consumer that exits is started again, like a
pod with restartPolicy Always. Scaling down sends SIGTERM to the newest processes (the
consumer finishes its batch, commits and leaves the group), as a kubelet would.

It writes nothing to the API server: Pods created by the ReplicaSet stay Pending, and the
Deployment's status is whatever kube-controller-manager computes. Pods of every other
workload (buy, history, Kafka, MongoDB, the topic Job) do not run at all.

Run by hand:  python -m cluster.kubelet_standin --namespace purchase --deployment persist-purchase
(with KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI / PURCHASES_TOPIC / CONSUMER_GROUP ... set), or
use StandIn from a test. Every change is recorded with its time in ``events`` (and, from the
command line, in a JSON-lines file), which is what the tests and load/scale.sh read.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import ssl
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack import stack as devstack  # noqa: E402
from devstack.servers import free_port  # noqa: E402


class Api:
    """The few API-server calls the stand-in needs, over stdlib HTTPS with a client certificate."""

    def __init__(self, server: str, ca: Path, cert: Path, key: Path):
        url = urlparse(server)
        self.host, self.port = url.hostname, url.port or 443
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.ctx.load_cert_chain(str(cert), str(key))

    @classmethod
    def from_cluster(cls) -> "Api":
        from . import control
        state = control.read_state()
        if not state or "server" not in state:
            raise RuntimeError("the loopback cluster is not up (make cluster-up)")
        return cls(state["server"], control.PKI / "ca.crt", control.PKI / "admin.crt", control.PKI / "admin.key")

    def _conn(self, timeout_s: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout_s)

    def get(self, path: str, timeout_s: float = 10) -> tuple[int, dict]:
        conn = self._conn(timeout_s)
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def watch(self, path: str, params: dict, stop: threading.Event, timeout_s: int = 10):
        """Yield watch events until the server ends the watch (timeoutSeconds) or stop is set."""
        query = urlencode(dict(params, watch="true", timeoutSeconds=str(timeout_s), allowWatchBookmarks="true"))
        conn = self._conn(timeout_s + 10)
        try:
            conn.request("GET", f"{path}?{query}", headers={"Accept": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"watch {path}: HTTP {resp.status} {resp.read()[:300]!r}")
            while not stop.is_set():
                line = resp.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


class StandIn:
    def __init__(self, namespace: str, deployment: str, env: dict, log_dir: Path, api: Api | None = None,
                 max_replicas: int = 10, name_prefix: str | None = None, events_file: Path | None = None):
        self.namespace, self.deployment = namespace, deployment
        self.env, self.log_dir = env, Path(log_dir)
        self.api = api or Api.from_cluster()
        self.max_replicas = max_replicas
        self.prefix = name_prefix or deployment
        self.events_file = events_file
        self.events: list[dict] = []
        self.desired: int | None = None  # None until the Deployment has been seen
        self.processes: list = []
        self._serial = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    # -- recording ---------------------------------------------------------------------------
    def _record(self, what: str, **fields) -> None:
        event = {"t": time.time(), "mono": time.monotonic(), "what": what, **fields}
        self.events.append(event)
        if self.events_file:
            with open(self.events_file, "a") as out:
                out.write(json.dumps(event) + "\n")

    @property
    def running(self) -> int:
        """Consumers started and not yet stopped (one being stopped still counts)."""
        return len(self.processes)

    # -- watching the Deployment -------------------------------------------------------------
    def _set_desired(self, replicas: int | None, why: str) -> None:
        with self._changed:
            if replicas != self.desired:
                self._record("desired", replicas=replicas, previous=self.desired, source=why)
                self.desired = replicas
                self._changed.notify_all()

    def _watch_loop(self) -> None:
        base = f"/apis/apps/v1/namespaces/{self.namespace}/deployments"
        while not self._stop.is_set():
            try:
                status, body = self.api.get(f"{base}/{self.deployment}")
                if status == 404:
                    self._set_desired(0 if self.desired else self.desired, "absent")
                    rv = None
                    status, listing = self.api.get(base)
                    rv = listing.get("metadata", {}).get("resourceVersion")
                elif status != 200:
                    raise RuntimeError(f"GET deployment: HTTP {status}")
                else:
                    self._set_desired(int(body.get("spec", {}).get("replicas", 1)), "get")
                    rv = body["metadata"]["resourceVersion"]
                params = {"fieldSelector": f"metadata.name={self.deployment}"}
                if rv:
                    params["resourceVersion"] = rv
                for event in self.api.watch(base, params, self._stop):
                    kind, obj = event.get("type"), event.get("object", {})
                    if kind in ("ADDED", "MODIFIED"):
                        self._set_desired(int(obj.get("spec", {}).get("replicas", 1)), "watch")
                    elif kind == "DELETED":
                        self._set_desired(0, "deleted")
                    elif kind == "ERROR":
                        break  # e.g. 410 Gone: list again
            except Exception as exc:  # noqa: BLE001 - keep watching through API-server hiccups
                if self._stop.is_set():
                    return
                self.errors.append(repr(exc))
                self._record("watch-error", error=repr(exc)[:300])
                self._stop.wait(1.0)

    # -- playing the node ----------------------------------------------------------------------
    def _start_one(self) -> None:
        self._serial += 1
        name = f"{self.prefix}-{self._serial}"
        self._record("starting", name=name)
        process = devstack.start_consumer(self.env, free_port(), self.log_dir, name=name)
        self.processes.append(process)
        self._record("started", name=name, pid=process.proc.pid, running=self.running)

    def _stop_one(self) -> None:
        process = self.processes[-1]
        self._record("stopping", name=process.name, pid=process.proc.pid)
        process.stop(timeout_s=30)  # SIGTERM: the consumer commits and leaves the group
        self.processes.remove(process)
        self._record("stopped", name=process.name, code=process.proc.returncode, running=self.running)

    def _reconcile_loop(self) -> None:
        restarts: dict[str, float] = {}
        while not self._stop.is_set():
            with self._changed:
                self._changed.wait(timeout=1.0)
                desired = self.desired
            for process in list(self.processes):
                if process.proc.poll() is not None:
                    self.processes.remove(process)
                    self._record("exited", name=process.name, code=process.proc.returncode)
                    restarts[process.name] = time.monotonic()
            if desired is None:
                continue
            target = max(0, min(desired, self.max_replicas))
            try:
                while len(self.processes) < target and not self._stop.is_set():
                    # Crash-loop backoff: at most one restart every 5 s.
                    if restarts and time.monotonic() - max(restarts.values()) < 5:
                        break
                    self._start_one()
                while len(self.processes) > target:
                    self._stop_one()
            except Exception as exc:  # noqa: BLE001
                self.errors.append(repr(exc))
                self._record("start-error", error=repr(exc)[:300])
                self._stop.wait(2.0)

    def start(self) -> "StandIn":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._record("standin-start", namespace=self.namespace, deployment=self.deployment)
        for target in (self._watch_loop, self._reconcile_loop):
            thread = threading.Thread(target=target, daemon=True, name=f"standin-{target.__name__}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=60)
        while self.processes:
            self._stop_one()
        self._record("standin-stop")

    def wait_for(self, predicate, timeout_s: float, what: str) -> float:
        """Wait (bounded) until predicate(self) is true; return the monotonic time it became so."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self):
                return time.monotonic()
            time.sleep(0.1)
        raise TimeoutError(f"stand-in: {what} not reached within {timeout_s:.0f}s "
                           f"(desired={self.desired}, running={self.running}, errors={self.errors[-3:]})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.kubelet_standin", description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", default="purchase")
    parser.add_argument("--deployment", default="persist-purchase")
    parser.add_argument("--log-dir", type=Path, default=ROOT / ".run" / "cluster" / "standin")
    parser.add_argument("--events", type=Path, help="append every event as a JSON line to this file")
    parser.add_argument("--max-replicas", type=int, default=10)
    parser.add_argument("--duration", type=float, default=3600, help="stop by itself after this many seconds")
    args = parser.parse_args(argv)

    env = dict(os.environ, HOST="127.0.0.1", PYTHONUNBUFFERED="1")
    standin = StandIn(args.namespace, args.deployment, env, args.log_dir, max_replicas=args.max_replicas,
                      events_file=args.events).start()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"[standin] playing the node for deployment {args.namespace}/{args.deployment}", file=sys.stderr, flush=True)
    done.wait(args.duration)
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
