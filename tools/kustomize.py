"""The standalone kustomize, for rendering the overlays of k8s/ without a cluster or kubectl
(tests/k8s, tests/cluster). Deploying does not use it: `kubectl apply -k` has its own.

    python -m tools.kustomize build k8s/overlays/node     # any kustomize arguments

It is built once from the Go module proxy into the cache outside the clone
(tools.common.CACHE_DIR), at the version kubectl v1.37.2 embeds, which cluster/kube/go.mod
pins: the tests render exactly what the node's `kubectl apply -k` applies.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tools.common import CACHE_DIR, ROOT, go_install, sh

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
    return go_install(MODULE, VERSION, "kustomize", timeout_s=BUILD_TIMEOUT_S)


def build(path: Path | str) -> str:
    """`kustomize build PATH`: the rendered objects as one YAML stream."""
    return sh(str(ensure()), "build", str(path), timeout_s=RUN_TIMEOUT_S)


def main(argv: list[str]) -> int:
    return subprocess.run([str(ensure()), *argv], timeout=RUN_TIMEOUT_S).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
