"""The real node: containerd + runc + the CNI bridge, kubelet, kube-proxy, kube-scheduler and
CoreDNS, joined to the loopback control plane (cluster/README.md, "The node").

Everything the node changes on the host is recorded before it is changed and put back by
`Node.stop()`: sysctls, iptables chains, nft tables, the bridge, cgroups, mounts, network
namespaces, /var/log/containers. The pod network is the bridge `purchase0` (10.244.0.0/24);
its own address is the node's address, so nothing the control plane sends to the node leaves
the machine, and a rule in the mangle table drops anything forwarded between the bridge and
any other interface: pods reach each other, services and the node, never the outside.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from images.build import PAUSE_IMAGE  # containerd's sandbox image
from tools.common import Kube, free_port, poll_until, sh, spawn, speaker, stop_pid, wait_http, wait_started

from . import pki

NODE_NAME = "purchase-node"
BRIDGE = "purchase0"
POD_SUBNET = "10.244.0.0/24"
NODE_IP = "10.244.0.1"  # the bridge's own address: the node's InternalIP, kubelet and CoreDNS bind it
SERVICE_CIDR = "10.96.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
CHAIN_PREFIX = "PURCHASE-NODE-"  # the node's own iptables chains (mangle table), removed on down
FORWARD_CHAIN = CHAIN_PREFIX + "FORWARD"
INGRESS_CHAIN = CHAIN_PREFIX + "INGRESS"
CNI_BIN_DIR = "/usr/lib/cni"
CONTAINER_LOGS_DIR = Path("/var/log/containers")  # kubelet's symlink folder: not configurable
# Host folders the node's programs create whatever their configuration says (kubelet's log
# symlinks, containerd's shim sockets, CRI's network namespaces): removed on down if the node
# created them.
HOST_FOLDERS = (CONTAINER_LOGS_DIR, Path("/run/containerd"), Path("/var/run/netns"))
# What kubelet and kube-proxy set on the host (kubelet's kernel defaults; forwarding and
# br_netfilter for service traffic across the bridge); restored on down.
SYSCTLS = ("kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory", "net.ipv4.ip_forward",
           "net.bridge.bridge-nf-call-iptables", "net.ipv4.conf.all.route_localnet",
           "net.netfilter.nf_conntrack_max", "net.netfilter.nf_conntrack_tcp_timeout_established",
           "net.netfilter.nf_conntrack_tcp_timeout_close_wait")
CGROUP_ROOT = "purchase-node"  # kubelet's cgroupRoot, created in every v1 hierarchy
# Certificates the node adds to the cluster's CA (cluster/pki.py): kubelet's client identity
# (bound to system:node) and its serving certificate for the node's address; the API server's
# client certificate towards kubelet (logs, exec); the scheduler, kube-proxy and CoreDNS as the
# users RBAC names.
CERTS = {
    # The API server's serving certificate also names the addresses pods reach it at: the
    # `kubernetes` Service's ClusterIP and the node's address (see Node.start_apiserver_forwarder).
    "apiserver": ("/CN=kube-apiserver", pki.SERVER_SANS + f",IP:{SERVICE_CIDR.rsplit('.', 1)[0]}.1,IP:{NODE_IP}"),
    "node": (f"/O=system:nodes/CN=system:node:{NODE_NAME}", None),
    "kubelet": (f"/CN={NODE_NAME}", f"IP:{NODE_IP},DNS:{NODE_NAME}"),
    "apiserver-kubelet-client": ("/O=system:masters/CN=kube-apiserver-kubelet-client", None),
    "scheduler": ("/CN=system:kube-scheduler", None),
    "kube-proxy": ("/CN=system:kube-proxy", None),
    "coredns": ("/CN=purchase:coredns", None),
}
# The node's entries in the cluster's state, in the order Node.stop stops them: containerd last,
# after the pods' tasks it holds.
NODE_PROCESSES = ("kube-scheduler", "kube-proxy", "kubelet", "coredns", "apiserver-forwarder", "containerd")

say = speaker("node")


class Paths:
    """The node's files, all under the cluster's run folder."""

    def __init__(self, run: Path):
        self.base = run / "node"
        self.host_state = run / "node-host-state.json"
        self.containerd_root = self.base / "containerd" / "root"
        self.containerd_state = self.base / "containerd" / "state"
        self.containerd_config = self.base / "containerd" / "config.toml"
        self.containerd_sock = self.base / "containerd.sock"
        self.cni_conf = self.base / "cni" / "net.d"
        self.cni_ipam = self.base / "cni" / "ipam"
        self.kubelet_root = self.base / "kubelet"
        self.pod_logs = self.base / "pod-logs"
        self.volumes = self.base / "volumes"
        self.resolv_conf = self.base / "resolv.conf"
        self.dns_client_resolv = self.base / "cluster-resolv.conf"
        self.corefile = self.base / "Corefile"


def launch(processes: list[dict], logs: Path, name: str, argv: list[str], port: int, binary: str | None = None,
           env: dict | None = None, **extra) -> subprocess.Popen:
    """Start one of the cluster's processes (log: logs/<name>.log) and record it in `processes`,
    the cluster's state, so it is stopped by PID even if the start fails later on."""
    log = logs / f"{name}.log"
    proc = spawn(name, argv, log, env=env)
    processes.append({"name": name, "binary": binary or Path(argv[0]).name, "pid": proc.pid, "port": port,
                      "log": str(log), **extra})
    return proc


