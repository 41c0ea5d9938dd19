"""Start and stop the cluster: etcd, kube-apiserver, kube-controller-manager, the real node
(cluster/node.py: containerd, kubelet, kube-proxy, kube-scheduler, CoreDNS), KEDA's operator
and metrics adapter.

The control plane binds 127.0.0.1 only, the node its bridge address; every process is
stopped by PID (state in .run/cluster/state.json).
etcd starts on an empty data folder each time, so every `make cluster-up` is a fresh cluster;
the certificates are kept and reused.
"""
from __future__ import annotations

import base64
import json
import os
import ssl
import time
from pathlib import Path

import yaml

from images import build as images_build
from tools.common import CRDS_DIR, ROOT, Kube, free_port, pick_port, pid_alive, sh, speaker, stop_pid, wait_http

from . import build, knative, node, pki, traefik
from .node import launch

RUN = Path(os.environ.get("CLUSTER_RUN_DIR", ROOT / ".run" / "cluster"))
STATE = RUN / "state.json"
PKI = RUN / "pki"
KUBECONFIG = RUN / "kubeconfig"
LOGS = RUN / "logs"
# The admin's kubectl: every install step below, and the node's.
KUBE = Kube(build.BIN / "kubectl", KUBECONFIG)
kubectl = KUBE.run
# KEDA's operator starts a controller for each of its kinds and exits if a CRD is missing;
# ../shared/crds has ScaledObject and TriggerAuthentication, the module has the other four.
KEDA_MODULE_CRDS = ("keda.sh_scaledjobs.yaml", "keda.sh_clustertriggerauthentications.yaml",
                    "eventing.keda.sh_cloudeventsources.yaml", "eventing.keda.sh_clustercloudeventsources.yaml")
SERVICE_CIDR = node.SERVICE_CIDR  # routed by kube-proxy on the node
KEDA_NAMESPACE = "keda"


say = speaker("cluster")


def _ours(entry: dict) -> bool:
    """Alive and still the program we started (a stale state file must not stop a reused PID)."""
    if not pid_alive(entry["pid"]):
        return False
    try:
        argv0 = Path(f"/proc/{entry['pid']}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return False
    return Path(argv0).name == entry.get("binary", Path(argv0).name)


def read_state() -> dict | None:
    if not STATE.exists():
        return None
    return json.loads(STATE.read_text())


def is_up() -> bool:
    state = read_state()
    return bool(state) and bool(state["processes"]) and all(_ours(p) for p in state["processes"])


def _ssl_context(client: str | None = "admin") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    if client:
        ctx.load_cert_chain(str(PKI / f"{client}.crt"), str(PKI / f"{client}.key"))
    return ctx


def _start_etcd(etcd: Path, processes: list) -> str:
    client, peer = free_port(), free_port()
    data = RUN / "etcd"
    sh("rm", "-rf", str(data))
    argv = [str(etcd), "--name=purchase-local", f"--data-dir={data}",
            f"--listen-client-urls=http://127.0.0.1:{client}", f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=purchase-local=http://127.0.0.1:{peer}", "--initial-cluster-state=new",
            "--quota-backend-bytes=1073741824", "--log-level=warn", "--logger=zap"]
    proc = launch(processes, LOGS, "etcd", argv, client)
    wait_http(f"http://127.0.0.1:{client}/health", 60, proc, "etcd", LOGS / "etcd.log")
    return f"http://127.0.0.1:{client}"


def _start_apiserver(binary: Path, etcd_url: str, processes: list) -> int:
    port = pick_port(int(os.environ.get("CLUSTER_APISERVER_PORT", "6443")))
    # Listens on 127.0.0.1; advertised (the `kubernetes` Service's endpoint) at the node's
    # address, where cluster/node.py relays to it for pods.
    argv = [str(binary), "--bind-address=127.0.0.1", f"--secure-port={port}", f"--advertise-address={node.NODE_IP}",
            f"--etcd-servers={etcd_url}",
            f"--tls-cert-file={PKI / 'apiserver.crt'}", f"--tls-private-key-file={PKI / 'apiserver.key'}",
            f"--client-ca-file={PKI / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={PKI / 'sa.pub'}", f"--service-account-signing-key-file={PKI / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--authorization-mode=RBAC",
            # Aggregation layer (for an external-metrics adapter): the front-proxy identity.
            f"--requestheader-client-ca-file={PKI / 'ca.crt'}", "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={PKI / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={PKI / 'front-proxy-client.key'}",
            # kubectl logs/exec: the API server calls kubelet on the node's address with this identity.
            f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={PKI / 'ca.crt'}", "--kubelet-preferred-address-types=InternalIP",
            "--profiling=false", "--v=1"]
    proc = launch(processes, LOGS, "kube-apiserver", argv, port)
    wait_http(f"https://127.0.0.1:{port}/readyz", 180, proc, "kube-apiserver", LOGS / "kube-apiserver.log",
              _ssl_context())
    return port


def _start_controller_manager(binary: Path, server: str, processes: list) -> None:
    kubeconfig = pki.write_kubeconfig(RUN / "controller-manager.kubeconfig", server, PKI, "controller-manager")
    port = free_port()
    argv = [str(binary), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={RUN / 'controller-manager-certs'}", "--leader-elect=false",
            f"--root-ca-file={PKI / 'ca.crt'}", f"--service-account-private-key-file={PKI / 'sa.key'}",
            f"--cluster-signing-cert-file={PKI / 'ca.crt'}", f"--cluster-signing-key-file={PKI / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--use-service-account-credentials=true",
            f"--horizontal-pod-autoscaler-sync-period={os.environ.get('CLUSTER_HPA_SYNC_PERIOD', '15s')}",
            "--profiling=false", "--v=1"]
    proc = launch(processes, LOGS, "kube-controller-manager", argv, port)
    # It serves /healthz with a self-signed certificate of its own (--cert-dir): loopback, unverified.
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    wait_http(f"https://127.0.0.1:{port}/healthz", 120, proc, "kube-controller-manager",
              LOGS / "kube-controller-manager.log", insecure)


def _wait_crds_established(names: list[str]) -> None:
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names), timeout_s=90)


