"""Once a second: consumer-group lag per partition (from the broker), KEDA's verdict on it, and,
when kubectl reaches a cluster, the persist-purchase replica count and pod phases.

Every broker request and kubectl call carries its own timeout, and the sampling loop ends when
told to or at its deadline, whichever comes first.
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

from kafka.errors import KafkaError
from purchase_common import config

from tools import keda_scaler, lag_reader
from tools.common import Kube

KUBECTL_TIMEOUT_S = 3


@dataclass
class Sample:
    t: float                         # seconds since the run started
    phase: str
    lag_total: int | None = None     # records still to read, all partitions (None: broker unreachable)
    lag_by_partition: dict = field(default_factory=dict)  # partition -> records still to read
    uncommitted: int = 0             # partitions the group never committed (counted from log start)
    keda_lag: int | None = None
    keda_active: bool | None = None
    keda_desired: int | None = None
    replicas: int | None = None      # deployment .status.replicas (None: no cluster)
    ready_replicas: int | None = None
    desired_replicas: int | None = None  # deployment .spec.replicas (what KEDA/HPA set)
    pod_phases: dict = field(default_factory=dict)
    # Knative Service -> its Ready pods (Revisions of that Service, all of them), when watched.
    knative_pods: dict = field(default_factory=dict)
    error: str = ""

    @property
    def drained(self) -> bool:
        return self.lag_total == 0 and all(v == 0 for v in self.lag_by_partition.values())

    @property
    def pods(self) -> int | None:
        if self.replicas is None:
            return None
        return sum(n for phase, n in self.pod_phases.items() if phase != "Terminating")


class DeploymentWatch:
    """One deployment's replicas and pods (and Knative Services' Ready pods) through kubectl, a
    short timeout per call; `reachable` says whether a cluster answered."""

    def __init__(self, namespace: str, deployment: str, context: str | None = None,
                 knative_services: tuple[str, ...] = ()):
        self.namespace, self.deployment, self.context = namespace, deployment, context
        self.kubectl = Kube(context=context, namespace=namespace, timeout_s=KUBECTL_TIMEOUT_S + 2,
                            request_timeout_s=KUBECTL_TIMEOUT_S)
        self.knative_services = knative_services
        self.selector: str | None = None
        self.reason = ""
        self.reachable = self._probe()

    def _kubectl(self, *args: str) -> dict:
        return self.kubectl.read(*args)

    def _probe(self) -> bool:
        if shutil.which("kubectl") is None:
            self.reason = "kubectl is not installed"
            return False
        if not self.context:
            current = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True,
                                     timeout=KUBECTL_TIMEOUT_S + 2)
            if current.returncode != 0 or not current.stdout.strip():
                self.reason = "kubectl has no current context (no cluster configured)"
                return False
        try:
            deployment = self._kubectl("get", "deployment", self.deployment)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            self.reason = f"no reachable cluster with deployment {self.namespace}/{self.deployment} ({exc})"
            return False
        labels = (deployment.get("spec", {}).get("selector", {}) or {}).get("matchLabels") or {}
        self.selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or None
        return True

    def read(self, sample: Sample) -> None:
        try:
            deployment = self._kubectl("get", "deployment", self.deployment)
            status, spec = deployment.get("status", {}), deployment.get("spec", {})
            sample.replicas = int(status.get("replicas") or 0)
            sample.ready_replicas = int(status.get("readyReplicas") or 0)
            sample.desired_replicas = int(spec.get("replicas") or 0)
            if self.selector:
                pods = self._kubectl("get", "pods", "-l", self.selector).get("items", [])
                phases: dict = {}
                for pod in pods:
                    phase = "Terminating" if pod.get("metadata", {}).get("deletionTimestamp") else \
                        pod.get("status", {}).get("phase", "Unknown")
                    phases[phase] = phases.get(phase, 0) + 1
                sample.pod_phases = phases
            for service in self.knative_services:
                pods = self._kubectl("get", "pods", "-l", f"serving.knative.dev/service={service}").get("items", [])
                sample.knative_pods[service] = sum(
                    1 for pod in pods if not pod["metadata"].get("deletionTimestamp") and any(
                        c.get("type") == "Ready" and c.get("status") == "True"
                        for c in pod.get("status", {}).get("conditions", []) or []))
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            sample.error = (sample.error + "; " if sample.error else "") + f"kubectl: {exc}"


class BrokerReads:
    """Calls read(LagReader), with a fresh admin client after a failure (the broker may be
    restarting under it)."""

    def __init__(self, bootstrap: str, read):
        self.bootstrap, self.read = bootstrap, read
        self.reader: lag_reader.LagReader | None = None

    def __call__(self):
        try:
            if self.reader is None:
                self.reader = lag_reader.LagReader(self.bootstrap, timeout_ms=2000)
            return self.read(self.reader)
        except (KafkaError, LookupError, OSError):
            self.close()
            raise

    def close(self) -> None:
        """Close the broker connection (best effort); the next read opens a fresh one."""
        if self.reader is not None:
            try:
                self.reader.close()
            except Exception:  # a client that lost its broker may fail to close in any way
                pass
            self.reader = None


class Sampler:
    def __init__(self, bootstrap: str, topic: str, group: str, settings: keda_scaler.ScalerSettings,
                 kube: DeploymentWatch | None, interval_s: float = 1.0, on_sample=None):
        self.bootstrap, self.topic, self.group, self.settings = bootstrap, topic, group, settings
        self.kube, self.interval_s, self.on_sample = kube, interval_s, on_sample
        self.samples: list[Sample] = []
        self.phase = "load"
        self.started = time.monotonic()
        self._offsets = BrokerReads(bootstrap, lambda reader: reader.read(topic, group))
        self._previous: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lag_error = ""

    def _lag(self, sample: Sample) -> None:
        try:
            offsets = self._offsets()
        except (KafkaError, LookupError, OSError) as exc:
            self.lag_error = f"{type(exc).__name__}: {exc}"
            sample.error = f"lag: {self.lag_error}"
            return
        decision = keda_scaler.evaluate(offsets, self.settings, previous_committed=self._previous)
        self._previous = {p.partition: p.committed for p in offsets if p.committed is not None}
        # What the consumer still has to read: its lag, or for a partition it never committed
        # (it starts there at auto_offset_reset) every retained record, or nothing with "latest".
        from_start = config.AUTO_OFFSET_RESET == "earliest"
        sample.lag_by_partition = {
            row.partition: row.lag if row.lag is not None else (max(row.end - row.start, 0) if from_start else 0)
            for row in decision.partitions}
        sample.uncommitted = sum(1 for row in decision.partitions if row.lag is None)
        sample.lag_total = sum(sample.lag_by_partition.values())
        sample.keda_lag, sample.keda_active = decision.keda_total_lag, decision.active
        sample.keda_desired = decision.desired_replicas

    def sample_once(self) -> Sample:
        sample = Sample(t=round(time.monotonic() - self.started, 2), phase=self.phase)
        self._lag(sample)
        if self.kube is not None and self.kube.reachable:
            self.kube.read(sample)
        self.samples.append(sample)
        if self.on_sample is not None:
            self.on_sample(sample)
        return sample

    def _loop(self, deadline: float) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.sample_once()
            next_tick += self.interval_s
            delay = next_tick - time.monotonic()
            if delay < 0:  # a slow sample: keep the cadence, do not burst to catch up
                next_tick = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def start(self, max_seconds: float) -> None:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, args=(self.started + max_seconds,), daemon=True,
                                        name="sampler")
        self._thread.start()

    def wait_until(self, predicate, timeout_s: float) -> Sample | None:
        """Block until a new sample satisfies predicate, or timeout_s passes (then None)."""
        deadline = time.monotonic() + timeout_s
        seen = len(self.samples)
        while time.monotonic() < deadline and self._thread is not None and self._thread.is_alive():
            while seen < len(self.samples):
                sample = self.samples[seen]
                seen += 1
                if predicate(sample):
                    return sample
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=KUBECTL_TIMEOUT_S * 2 + 10)
        self._offsets.close()