# --- the host: what the node changes, read and put back ----------------------------------------

def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _read_sysctls() -> dict:
    values = {}
    for name in SYSCTLS:
        path = _sysctl_path(name)
        if path.exists():
            values[name] = path.read_text().strip()
    return values


def _netns_names() -> list[str]:
    folder = Path("/var/run/netns")
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _nft_tables() -> list[str]:
    if shutil.which("nft") is None:
        return []
    out = sh("nft", "list", "tables", check=False)
    return sorted(line.strip() for line in out.splitlines() if line.startswith("table "))


def _nft_table_is_empty(table: str) -> bool:
    listing = sh("nft", "list", *table.split(), check=False)
    return all(not line.strip() or line.strip().startswith(("table ", "chain ", "type ", "}"))
               for line in listing.splitlines())


def _write_sysctl(name: str, value: str) -> None:
    try:
        _sysctl_path(name).write_text(value + "\n")
    except OSError as exc:
        say(f"could not set {name}={value}: {exc}")


def _iptables_tables_clean(binary: str) -> None:
    """Remove every KUBE-* chain and the node's own chains (and the rules jumping to them) from
    each table, leaving every other rule as it is."""
    saver = f"{binary}-save"
    if shutil.which(saver) is None:
        return
    dump = sh(saver, check=False)
    out, changed = [], False
    ours = ("KUBE-", CHAIN_PREFIX)
    for line in dump.splitlines():
        if line.startswith(":") and line[1:].startswith(ours):
            changed = True
            continue
        if line.startswith("-A ") and (line.split()[1].startswith(ours)
                                       or any(f"-j {c}" in line or f"-g {c}" in line for c in ours)):
            changed = True
            continue
        out.append(line)
    if changed:
        sh(f"{binary}-restore", input_text="\n".join(out) + "\n", check=False)


def _cgroup_hierarchies() -> list[Path]:
    base = Path("/sys/fs/cgroup")
    return [p for p in base.iterdir() if p.is_dir() and not p.is_symlink()] if base.is_dir() else []


def _create_cgroups() -> None:
    for hierarchy in _cgroup_hierarchies():
        (hierarchy / CGROUP_ROOT).mkdir(exist_ok=True)
        # A new v1 cpuset starts with no CPUs and no memory nodes: give it its parent's.
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (hierarchy / knob).exists() and not (hierarchy / CGROUP_ROOT / knob).read_text().strip():
                (hierarchy / CGROUP_ROOT / knob).write_text((hierarchy / knob).read_text())


def _remove_cgroups() -> None:
    for hierarchy in _cgroup_hierarchies():
        top = hierarchy / CGROUP_ROOT
        if not top.is_dir():
            continue
        # Deepest first; a cgroup with a process left in it stays (and is reported).
        for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
            try:
                folder.rmdir()
            except OSError as exc:
                say(f"cgroup {folder} not removed: {exc}")