def install_crds_and_rbac() -> None:
    """The upstream CRDs, unmodified, and KEDA's own RBAC bound to the operator's certificate user."""
    keda_dir = build.keda_module_dir()
    shared = sorted(CRDS_DIR.glob("*.yaml"))
    if not shared:
        raise RuntimeError(f"no CRDs in {CRDS_DIR} (set PURCHASE_CRDS_DIR)")
    files = shared + [keda_dir / "config" / "crd" / "bases" / name for name in KEDA_MODULE_CRDS]
    names = []
    for path in files:
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        out = kubectl("get", "-f", str(path), "-o", "jsonpath={.metadata.name}").stdout.strip()
        names.append(out)
    _wait_crds_established(names)
    kubectl("create", "namespace", KEDA_NAMESPACE, check=False)
    kubectl("apply", "-f", str(keda_dir / "config" / "rbac" / "role.yaml"))
    kubectl("create", "clusterrolebinding", "keda-operator", "--clusterrole=keda-operator",
            "--user=keda-operator", check=False)
    kubectl("create", "rolebinding", "keda-operator", f"--namespace={KEDA_NAMESPACE}", "--role=keda-operator",
            "--user=keda-operator", check=False)


def _start_keda(binary: Path, server: str, processes: list) -> None:
    kubeconfig = pki.write_kubeconfig(RUN / "keda-operator.kubeconfig", server, PKI, "keda-operator")
    probe, metrics, grpc = free_port(), free_port(), free_port()
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), WATCH_NAMESPACE="", POD_NAMESPACE=KEDA_NAMESPACE,
               KEDA_CLUSTER_OBJECT_NAMESPACE=KEDA_NAMESPACE, OPERATOR_NAME="keda-operator")
    ca_dir = PKI / "keda-ca"
    ca_dir.mkdir(exist_ok=True)
    argv = [str(binary), "--leader-elect=false", f"--health-probe-bind-address=127.0.0.1:{probe}",
            f"--metrics-bind-address=127.0.0.1:{metrics}", f"--metrics-service-bind-address=127.0.0.1:{grpc}",
            f"--cert-dir={PKI / 'keda-certs'}", f"--ca-dir={ca_dir}", "--enable-cert-rotation=false",
            "--zap-log-level=info", "--zap-encoder=console"]
    # KEDA's Kafka scaler dials the broker by its in-cluster names, as it does in a pod.
    argv = node.Node(RUN).with_cluster_dns(argv)
    proc = launch(processes, LOGS, "keda-operator", argv, probe, binary=binary.name, env=env,
                  grpc_port=grpc, metrics_port=metrics)
    wait_http(f"http://127.0.0.1:{probe}/readyz", 120, proc, "keda-operator", LOGS / "keda-operator.log")


