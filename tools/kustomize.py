"""The standalone kustomize, for rendering the overlays of k8s/ without a cluster or kubectl
(tests/k8s, tests/cluster). Deploying does not use it: `kubectl apply -k` has its own.

    python -m tools.kustomize build k8s/overlays/node     # any kustomize arguments

It is built once from the Go module proxy into the cache outside the clone
(devstack.servers.CACHE_DIR), at the version kubectl v1.37.2 embeds, which cluster/kube/go.mod
pins: the tests render exactly what the node's `kubectl apply -k` applies.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devstack.servers import CACHE_DIR, run_checked, say

ROOT = Path(__file__).resolve().parent.parent
MODULE = "sigs.k8s.io/kustomize/kustomize/v5"
BUILD_TIMEOUT_S = 900
RUN_TIMEOUT_S = 120


def kubectl_version() -> str:
    """The kustomize version kubectl's module requires (cluster/kube/go.mod)."""
    go_mod = (ROOT / "cluster" / "kube" / "go.mod").read_text()
    match = re.search(rf"^\s*{re.escape(MODULE)}\s+(v\S+)", go_mod, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"cluster/kube/go.mod names no {MODULE}")
    return match.group(1)


VERSION = kubectl_version()
HOME = CACHE_DIR / f"kustomize-{VERSION}"
BINARY = HOME / "kustomize"


def ensure() -> Path:
    """The binary, built when missing (about 40 s with a cold module cache)."""
    marker = HOME / ".complete"
    if BINARY.exists() and marker.exists() and marker.read_text().strip() == VERSION:
        return BINARY
    if shutil.which("go") is None:
        raise RuntimeError("kustomize is built with Go; 'go' is not on PATH")
    say(f"building kustomize {VERSION} from the Go module proxy (first run only, under a minute)")
    started = time.monotonic()
    HOME.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="build-", dir=HOME))  # a concurrent build has its own
    try:
        # `go install module@version` takes no -mod flag; GOTOOLCHAIN=local fails at once
        # instead of fetching a newer Go should the module ever ask for one.
        env = dict(os.environ, GOBIN=str(out), GOFLAGS="", CGO_ENABLED="0", GOTOOLCHAIN="local")
        run_checked(["go", "install", "-ldflags=-s -w", f"{MODULE}@{VERSION}"], env=env, timeout_s=BUILD_TIMEOUT_S)
        os.replace(out / "kustomize", BINARY)
        marker.write_text(VERSION + "\n")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    say(f"kustomize built in {time.monotonic() - started:.0f}s")
    return BINARY


def build(path: Path | str) -> str:
    """`kustomize build PATH`: the rendered objects as one YAML stream."""
    return run_checked([str(ensure()), "build", str(path)], timeout_s=RUN_TIMEOUT_S)


def main(argv: list[str]) -> int:
    return subprocess.run([str(ensure()), *argv], timeout=RUN_TIMEOUT_S).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
