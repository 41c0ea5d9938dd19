"""Reading the running cluster: kubectl with the few reads every caller repeats, Knative
Revisions reached through the node's ingress as any client reaches them, and a watch that timestamps each
step of a pod's start as it happens (the API's timestamps have one-second resolution).

Used by tests/cluster (through clusterlib) and by `make bench-node` (bench/node.py).
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tools import common

from .node import NODE_IP

NAMESPACE = "purchase"
CONSUMER = "persist-purchase"


def parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class Kube(common.Kube):
    """The cluster's kubectl (tools.common.Kube, from `python -m cluster`'s state) in the
    `purchase` namespace, plus the reads of the consumer the tests and benches repeat."""

    def __init__(self, state: dict):
        super().__init__(state["kubectl"], Path(state["kubeconfig"]), namespace=NAMESPACE)
        self.state = state

    def replicas(self, name: str = CONSUMER) -> int | None:
        obj = self.get("deployment", name)
        return None if obj is None else int(obj["spec"].get("replicas", 1))

    def consumer_pods(self) -> list[dict]:
        return self.items("pods", f"app.kubernetes.io/name={CONSUMER}")

    def running_consumers(self) -> list[dict]:
        return [p for p in self.consumer_pods()
                if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]

    def secret_value(self, name: str, key: str) -> str:
        return base64.b64decode(self.get("secret", name)["data"][key]).decode()


# The node's ingress (k8s/overlays/node/traefik/): the public Service and the host the
# purchase.local Ingresses route, as a client outside the cluster reaches the functions.
INGRESS_NAMESPACE = "traefik"
INGRESS_SERVICE = "traefik"
INGRESS_HOST = "purchase.local"


def ingress_url(kube: Kube) -> str:
    """http://<node address>:<NodePort> of the ingress's public Service (kube-proxy binds NodePorts
    to the node's bridge address only: reachable from this machine, nowhere else)."""
    service = kube.get("service", INGRESS_SERVICE, namespace=INGRESS_NAMESPACE)
    if service is None:
        raise RuntimeError(f"no Service {INGRESS_NAMESPACE}/{INGRESS_SERVICE}: deploy the node overlay first")
    node_port = next(p["nodePort"] for p in service["spec"]["ports"] if p["name"] == "web")
    return f"http://{NODE_IP}:{node_port}"


# The node overlay's trace backend (k8s/overlays/node/zipkin/): Zipkin's API and UI.
TRACE_NAMESPACE = "purchase-trace"
TRACE_SERVICE = "zipkin"


def zipkin_url(kube: Kube) -> str:
    """http://<ClusterIP>:<port> of the node's Zipkin: the host reaches Service addresses (kube-proxy's
    rules, the node's route to them) without CoreDNS, so the URL works in any shell and browser here."""
    service = kube.get("service", TRACE_SERVICE, namespace=TRACE_NAMESPACE)
    if service is None:
        raise RuntimeError(f"no Service {TRACE_NAMESPACE}/{TRACE_SERVICE}: deploy the node overlay first")
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
    return f"http://{service['spec']['clusterIP']}:{port}"


# The node overlay's OpenID Connect provider (k8s/overlays/node/oidc/), by the Service name that is
# also its issuer; the host reaches it through CoreDNS (`python -m cluster run`), as the tests do.
NODE_ISSUER = "http://oidc.purchase-auth.svc.cluster.local:8080/purchase"
# The subject of the token the node's tests, benches and soak send: a trusted client that buys and
# reads for any user (their users are made up per test). Tests of the rules ask for their own tokens.
NODE_CLIENT = "node-client"
CLIENT_SCOPES = ("purchases:read:any", "purchases:write:any")
# The provider's tokens last a day; one is reused for an hour.
CLIENT_TOKEN_REUSE_S = 3600
_client_token: tuple[float, str] | None = None
_client_token_lock = threading.Lock()


def client_token() -> str:
    """The node client's access token from the provider pod, fetched once an hour."""
    global _client_token
    from devstack import oidc
    with _client_token_lock:
        if _client_token is None or time.monotonic() - _client_token[0] > CLIENT_TOKEN_REUSE_S:
            _client_token = (time.monotonic(), oidc.request_token(f"{NODE_ISSUER}/token", NODE_CLIENT, CLIENT_SCOPES))
        return _client_token[1]


@dataclass(frozen=True)
class Revision:
    """The latest Ready Revision of a Knative Service, reached as a client reaches it: through the
    ingress, Host purchase.local (Traefik -> Knative's KIngress route -> the Revision's pods, or the
    activator while it has none). Knative's routing headers are the ingress's to add, not ours."""
    name: str
    url: str
    host: str = INGRESS_HOST

    @property
    def headers(self) -> dict:
        """For `requests`, which sends this Host instead of the URL's, and a bearer token: the node
        overlay requires them (AUTH_MODE=jwt)."""
        return {"Host": self.host, "Authorization": f"Bearer {client_token()}"}

    def pods(self, kube: Kube) -> list[dict]:
        return [p for p in kube.items("pods", f"serving.knative.dev/revision={self.name}")
                if not p["metadata"].get("deletionTimestamp")]