METRICS_APISERVICE = "v1beta1.external.metrics.k8s.io"
METRICS_SERVICE = "keda-metrics-apiserver"


def adapter_enabled() -> bool:
    return os.environ.get("CLUSTER_METRICS_ADAPTER", "1") not in ("0", "", "false", "no")


def _start_keda_adapter(binary: Path, server: str, processes: list, grpc_port: int) -> int:
    """KEDA's external-metrics API server: what the HPA asks for the lag metric (1 -> N)."""
    kubeconfig = RUN / "keda-operator.kubeconfig"  # the chart runs both as the keda-operator account
    port, metrics = free_port(), free_port()
    certs = PKI / "keda-adapter-certs"
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), WATCH_NAMESPACE="", POD_NAMESPACE=KEDA_NAMESPACE,
               KEDA_CLUSTER_OBJECT_NAMESPACE=KEDA_NAMESPACE)
    argv = [str(binary), "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--tls-cert-file={certs / 'tls.crt'}", f"--tls-private-key-file={certs / 'tls.key'}",
            f"--cert-dir={certs}", f"--client-ca-file={PKI / 'ca.crt'}",
            f"--lister-kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--metrics-service-address=127.0.0.1:{grpc_port}", f"--port={metrics}",
            "--zap-log-level=info", "--zap-encoder=console"]
    proc = launch(processes, LOGS, "keda-adapter", argv, port, env=env, metrics_port=metrics)
    wait_http(f"https://127.0.0.1:{port}/readyz", 120, proc, "keda-adapter", LOGS / "keda-adapter.log",
              _ssl_context(None))
    return port


def install_metrics_api(adapter_port: int) -> None:
    """Register the adapter with the aggregation layer, with KEDA's own RBAC for it and the HPA.

    There is no kube-proxy to route a ClusterIP, so the Service the APIService names is an
    ExternalName for localhost: the aggregator resolves it to https://localhost:<port> and
    checks the adapter's certificate for keda-metrics-apiserver.keda.svc.
    """
    keda_dir = build.keda_module_dir() / "config" / "metrics-server"
    kubectl("apply", "-f", str(keda_dir / "role.yaml"), "-f", str(keda_dir / "role_binding.yaml"))
    kubectl("create", "clusterrolebinding", "keda-operator-auth-delegator", "--clusterrole=system:auth-delegator",
            "--user=keda-operator", check=False)
    kubectl("create", "rolebinding", "keda-operator-auth-reader", "--namespace=kube-system",
            "--role=extension-apiserver-authentication-reader", "--user=keda-operator", check=False)
    kubectl("apply", "-f", "-", input_text=json.dumps({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": METRICS_SERVICE, "namespace": KEDA_NAMESPACE},
        "spec": {"type": "ExternalName", "externalName": "localhost",
                 "ports": [{"name": "https", "port": adapter_port, "targetPort": adapter_port}]}}))
    kubectl("apply", "-f", str(keda_dir / "api_service.yaml"))
    ca = base64.b64encode((PKI / "ca.crt").read_bytes()).decode()
    kubectl("patch", "apiservice", METRICS_APISERVICE, "--type=merge", "-p",
            json.dumps({"spec": {"service": {"port": adapter_port}, "caBundle": ca}}))
    kubectl("wait", "--for=condition=Available", "--timeout=90s", f"apiservice/{METRICS_APISERVICE}", timeout_s=120)


