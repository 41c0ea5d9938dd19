"""Traefik, the node's ingress: one binary serving Knative's KIngress (its experimental
`knative` provider) and plain Kubernetes Ingress (`kubernetesIngress`), built from the Go module
proxy and packed as a local image.

- Binary: github.com/traefik/traefik/v3 at TRAEFIK_VERSION, `./cmd/traefik`, built inside a
  writable copy of the downloaded module (its go.mod has replace directives, which only apply
  there; `go install module@version` refuses them), cached in build.BIN with a version stamp.
  v3.7 needs a nested module the proxy does not serve; 3.6 is the line with the Knative provider.
  The web UI's assets are a placeholder in the module (the dashboard is empty; not served here).
- Image: `FROM scratch` + the static binary + the host CA bundle, non-root, packed like
  Knative's (cluster/knative.py) as localhost/ingress/traefik:<version>.

The Deployment, its RBAC and Services are objects of the node overlay (k8s/overlays/node/traefik/).

`python -m cluster.traefik` builds both and prints the image reference.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from . import build

TRAEFIK_MODULE = "github.com/traefik/traefik/v3"
TRAEFIK_VERSION = "v3.6.12"
IMAGE = f"localhost/ingress/traefik:{TRAEFIK_VERSION}"
BINARY = "traefik"
# The non-root user the Deployment runs as (k8s/overlays/node/traefik/deployment.yaml).
USER = "65532:65532"


def ensure_traefik() -> Path:
    """The traefik binary at TRAEFIK_VERSION (built once; ~5-15 min cold on 2 cores)."""
    if build._stamp_ok(BINARY, TRAEFIK_VERSION):
        return build.BIN / BINARY
    if shutil.which("go") is None:
        raise RuntimeError("building Traefik needs 'go' (1.24+) on PATH")
    build.BIN.mkdir(parents=True, exist_ok=True)
    log = build.CACHE / "logs" / "build-traefik.log"
    build.say(f"building Traefik {TRAEFIK_VERSION} from the Go module proxy (first run: ~5-15 min; log {log})")
    started = time.monotonic()
    source = build.writable_module_copy(TRAEFIK_MODULE, TRAEFIK_VERSION)
    package = f"{TRAEFIK_MODULE}/pkg/version"
    ldflags = (f"-s -w -X {package}.Version={TRAEFIK_VERSION.lstrip('v')} -X {package}.Codename=module-proxy "
               f"-X {package}.BuildDate=1970-01-01T00:00:00Z")
    out = build.BIN / "traefik.tmp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    build._run(["nice", "-n", "19", "go", "build", "-p", build._jobs(), "-trimpath", f"-ldflags={ldflags}",
                "-o", str(out / BINARY), "./cmd/traefik"], cwd=source, log=log, timeout_s=7200)
    (out / BINARY).replace(build.BIN / BINARY)
    build._stamp(BINARY, TRAEFIK_VERSION)
    out.rmdir()
    shutil.rmtree(source, ignore_errors=True)
    build.say(f"built Traefik in {time.monotonic() - started:.0f}s")
    return build.BIN / BINARY


def ensure_traefik_image() -> str:
    """The image in podman's storage (packed again only when the binary changed)."""
    binary = ensure_traefik()
    build.pack_scratch_image(IMAGE, binary, "/usr/local/bin/traefik", user=USER,
                             labels={"org.opencontainers.image.version": TRAEFIK_VERSION,
                                     "org.opencontainers.image.source": f"https://{TRAEFIK_MODULE}"})
    return IMAGE


def main() -> int:
    started = time.monotonic()
    print(ensure_traefik_image())
    print(f"done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