def _unmount_under(folder: Path) -> None:
    """Unmount everything mounted at or below folder (deepest first)."""
    prefix = str(folder.resolve())
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            mounts.append(point)
    for point in sorted(set(mounts), key=lambda p: -p.count("/")):
        sh("umount", "-l", point, check=False)



def _our_shims(paths: Paths) -> list[int]:
    """The containerd shims of this node's containerd (found by its socket on their command line)."""
    pids = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(paths.containerd_sock).encode() in argv:
            pids.append(int(proc_dir.name))
    return pids


def containerd_config(paths: Paths) -> str:
    return f"""version = 2
root = "{paths.containerd_root}"
state = "{paths.containerd_state}"
oom_score = 0

[grpc]
  address = "{paths.containerd_sock}"

[ttrpc]
  address = "{paths.containerd_sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{paths.base / 'containerd' / 'opt'}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # root here lacks CAP_SYS_RESOURCE: containerd may only raise a container's oom_score_adj.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  # crun fails on this kernel; runc works. No systemd as PID 1: cgroupfs.
  BinaryName = "{shutil.which('runc') or '/usr/sbin/runc'}"
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{paths.cni_conf}"
"""


class Node:
    """The node of the cluster whose run folder is `run`: its files (`paths`), the processes it
    starts (recorded in `processes`, the cluster's state list, with `checkpoint()` saving that
    state after each start) and their logs (`logs`). `kube` is the admin's kubectl, needed only
    to start and stop it."""

    def __init__(self, run: Path, logs: Path | None = None, kube: Kube | None = None,
                 processes: list[dict] | None = None, checkpoint: Callable[[], None] = lambda: None):
        self.paths = Paths(run)
        self.logs = logs or run / "logs"
        self.kube = kube
        self.processes = [] if processes is None else processes
        self.checkpoint = checkpoint

    def _launch(self, name: str, argv: list[str], port: int) -> subprocess.Popen:
        return launch(self.processes, self.logs, name, argv, port)

    def _kubectl(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        if self.kube is None:
            raise RuntimeError("this Node was made without a kubectl (Node(run, kube=...))")
        return self.kube.run(*args, **kwargs)

    # --- start and stop, in order ----------------------------------------------------------

    def start(self, binaries: dict, server: str, pki_dir: Path, images: list[str], podman_env: dict) -> None:
        """Bring the node up in order, saving the state after each process."""
        started = time.monotonic()
        self.record_host_state()
        self.setup_network()
        self.start_apiserver_forwarder(int(server.rsplit(":", 1)[1]))
        self.start_containerd()
        self.checkpoint()
        self.load_images(list(dict.fromkeys([PAUSE_IMAGE, *images])), podman_env)
        self.install_rbac()
        self.start_coredns(binaries["coredns"], server, pki_dir)
        self.checkpoint()
        self.start_kubelet(binaries["kubelet"], server, pki_dir)
        self.checkpoint()
        self.start_kube_proxy(binaries["kube-proxy"], server, pki_dir)
        self.checkpoint()
        self.start_scheduler(binaries["kube-scheduler"], server, pki_dir)
        self.checkpoint()
        self.wait_ready()
        self.install_volumes()
        say(f"node {NODE_NAME} Ready at {NODE_IP} in {time.monotonic() - started:.0f}s")

    def stop(self, entries: list[dict], alive: Callable[[dict], bool]) -> None:
        """Drain, stop the node's processes among `entries` (the cluster's state) by PID, kill
        leftovers, and put the host back."""
        running = {e["name"]: e for e in entries if alive(e)}
        if "kubelet" in running and "kube-apiserver" in running:
            self.drain_pods()
        for name in NODE_PROCESSES[:-1]:
            if name in running:
                stop_pid(running[name]["pid"], timeout_s=20)
        self.stop_runtime()
        if "containerd" in running:
            stop_pid(running["containerd"]["pid"], timeout_s=20)
        _unmount_under(self.paths.base)
        self.restore_host_state()

    # --- the host ---------------------------------------------------------------------------

    def record_host_state(self) -> dict:
        """What the host looked like before the node touched it (kept across a failed start)."""
        if self.paths.host_state.exists():
            return json.loads(self.paths.host_state.read_text())
        state = {
            "sysctls": _read_sysctls(),
            "netns": _netns_names(),
            "nft_tables": _nft_tables(),
            "host_folders": {str(folder): folder.exists() for folder in HOST_FOLDERS},
            "had_bridge": Path(f"/sys/class/net/{BRIDGE}").exists(),
        }
        self.paths.host_state.parent.mkdir(parents=True, exist_ok=True)
        self.paths.host_state.write_text(json.dumps(state, indent=2))
        return state

    def restore_host_state(self) -> None:
        if not self.paths.host_state.exists():
            return
        state = json.loads(self.paths.host_state.read_text())
        for name, value in state["sysctls"].items():
            if _sysctl_path(name).exists() and _sysctl_path(name).read_text().strip() != value:
                _write_sysctl(name, value)
        _iptables_tables_clean("iptables")
        _iptables_tables_clean("ip6tables")
        # iptables-nft leaves the tables it created; drop those that are new and now hold no rule.
        for table in _nft_tables():
            if table not in state["nft_tables"] and _nft_table_is_empty(table):
                sh("nft", "delete", *table.split(), check=False)
        for name in _netns_names():
            if name not in state["netns"] and name.startswith("cni-"):
                sh("ip", "netns", "delete", name, check=False)
        if not state["had_bridge"] and Path(f"/sys/class/net/{BRIDGE}").exists():
            sh("ip", "link", "delete", BRIDGE, check=False)
        sh("ip", "route", "delete", SERVICE_CIDR, check=False)
        for folder, existed in state["host_folders"].items():
            if not existed and Path(folder).exists():
                shutil.rmtree(folder, ignore_errors=True)
        _remove_cgroups()
        self.paths.host_state.unlink()

    def host_fingerprint(self) -> dict:
        """The host state the node touches, for `python -m cluster hostcheck`: equal before
        `cluster-up` and after `cluster-down`, or something was left behind."""
        chains = []
        for binary in ("iptables-save", "ip6tables-save"):
            if shutil.which(binary):
                chains += sorted({line.split()[0][1:] for line in sh(binary, check=False).splitlines()
                                  if line.startswith(":") and line[1:].startswith(("KUBE-", CHAIN_PREFIX))})
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if line.split()[4].startswith(str(self.paths.base.resolve()))]
        return {
            "sysctls": _read_sysctls(),
            "iptables_chains": chains,
            "nft_tables": _nft_tables(),
            "netns": [n for n in _netns_names() if n.startswith("cni-")],
            "bridge": Path(f"/sys/class/net/{BRIDGE}").exists(),
            "service_route": bool(sh("ip", "route", "show", SERVICE_CIDR, check=False).strip()),
            "cgroups": sorted(str(h / CGROUP_ROOT) for h in _cgroup_hierarchies() if (h / CGROUP_ROOT).exists()),
            "host_folders": {str(folder): folder.exists() for folder in HOST_FOLDERS},
            "mounts": mounts,
            "shims": len(_our_shims(self.paths)),
        }

    def setup_network(self) -> None:
        """The bridge with the node's address, forwarding for service traffic, and the isolation
        rule: nothing forwarded between the bridge and another interface (no route or NAT out)."""
        paths = self.paths
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            sh("ip", "link", "add", BRIDGE, "type", "bridge")
        addresses = sh("ip", "-o", "-4", "addr", "show", "dev", BRIDGE)
        if f" {NODE_IP}/" not in addresses:
            sh("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        # ClusterIPs are reached from the host (KEDA, the tests) through the bridge, never through eth0.
        sh("ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
        _write_sysctl("net.ipv4.ip_forward", "1")
        # Replies between two pods on the bridge must pass conntrack for a ClusterIP's DNAT to be undone.
        _write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
        # The mangle table runs before filter, where kube-proxy and kubelet insert their rules.
        # FORWARD: pods reach each other (and, DNAT'd, services); nothing else crosses the bridge.
        # PREROUTING: nothing arriving on another interface reaches the node's, pods' or services' addresses.
        rules = {FORWARD_CHAIN: [["-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN"], ["-i", BRIDGE, "-j", "DROP"],
                                 ["-o", BRIDGE, "-j", "DROP"]],
                 # (the host's own traffic to those addresses arrives on lo)
                 INGRESS_CHAIN: [["-i", "lo", "-j", "RETURN"], ["-i", BRIDGE, "-j", "RETURN"],
                                 *(["-d", cidr, "-j", "DROP"] for cidr in (POD_SUBNET, SERVICE_CIDR))]}
        for (chain, chain_rules), hook in zip(rules.items(), ("FORWARD", "PREROUTING"), strict=True):
            sh("iptables", "-t", "mangle", "-N", chain, check=False)
            sh("iptables", "-t", "mangle", "-F", chain)
            for rule in chain_rules:
                sh("iptables", "-t", "mangle", "-A", chain, *rule)
            if subprocess.run(["iptables", "-t", "mangle", "-C", hook, "-j", chain],
                              capture_output=True, timeout=30).returncode != 0:
                sh("iptables", "-t", "mangle", "-I", hook, "1", "-j", chain)
        paths.cni_conf.mkdir(parents=True, exist_ok=True)
        paths.cni_ipam.mkdir(parents=True, exist_ok=True)
        (paths.cni_conf / "10-purchase.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "purchase-pods",
            "plugins": [{
                "type": "bridge", "bridge": BRIDGE, "isGateway": True,
                # No masquerade: pod traffic is never translated to leave the machine.
                "ipMasq": False,
                # A pod reaching itself through its own Service.
                "hairpinMode": True,
                "ipam": {"type": "host-local", "dataDir": str(paths.cni_ipam),
                         "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                         "routes": [{"dst": "0.0.0.0/0"}]},
            }],
        }, indent=2))

    def with_cluster_dns(self, argv: list[str]) -> list[str]:
        """argv run with CoreDNS as its resolver: in a mount namespace of its own where
        /etc/resolv.conf is the cluster's, so in-cluster names (kafka.purchase.svc.cluster.local,
        the broker's per-pod advertised name) resolve while the host's resolver stays untouched."""
        return ["unshare", "--mount", "--propagation=private", "--", "sh", "-c",
                f'mount --bind "{self.paths.dns_client_resolv}" /etc/resolv.conf && exec "$@"', "sh", *argv]

    # --- containerd -------------------------------------------------------------------------

    def ctr(self, *args: str, timeout_s: float = 300, check: bool = True) -> str:
        """containerd's own client against the node's containerd, in kubelet's namespace."""
        return sh("ctr", f"--address={self.paths.containerd_sock}", "--namespace=k8s.io", *args,
                  timeout_s=timeout_s, check=check)

    def start_containerd(self) -> None:
        paths = self.paths
        for folder in (paths.containerd_root, paths.containerd_state):
            folder.mkdir(parents=True, exist_ok=True)
        paths.containerd_config.write_text(containerd_config(paths))
        proc = self._launch("containerd", ["containerd", f"--config={paths.containerd_config}"], 0)

        def answers() -> str | None:
            if paths.containerd_sock.exists() and subprocess.run(
                    ["ctr", f"--address={paths.containerd_sock}", "version"], capture_output=True,
                    timeout=10).returncode == 0:
                return None
            return f"no answer on {paths.containerd_sock}"
        wait_started(answers, 60, proc, "containerd", self.logs / "containerd.log")

    def load_images(self, refs: list[str], podman_env: dict) -> None:
        """Copy images from podman's storage into the node's containerd (what `minikube image load`
        does), skipping those whose podman image ID was already loaded."""
        stamp_file = self.paths.base / "loaded-images.json"
        loaded = json.loads(stamp_file.read_text()) if stamp_file.exists() else {}
        present = set(self.ctr("images", "list", "--quiet").split())
        for ref in refs:
            image_id = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", ref], env=podman_env,
                                      capture_output=True, text=True, timeout=60)
            if image_id.returncode != 0:
                raise RuntimeError(f"image {ref} is not in podman's storage: {image_id.stderr.strip()}")
            if loaded.get(ref) == image_id.stdout.strip() and ref in present:
                continue
            started = time.monotonic()
            archive = self.paths.base / "image.tar"
            subprocess.run(["podman", "save", "--format=docker-archive", "-o", str(archive), ref], env=podman_env,
                           check=True, capture_output=True, timeout=600)
            self.ctr("images", "import", str(archive), timeout_s=600)
            archive.unlink()
            loaded[ref] = image_id.stdout.strip()
            stamp_file.write_text(json.dumps(loaded, indent=2))
            say(f"loaded {ref} into containerd in {time.monotonic() - started:.1f}s")

    def stop_runtime(self) -> None:
        """Kill what is left of the pods (tasks, shims), then unmount and forget them."""
        if self.paths.containerd_sock.exists():
            tasks = self.ctr("tasks", "list", "--quiet", check=False, timeout_s=30).split()
            for task in tasks:
                self.ctr("tasks", "kill", "--all", "--signal=SIGKILL", task, check=False, timeout_s=30)
            time.sleep(0.5)
            for task in tasks:
                self.ctr("tasks", "delete", "--force", task, check=False, timeout_s=30)
        for pid in _our_shims(self.paths):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # --- the Kubernetes node processes ------------------------------------------------------

    def install_rbac(self) -> None:
        """No Node authorizer here: the node's certificate user gets the system:node role; CoreDNS
        gets the read access its kubernetes plugin needs."""
        self._kubectl("create", "clusterrolebinding", "purchase-node", "--clusterrole=system:node",
                      f"--user=system:node:{NODE_NAME}", check=False)
        self._kubectl("apply", "-f", "-", input_text=json.dumps({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "purchase:coredns"},
            "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                       "verbs": ["list", "watch"]},
                      {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                       "verbs": ["list", "watch"]}]}))
        self._kubectl("create", "clusterrolebinding", "purchase:coredns", "--clusterrole=purchase:coredns",
                      "--user=purchase:coredns", check=False)

    def start_coredns(self, binary: Path, server: str, pki_dir: Path) -> None:
        """CoreDNS on the node's address serving cluster.local from the API server; nothing is
        forwarded anywhere else (a name outside the cluster is refused)."""
        paths = self.paths
        kubeconfig = pki.write_kubeconfig(paths.base / "coredns.kubeconfig", server, pki_dir, "coredns")
        health, ready = free_port(), free_port()
        paths.corefile.write_text(f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
        kubeconfig {kubeconfig} purchase-local
        pods insecure
    }}
    cache 5
}}
""")
        proc = self._launch("coredns", [str(binary), "-conf", str(paths.corefile)], 53)
        wait_http(f"http://127.0.0.1:{ready}/ready", 60, proc, "coredns", self.logs / "coredns.log")
        # The resolver for host processes that must find in-cluster names (KEDA's operator).
        paths.dns_client_resolv.write_text(
            f"nameserver {NODE_IP}\nsearch svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\noptions ndots:5\n")

    def start_kubelet(self, binary: Path, server: str, pki_dir: Path) -> None:
        paths = self.paths
        kubeconfig = pki.write_kubeconfig(paths.base / "kubelet.kubeconfig", server, pki_dir, "node")
        port, healthz = free_port(), free_port()
        for folder in (paths.kubelet_root, paths.pod_logs):
            folder.mkdir(parents=True, exist_ok=True)
        # Pods with dnsPolicy Default get this; ClusterFirst pods get CoreDNS. No outside resolver.
        paths.resolv_conf.write_text(f"nameserver {NODE_IP}\n")
        _create_cgroups()
        config = paths.base / "kubelet-config.json"
        config.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": NODE_IP, "port": port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz,
            # The API server's kubelet-client certificate (and only certificates of this CA) may call it.
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(pki_dir / "ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},
            "tlsCertFile": str(pki_dir / "kubelet.crt"), "tlsPrivateKeyFile": str(pki_dir / "kubelet.key"),
            # cgroup v1 and no systemd here; containerd 1.6 cannot report its cgroup driver, so
            # kubelet uses this one (1.37 warns that the fallback goes away in 1.38).
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "cgroupRoot": f"/{CGROUP_ROOT}",
            "containerRuntimeEndpoint": f"unix://{paths.containerd_sock}",
            "clusterDNS": [NODE_IP], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": str(paths.resolv_conf),
            "podLogsDir": str(paths.pod_logs), "failSwapOn": False, "maxPods": 60,
            "registerNode": True, "nodeStatusUpdateFrequency": "5s",
            # A shared machine's disk: evict only when it is really full.
            "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
        }, indent=2))
        argv = [str(binary), f"--config={config}", f"--kubeconfig={kubeconfig}", f"--root-dir={paths.kubelet_root}",
                f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1"]
        proc = self._launch("kubelet", argv, port)
        wait_http(f"http://127.0.0.1:{healthz}/healthz", 120, proc, "kubelet", self.logs / "kubelet.log")

    def start_kube_proxy(self, binary: Path, server: str, pki_dir: Path) -> None:
        paths = self.paths
        kubeconfig = pki.write_kubeconfig(paths.base / "kube-proxy.kubeconfig", server, pki_dir, "kube-proxy")
        healthz, metrics = free_port(), free_port()
        config = paths.base / "kube-proxy-config.json"
        config.write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME, "bindAddress": NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{healthz}", "metricsBindAddress": f"127.0.0.1:{metrics}",
            "mode": "iptables", "clusterCIDR": POD_SUBNET,
            # NodePorts only on the node's own bridge address, never on eth0.
            "nodePortAddresses": [f"{NODE_IP}/32"],
            # 0: leave the machine's conntrack sysctls alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }, indent=2))
        proc = self._launch("kube-proxy", [str(binary), f"--config={config}", "--v=1"], healthz)
        wait_http(f"http://127.0.0.1:{healthz}/healthz", 60, proc, "kube-proxy", self.logs / "kube-proxy.log")

    def start_scheduler(self, binary: Path, server: str, pki_dir: Path) -> None:
        kubeconfig = pki.write_kubeconfig(self.paths.base / "scheduler.kubeconfig", server, pki_dir, "scheduler")
        port = free_port()
        argv = [str(binary), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", f"--secure-port={port}",
                "--leader-elect=false", "--v=1"]
        self._launch("kube-scheduler", argv, port)

    def start_apiserver_forwarder(self, api_port: int) -> None:
        """Pods (Knative's controllers) reach the API server through the `kubernetes` Service, whose
        endpoint is the node's address (--advertise-address): the API server itself listens on
        127.0.0.1 only, so this relays the node's address:port to it, one connection each."""
        self._launch("apiserver-forwarder", ["socat", f"TCP-LISTEN:{api_port},bind={NODE_IP},fork,reuseaddr",
                                             f"TCP:127.0.0.1:{api_port}"], api_port)

    def wait_ready(self, timeout_s: float = 120) -> None:
        self._kubectl("wait", "--for=condition=Ready", f"--timeout={int(timeout_s)}s", f"node/{NODE_NAME}",
                      timeout_s=timeout_s + 30)

    def install_volumes(self, count: int = 6, size: str = "2Gi") -> None:
        """The node's storage, as minikube's hostpath provisioner gives it: PersistentVolumes on the
        node's disk for the StatefulSets' claims (no storage class: claims without one bind them)."""
        shutil.rmtree(self.paths.volumes, ignore_errors=True)
        items = []
        for index in range(count):
            folder = self.paths.volumes / f"pv{index}"
            folder.mkdir(parents=True)
            folder.chmod(0o777)  # any pod user may write, like the hostpath provisioner's folders
            items.append({"apiVersion": "v1", "kind": "PersistentVolume",
                          "metadata": {"name": f"{NODE_NAME}-pv{index}",
                                       "labels": {"app.kubernetes.io/part-of": "purchase-node"}},
                          "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                                   "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                                   "hostPath": {"path": str(folder), "type": "Directory"}}})
        self._kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def drain_pods(self, timeout_s: float = 90) -> None:
        """Cordon the node and delete every pod on it, so kubelet tears sandboxes down properly
        (CNI DEL, netns, mounts); replacements the controllers create stay Pending."""
        self._kubectl("cordon", NODE_NAME, check=False, timeout_s=30)
        on_node = f"--field-selector=spec.nodeName={NODE_NAME}"
        self._kubectl("delete", "pods", "--all-namespaces", on_node, "--grace-period=5", "--wait=false",
                      check=False, timeout_s=60)

        def drained() -> bool:
            out = self._kubectl("get", "pods", "--all-namespaces", on_node, "-o", "name", check=False, timeout_s=30)
            return out.returncode == 0 and not out.stdout.strip()
        try:
            poll_until(drained, timeout_s, 1, "no pod left on the node")
        except TimeoutError:
            say("pods still on the node after the drain; stopping the runtime anyway")