def up() -> dict:
    if is_up():
        say(f"already up; KUBECONFIG={KUBECONFIG}")
        return read_state()
    down(quiet=True)
    binaries = build.ensure_all()
    RUN.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    pki.ensure_pki(PKI, extra=node.CERTS)
    images = node_images()
    processes: list = []
    started = time.monotonic()
    state = {"processes": processes, "kubeconfig": str(KUBECONFIG), "kubectl": str(build.BIN / "kubectl")}

    def save() -> None:  # after each start, so a failure part-way is still stopped by PID
        STATE.write_text(json.dumps(state, indent=2))

    try:
        etcd_url = _start_etcd(binaries["etcd"], processes)
        save()
        port = _start_apiserver(binaries["kube-apiserver"], etcd_url, processes)
        server = f"https://127.0.0.1:{port}"
        state["server"] = server
        pki.write_kubeconfig(KUBECONFIG, server, PKI, "admin")
        save()
        _start_controller_manager(binaries["kube-controller-manager"], server, processes)
        save()
        node.Node(RUN, LOGS, KUBE, processes, checkpoint=save).start(binaries, server, PKI, images["refs"],
                                                                     images["podman_env"])
        install_crds_and_rbac()
        if knative_enabled():
            install_knative(images["knative"])
        _start_keda(binaries["keda-operator"], server, processes)
        save()
        if adapter_enabled():
            grpc = next(p["grpc_port"] for p in processes if p["name"] == "keda-operator")
            adapter_port = _start_keda_adapter(binaries["keda-adapter"], server, processes, grpc)
            save()
            install_metrics_api(adapter_port)
    except BaseException:
        say(f"start failed; logs in {LOGS}")
        save()
        down(quiet=True)
        raise
    say(f"up in {time.monotonic() - started:.0f}s: {server}  (export KUBECONFIG={KUBECONFIG})")
    return state


def knative_enabled() -> bool:
    return os.environ.get("CLUSTER_KNATIVE", "1") not in ("0", "", "false", "no")


def install_knative(images: dict[str, str]) -> None:
    """Knative Serving's config/core (cluster/knative.py: local images, the test overlay of
    shorter autoscaler windows unless CLUSTER_KNATIVE_OVERLAY=default) on the node; returns
    once its four deployments are Available and the webhook answers admission requests."""
    started = time.monotonic()
    crds = knative.knative_crds()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input_text=crds)
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(crds) if d]
    _wait_crds_established(names)
    overlay = os.environ.get("CLUSTER_KNATIVE_OVERLAY", "test")
    kubectl("apply", "-f", "-", input_text=knative.knative_manifests(images, overlay), timeout_s=300)
    kubectl("-n", "knative-serving", "wait", "--for=condition=Available", "--timeout=240s",
            "deployment/controller", "deployment/webhook", "deployment/activator", "deployment/autoscaler",
            timeout_s=270)
    say(f"Knative Serving {knative.KNATIVE_VERSION} Available in {time.monotonic() - started:.0f}s")


def node_images() -> dict:
    """The images the node runs, built (or found cached) in podman's storage: the three
    functions under the names the manifests use, the local substitutes (pause, Kafka,
    MongoDB) for upstream images that cannot be pulled here, the ingress (Traefik) and Knative."""
    refs = [*images_build.build_function_images(), *images_build.build_substitutes().values(),
            traefik.ensure_traefik_image()]
    knative_images = {}
    if knative_enabled():
        knative_images = knative.ensure_knative_images()
        refs += knative_images.values()
    return {"refs": list(dict.fromkeys(refs)), "podman_env": images_build.podman_env(), "knative": knative_images}


def down(quiet: bool = False) -> list[str]:
    state = read_state()
    stopped = []
    the_node = node.Node(RUN, LOGS, KUBE)
    if state:
        entries = state["processes"]
        the_node.stop(entries, _ours)
        stopped += [f"{e['name']} (pid {e['pid']})" for e in entries if e["name"] in node.NODE_PROCESSES]
        for entry in reversed([e for e in entries if e["name"] not in node.NODE_PROCESSES]):
            if _ours(entry):
                stop_pid(entry["pid"], timeout_s=20)
                stopped.append(f"{entry['name']} (pid {entry['pid']})")
        STATE.unlink()
    else:
        the_node.stop([], _ours)  # host state left by a start that died early
    if not quiet:
        say("stopped " + (", ".join(stopped) if stopped else "nothing (no cluster running)"))
    return stopped


def status() -> int:
    state = read_state()
    if not state:
        print("cluster: down")
        return 1
    for entry in state["processes"]:
        print(f"{entry['name']:<26} pid {entry['pid']:<8} port {entry['port']:<6} "
              f"{'running' if _ours(entry) else 'DEAD'}   log {entry['log']}")
    print(f"server     {state.get('server', '?')}\nKUBECONFIG={state['kubeconfig']}\nKUBECTL={state['kubectl']}")
    return 0 if is_up() else 1