def revision_ready(kube: Kube, service: str) -> Revision | None:
    """The latest Ready Revision of a Knative Service once the Service is Ready, which includes its
    Route: the ingress has configured the KIngress and traffic reaches the Revision through it."""
    ksvc = kube.get("service.serving.knative.dev", service)
    name = ((ksvc or {}).get("status") or {}).get("latestReadyRevisionName")
    if not name or kube.condition(ksvc, "Ready") != "True" or \
            ksvc["status"].get("observedGeneration") != ksvc["metadata"]["generation"]:
        return None
    return Revision(name, ingress_url(kube))


def pod_steps(pod: dict) -> dict[str, bool]:
    """Which of a pod's start steps it has reached: created, scheduled, a container running, Ready."""
    status = pod.get("status") or {}
    conditions = {c["type"]: c.get("status") for c in status.get("conditions", []) or []}
    running = any((s.get("state") or {}).get("running") for s in status.get("containerStatuses", []) or [])
    return {"created": True, "scheduled": conditions.get("PodScheduled") == "True",
            "started": running, "ready": conditions.get("Ready") == "True"}


@dataclass
class StepWatch:
    """`kubectl get <kind> --watch` on a label selector (or one object by name), noting the
    monotonic time at which each object first reached each of its steps (by default a pod's:
    pod_steps). Start it before the request it should time."""
    kube: Kube
    selector: str | None = None
    kind: str = "pods"
    name: str | None = None
    steps: Callable[[dict], dict[str, bool]] = pod_steps
    seen: dict[str, dict[str, float]] = field(default_factory=dict)
    _proc: subprocess.Popen | None = None
    _thread: threading.Thread | None = None

    def __enter__(self) -> StepWatch:
        argv = self.kube.argv("get", self.kind, f"--namespace={NAMESPACE}", "--watch", "--output-watch-events",
                              "-o", "json")
        if self.selector:
            argv.append(f"--selector={self.selector}")
        if self.name:
            argv.append(f"--field-selector=metadata.name={self.name}")
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        decoder, buffer = json.JSONDecoder(), ""
        for chunk in iter(lambda: self._proc.stdout.readline(), ""):
            buffer += chunk
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except json.JSONDecodeError:
                    break  # an object spread over more lines: read on
                buffer = buffer.lstrip()[end:]
                now = time.monotonic()
                obj = event.get("object") or {}
                if event.get("type") == "DELETED" or obj.get("metadata", {}).get("deletionTimestamp"):
                    continue
                steps = self.seen.setdefault(obj["metadata"]["name"], {})
                for step, reached in self.steps(obj).items():
                    if reached:
                        steps.setdefault(step, now)

    def __exit__(self, *exc) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._thread.join(timeout=10)


def node_report(kube: Kube, events: int = 40) -> str:
    """What a failed node test leaves behind to read: the node's pressure conditions and taints,
    every pod that is not Ready (and why, as kubelet says), and the latest Warning events."""
    lines = []
    try:
        for node in kube.read("get", "nodes")["items"]:
            conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            taints = [f"{t['key']}:{t['effect']}" for t in node["spec"].get("taints", []) or []]
            lines.append(f"node {node['metadata']['name']}: {conditions} taints {taints or 'none'}")
        for pod in kube.read("get", "pods", "--all-namespaces")["items"]:
            if kube.condition(pod, "Ready") == "True" or pod["status"].get("phase") == "Succeeded":
                continue
            states = []
            for status in pod["status"].get("containerStatuses", []) or []:
                state = next(iter(status.get("state") or {"unknown": {}}))
                reason = (status.get("state") or {}).get(state, {}).get("reason", "")
                states.append(f"{status['name']}={state}{'/' + reason if reason else ''} "
                              f"restarts {status['restartCount']}")
            unscheduled = next((c.get("message", "") for c in pod["status"].get("conditions", [])
                                if c["type"] == "PodScheduled" and c["status"] != "True"), "")
            deleting = " deleting" if pod["metadata"].get("deletionTimestamp") else ""
            lines.append(f"not Ready: {pod['metadata']['namespace']}/{pod['metadata']['name']} "
                         f"{pod['status'].get('phase')}{deleting} {'; '.join(states)} {unscheduled}".rstrip())
        warnings = kube.read("get", "events", "--all-namespaces", "--field-selector=type=Warning")["items"]
        warnings.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        for event in warnings[-events:]:
            involved = event["involvedObject"]
            lines.append(f"{event.get('lastTimestamp') or event.get('eventTime')} {event['reason']} "
                         f"{involved.get('namespace', '')}/{involved['kind']}/{involved['name']} "
                         f"x{event.get('count', 1)}: {event.get('message', '').strip()[:300]}")
    except (RuntimeError, subprocess.TimeoutExpired, KeyError) as exc:
        lines.append(f"(the node could not be read: {type(exc).__name__}: {exc})")
    return "\n".join(lines)
