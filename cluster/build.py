"""Build (once) the real control-plane binaries from the Go module proxy, cached under <cache>/cluster/
(tools.common.CACHE_DIR, outside the clone).

- kube-apiserver, kube-controller-manager and kubectl: from k8s.io/kubernetes at
  KUBERNETES_VERSION through the wrapper module in cluster/kube/ (its go.mod pins every
  k8s.io staging module to the matching v0.x release, which `go install` cannot do).
- keda-operator and keda-adapter: github.com/kedacore/keda/v2 at KEDA_VERSION, `cmd/operator`
  and `cmd/adapter`, built inside a copy of the downloaded module (its go.mod has replace
  directives, which only apply there).
- etcd: Debian's etcd-server package (installed with apt-get when missing and run as root).

Builds run under `nice -n 19` with CLUSTER_BUILD_JOBS parallel compiles (default 2); a
binary is rebuilt only when it is missing or its stamp names another version.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from tools.common import CACHE_DIR, ROOT, speaker

CACHE = CACHE_DIR / "cluster"
BIN = CACHE / "bin"
SRC = CACHE / "src"
KUBE_MODULE_DIR = Path(__file__).resolve().parent / "kube"
KUBERNETES_VERSION = "v1.37.2"
KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_VERSION = "v2.20.1"
BINARY_SHA_LABEL = "dev.purchase-system.binary-sha256"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet", "kubectl")


say = speaker("cluster")


def _go_env() -> dict:
    return dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod")


def _jobs() -> str:
    return os.environ.get("CLUSTER_BUILD_JOBS", "2")


def _run(argv: list[str], cwd: Path, log: Path, timeout_s: float) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}  (in {cwd})\n".encode())
        out.flush()
        result = subprocess.run(argv, cwd=cwd, env=_go_env(), stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout_s)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}); log {log}:\n{tail}")


def _stamp_ok(name: str, version: str) -> bool:
    stamp = BIN / f"{name}.version"
    return (BIN / name).exists() and stamp.exists() and stamp.read_text().strip() == version


def _stamp(name: str, version: str) -> None:
    (BIN / f"{name}.version").write_text(version + "\n")


def _kube_ldflags() -> str:
    """What Kubernetes' own build stamps in, so `kubectl version` and /version tell the release
    (KEDA reads the server version at start)."""
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    values = {"gitVersion": KUBERNETES_VERSION, "gitMajor": major, "gitMinor": minor,
              "gitCommit": "module-proxy", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z"}
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in values.items()]
    return " ".join(flags)


def ensure_kube() -> dict[str, Path]:
    """kube-apiserver, kube-controller-manager and kubectl at KUBERNETES_VERSION."""
    if all(_stamp_ok(cmd, KUBERNETES_VERSION) for cmd in KUBE_COMMANDS):
        return {cmd: BIN / cmd for cmd in KUBE_COMMANDS}
    if shutil.which("go") is None:
        raise RuntimeError("building Kubernetes needs 'go' (1.26+) on PATH")
    BIN.mkdir(parents=True, exist_ok=True)
    say(f"building kube-apiserver, kube-controller-manager and kubectl {KUBERNETES_VERSION} "
        f"from the Go module proxy (first run: ~15 min on 2 cores; log {CACHE / 'logs' / 'build-kube.log'})")
    started = time.monotonic()
    out = BIN / "kube.tmp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    _run(["nice", "-n", "19", "go", "build", "-p", _jobs(), f"-ldflags={_kube_ldflags()}", "-o", str(out) + "/",
          *(f"k8s.io/kubernetes/cmd/{cmd}" for cmd in KUBE_COMMANDS)],
         cwd=KUBE_MODULE_DIR, log=CACHE / "logs" / "build-kube.log", timeout_s=7200)
    for cmd in KUBE_COMMANDS:
        os.replace(out / cmd, BIN / cmd)
        _stamp(cmd, KUBERNETES_VERSION)
    out.rmdir()
    say(f"built Kubernetes binaries in {time.monotonic() - started:.0f}s")
    return {cmd: BIN / cmd for cmd in KUBE_COMMANDS}


def module_dir(module: str, version: str) -> Path:
    """A module downloaded (read-only) into Go's module cache."""
    result = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"],
                            env=_go_env(), capture_output=True, text=True, timeout=1800, cwd=ROOT)
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or info.get("Error") or not info.get("Dir"):
        raise RuntimeError(f"go mod download {module}@{version} failed: {info.get('Error')} {result.stderr}")
    return Path(info["Dir"])


def writable_module_copy(module: str, version: str) -> Path:
    """A writable copy of a downloaded module under SRC, to build in: a module whose go.mod has
    replace directives builds only from its own folder (`go install module@version` refuses it)."""
    source = SRC / f"{module.replace('/', '_')}@{version}"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(module_dir(module, version), source)
    for path in [source, *source.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    return source


def keda_module_dir() -> Path:
    """The downloaded (read-only) KEDA module: its config/crd and config/rbac are applied from here."""
    return module_dir(KEDA_MODULE, KEDA_VERSION)


# KEDA's metrics adapter serves its own /metrics with `fmt.Sprintf(":%v", port)`, i.e. on every
# interface, and has no flag for the address. This is the one line changed in KEDA's source
# (in the build copy only), so that everything here binds 127.0.0.1.
ADAPTER_MAIN = "cmd/adapter/main.go"
ADAPTER_BIND = ('metricsBindAddress := fmt.Sprintf(":%v", metricsAPIServerPort)',
                'metricsBindAddress := fmt.Sprintf("127.0.0.1:%v", metricsAPIServerPort)')
KEDA_COMMANDS = {"keda-operator": "./cmd/operator", "keda-adapter": "./cmd/adapter"}


def ensure_keda() -> dict[str, Path]:
    """KEDA's operator and metrics adapter, built inside a writable copy of its module (so its
    replace directives apply)."""
    if all(_stamp_ok(name, KEDA_VERSION) for name in KEDA_COMMANDS):
        return {name: BIN / name for name in KEDA_COMMANDS}
    if shutil.which("go") is None:
        raise RuntimeError("building KEDA needs 'go' (1.26+) on PATH")
    BIN.mkdir(parents=True, exist_ok=True)
    log = CACHE / "logs" / "build-keda.log"
    say(f"building KEDA operator and metrics adapter {KEDA_VERSION} from the Go module proxy "
        f"(first run: ~6-15 min; log {log})")
    started = time.monotonic()
    source = writable_module_copy(KEDA_MODULE, KEDA_VERSION)
    main_go = source / ADAPTER_MAIN
    text = main_go.read_text()
    if text.count(ADAPTER_BIND[0]) != 1:
        raise RuntimeError(f"{ADAPTER_MAIN} of KEDA {KEDA_VERSION} changed: cannot bind its /metrics to loopback")
    main_go.write_text(text.replace(*ADAPTER_BIND))
    ldflags = (f"-s -w -X {KEDA_MODULE}/version.Version={KEDA_VERSION.lstrip('v')} "
               f"-X {KEDA_MODULE}/version.GitCommit=module-proxy")
    out = BIN / "keda.tmp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for name, package in KEDA_COMMANDS.items():
        _run(["nice", "-n", "19", "go", "build", "-p", _jobs(), f"-ldflags={ldflags}", "-o", str(out / name),
              package], cwd=source, log=log, timeout_s=7200)
    for name in KEDA_COMMANDS:
        os.replace(out / name, BIN / name)
        _stamp(name, KEDA_VERSION)
    out.rmdir()
    shutil.rmtree(source, ignore_errors=True)
    say(f"built KEDA in {time.monotonic() - started:.0f}s")
    return {name: BIN / name for name in KEDA_COMMANDS}


COREDNS_MODULE = "github.com/coredns/coredns"
COREDNS_VERSION = "v1.15.0"


def ensure_coredns() -> Path:
    """CoreDNS, the cluster's DNS server (its module has no replace directives: `go install` works)."""
    if _stamp_ok("coredns", COREDNS_VERSION):
        return BIN / "coredns"
    if shutil.which("go") is None:
        raise RuntimeError("building CoreDNS needs 'go' (1.26+) on PATH")
    BIN.mkdir(parents=True, exist_ok=True)
    log = CACHE / "logs" / "build-coredns.log"
    say(f"building CoreDNS {COREDNS_VERSION} from the Go module proxy (first run: ~3-5 min; log {log})")
    started = time.monotonic()
    out = BIN / "coredns.tmp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    # `go install module@version` takes no -mod flag and writes to GOBIN.
    _run(["env", "GOFLAGS=", f"GOBIN={out}", "nice", "-n", "19", "go", "install", "-p", _jobs(), "-ldflags=-s -w",
          f"{COREDNS_MODULE}@{COREDNS_VERSION}"], cwd=ROOT, log=log, timeout_s=3600)
    os.replace(out / "coredns", BIN / "coredns")
    _stamp("coredns", COREDNS_VERSION)
    out.rmdir()
    say(f"built CoreDNS in {time.monotonic() - started:.0f}s")
    return BIN / "coredns"


def ensure_etcd() -> Path:
    """etcd from Debian's etcd-server package (installed here if missing and we are root)."""
    found = shutil.which("etcd")
    if found:
        return Path(found)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing Debian's etcd-server (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server"], env=env, check=True, timeout=900)
        found = shutil.which("etcd")
        if found:
            return Path(found)
    raise RuntimeError("etcd not found: install Debian's etcd-server package (apt-get install etcd-server)")


def ensure_all() -> dict[str, Path]:
    paths = {"etcd": ensure_etcd()}
    paths.update(ensure_kube())
    paths.update(ensure_keda())
    paths["coredns"] = ensure_coredns()
    return paths


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _buildah(*args: str, timeout_s: float = 300) -> str:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def _image_label(ref: str, label: str) -> str | None:
    result = subprocess.run(["podman", "image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', ref],
                            capture_output=True, text=True, timeout=60)
    return result.stdout.strip() if result.returncode == 0 else None


def pack_scratch_image(ref: str, binary: Path, entrypoint: str, user: str, labels: dict[str, str]) -> None:
    """`buildah from scratch` + a static binary + the host's CA bundle, in podman's storage as
    `ref`, labelled with the binary's sha256 so that an unchanged binary is not packed again."""
    if shutil.which("buildah") is None or shutil.which("podman") is None:
        raise RuntimeError(f"packing {ref} needs buildah and podman")
    binary_sha = _sha256(binary)
    if _image_label(ref, BINARY_SHA_LABEL) == binary_sha:
        return
    say(f"packing {ref}")
    container = _buildah("from", "--quiet", "scratch")
    try:
        _buildah("copy", "--quiet", "--chmod", "0755", container, str(binary), entrypoint)
        # Go reads this file for TLS roots (the API server's CA comes from the service-account
        # mount; this covers any other HTTPS a component makes).
        _buildah("copy", "--quiet", "--chmod", "0644", container, str(HOST_CA_BUNDLE),
                 "/etc/ssl/certs/ca-certificates.crt")
        _buildah("config", "--entrypoint", json.dumps([entrypoint]), "--user", user,
                 "--label", f"{BINARY_SHA_LABEL}={binary_sha}",
                 *(arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")), container)
        # A fixed timestamp: the same binary gives the same image ID, so the node does not load
        # an unchanged image again.
        _buildah("commit", "--quiet", "--timestamp", "0", container, ref, timeout_s=600)
    finally:
        _buildah("rm", container)
