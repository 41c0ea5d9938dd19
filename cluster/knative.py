"""Knative Serving for the node: its five components built from the Go module proxy, packed as
local images, and its own config/core manifests with only the changes this node needs.

- Binaries: knative.dev/serving at KNATIVE_VERSION (Serving 1.23; its go.mod has no replace
  directives, so `go install module/cmd/x@version` builds the released module graph as is),
  cached in build.BIN as knative-<component>, each with a version stamp.
- Images: `buildah from scratch` + the static binary + the host's CA bundle, user 65532, in
  podman's storage as localhost/knative-serving/<component>:<version>, labelled with the
  binary's sha256 so an unchanged binary is not packed again.
- Manifests: config/core of the same downloaded module in upstream's install order, with the
  files upstream keeps as symlinks into knative.dev/networking and knative.dev/caching (a module
  zip drops symlinks) read from those modules at the versions Serving's go.mod pins; edited
  in memory, each edit explained in _edit_document.

`python -m cluster.knative [--overlay test]` builds everything and prints the image references.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tools.common import CRDS_DIR, ROOT

from . import build

KNATIVE_MODULE = "knative.dev/serving"
KNATIVE_VERSION = "v0.50.0"  # Knative Serving 1.23, the release of the CRDs in ../shared/crds
KNATIVE_COMPONENTS = ("controller", "webhook", "activator", "autoscaler", "queue")
LOG = build.CACHE / "logs" / "build-knative.log"
IMAGE_REPOSITORY = "localhost/knative-serving"

# Shared CRD file -> the file of config/core/300-resources it must equal byte for byte.
SHARED_CRDS = {"serving.knative.dev_services.yaml": "service.yaml",
               "serving.knative.dev_domainmappings.yaml": "domain-mapping.yaml"}

# Upstream's config/core has these as symlinks into its vendor/ folder; the module zip has
# none of them. Path in config/core -> (module, file in that module).
SYMLINKED_FILES = {
    "300-imagecache.yaml": ("knative.dev/caching", "config/image.yaml"),
    "300-resources/certificate.yaml": ("knative.dev/networking", "config/certificate.yaml"),
    # ClusterDomainClaim: the controller's DomainMapping reconciler watches it, and a controller
    # whose informer has no CRD never starts.
    "300-resources/domain-claim.yaml": ("knative.dev/networking", "config/domain-claim.yaml"),
    "300-resources/ingress.yaml": ("knative.dev/networking", "config/ingress.yaml"),
    "300-resources/serverlessservice.yaml": ("knative.dev/networking", "config/serverlessservice.yaml"),
    "configmaps/network.yaml": ("knative.dev/networking", "config/config-network.yaml"),
}

# The networking layer: Traefik's knative provider (cluster/traefik.py; deployed by the node
# overlay, k8s/overlays/node/traefik/) claims this class, routes each KIngress and marks it
# Ready. Kourier, Istio, Contour and net-gateway-api cannot be built from the Go module proxy.
INGRESS_CLASS = "traefik.ingress.networking.knative.dev"

# Upstream's defaults plus `localhost`, the registry of the node's own images: the
# controller never contacts a registry to turn these tags into digests.
REGISTRIES_SKIPPING_TAG_RESOLVING = "kind.local,ko.local,dev.local,localhost"

# Test overlay: decisions in seconds rather than minutes (the Revision annotations of
# k8s/knative, window and scale-down-delay, still override the first per Revision).
TEST_AUTOSCALER = {
    "stable-window": "10s",               # upstream 60s; 6s is the minimum it accepts
    # upstream 30s: the longest wait, once scale to zero is decided, for the activator to be in the path
    "scale-to-zero-grace-period": "5s",
    "scale-to-zero-pod-retention-period": "0s",  # upstream 0s; explicit so a test reads it here
}


def _go_env() -> dict:
    # build._go_env sets GOFLAGS=-mod=mod, which `go install pkg@version` and
    # `go mod download` outside a module refuse.
    return dict(build._go_env(), GOFLAGS="")


def _binary_name(component: str) -> str:
    # Prefixed so they never collide with the other binaries in the shared build.BIN.
    return f"knative-{component}"


@functools.cache
def _module_dir(module: str, version: str) -> Path:
    result = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], env=_go_env(),
                            capture_output=True, text=True, timeout=1800, cwd=ROOT)
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or info.get("Error") or not info.get("Dir"):
        raise RuntimeError(f"go mod download {module}@{version} failed: {info.get('Error')} {result.stderr}")
    return Path(info["Dir"])


def knative_module_dir() -> Path:
    """The downloaded (read-only) Serving module; its config/core is what gets installed."""
    return _module_dir(KNATIVE_MODULE, KNATIVE_VERSION)


def _serving_go_mod(serving_dir: Path) -> str:
    go_mod = (serving_dir / "go.mod").read_text()
    if re.search(r"^\s*replace\b", go_mod, re.MULTILINE):
        raise RuntimeError(f"{KNATIVE_MODULE}@{KNATIVE_VERSION} go.mod has replace directives: "
                           "`go install module@version` would ignore them (build in a copy, as ensure_keda does)")
    return go_mod


def _pinned_version(serving_dir: Path, module: str) -> str:
    """The version of `module` Serving's go.mod requires (what its vendor/ folder holds upstream)."""
    go_mod = _serving_go_mod(serving_dir)
    found = re.search(rf"^\s+{re.escape(module)} (\S+)", go_mod, re.MULTILINE)
    if not found:
        raise RuntimeError(f"{KNATIVE_MODULE} go.mod does not require {module}")
    return found.group(1)


def ensure_knative() -> dict[str, Path]:
    """Knative Serving's controller, webhook, activator, autoscaler and queue-proxy binaries."""
    paths = {component: build.BIN / _binary_name(component) for component in KNATIVE_COMPONENTS}
    if all(build._stamp_ok(_binary_name(c), KNATIVE_VERSION) for c in KNATIVE_COMPONENTS):
        return paths
    if shutil.which("go") is None:
        raise RuntimeError("building Knative Serving needs 'go' (1.25+) on PATH")
    _serving_go_mod(knative_module_dir())
    build.BIN.mkdir(parents=True, exist_ok=True)
    build.say(f"building Knative Serving {KNATIVE_VERSION} ({', '.join(KNATIVE_COMPONENTS)}) from the Go "
              f"module proxy (first run: ~10-20 min on 2 cores; log {LOG})")
    started = time.monotonic()
    out = build.BIN / "knative.tmp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    # One `go install` for the five commands of one module version: no wrapper module needed.
    # It writes to GOBIN, takes no -mod flag (hence GOFLAGS=), and CGO_ENABLED=0 from
    # build._go_env makes static binaries for a scratch image.
    build._run(["env", "GOFLAGS=", f"GOBIN={out}", "nice", "-n", "19", "go", "install", "-p", build._jobs(),
                "-trimpath", "-ldflags=-s -w",
                *(f"{KNATIVE_MODULE}/cmd/{component}@{KNATIVE_VERSION}" for component in KNATIVE_COMPONENTS)],
               cwd=ROOT, log=LOG, timeout_s=7200)
    for component in KNATIVE_COMPONENTS:
        os.replace(out / component, paths[component])
        build._stamp(_binary_name(component), KNATIVE_VERSION)
    out.rmdir()
    build.say(f"built Knative Serving in {time.monotonic() - started:.0f}s")
    return paths


def image_ref(component: str) -> str:
    return f"{IMAGE_REPOSITORY}/{component}:{KNATIVE_VERSION}"


def ensure_knative_images() -> dict[str, str]:
    """One image per component in podman's storage: component -> image reference."""
    binaries = ensure_knative()
    refs = {}
    for component, binary in binaries.items():
        refs[component] = image_ref(component)
        # Where ko puts the binary in upstream's images, so paths in logs and docs match; user
        # 65532 is the non-root user of ko's default base images.
        build.pack_scratch_image(refs[component], binary, f"/ko-app/{component}", user="65532:65532",
                                 labels={"org.opencontainers.image.version": KNATIVE_VERSION,
                                         "org.opencontainers.image.source": f"https://{KNATIVE_MODULE}/cmd/{component}"})
    return refs


def _walk_order(name: str) -> list[str]:
    # Each folder's entries sorted by name, as Go's filepath.Walk visits them.
    return name.split("/")


def _config_core_files(serving_dir: Path) -> list[tuple[str, Path]]:
    """config/core's YAML files as (path in config/core, file), CRDs first and then the rest in
    the lexical walk order `ko resolve -R -f config/core` uses: upstream's serving-crds.yaml,
    then serving-core.yaml (a CR cannot be applied before its CRD is established)."""
    core = serving_dir / "config" / "core"
    files = {str(path.relative_to(core)): path for path in core.rglob("*.yaml")}
    for name, (module, module_path) in SYMLINKED_FILES.items():
        if name in files:
            raise RuntimeError(f"config/core/{name} is now in {KNATIVE_MODULE}@{KNATIVE_VERSION}: "
                               "drop it from SYMLINKED_FILES")
        files[name] = _module_dir(module, _pinned_version(serving_dir, module)) / module_path
    crd_names = sorted((name for name in files if name.startswith("300-resources/") or name == "300-imagecache.yaml"),
                       key=_walk_order)
    others = sorted(set(files) - set(crd_names), key=_walk_order)
    return [(name, files[name]) for name in [*crd_names, *others]]


def _skipped_shared_crds(serving_dir: Path) -> set[str]:
    """The CRD files the cluster applies from CRDS_DIR; each must equal upstream's byte
    for byte, or the two would fight over the same CRD."""
    skipped = set()
    for shared_name, upstream_name in SHARED_CRDS.items():
        shared = CRDS_DIR / shared_name
        upstream = serving_dir / "config" / "core" / "300-resources" / upstream_name
        if shared.read_bytes() != upstream.read_bytes():
            raise RuntimeError(f"{shared} differs from {KNATIVE_MODULE}@{KNATIVE_VERSION} "
                               f"config/core/300-resources/{upstream_name}: they must be the same release")
        skipped.add(f"300-resources/{upstream_name}")
    return skipped


def _ko_component(image: str) -> str | None:
    prefix = f"ko://{KNATIVE_MODULE}/cmd/"
    return image[len(prefix):] if image.startswith(prefix) else None


def _edit_document(doc: dict, images: dict[str, str], overlay: str) -> None:
    """The only changes made to upstream's objects."""
    kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
    if kind == "Deployment":
        for container in doc["spec"]["template"]["spec"]["containers"]:
            component = _ko_component(container["image"])
            if component:
                # `ko://` is resolved by ko at release time; here, the image packed on this node.
                container["image"] = images[component]
                # The node's containerd has the image loaded; there is no registry to pull from.
                container["imagePullPolicy"] = "IfNotPresent"
    elif kind == "Image" and _ko_component(doc["spec"]["image"]):
        # The queue-proxy image-cache object: same local image (no caching controller runs here).
        doc["spec"]["image"] = images[_ko_component(doc["spec"]["image"])]
    elif kind == "ConfigMap" and name == "config-deployment":
        # The sidecar the controller injects into every Revision pod.
        doc["data"]["queue-sidecar-image"] = images[_ko_component(doc["data"]["queue-sidecar-image"])]
        doc["data"]["registries-skipping-tag-resolving"] = REGISTRIES_SKIPPING_TAG_RESOLVING
    elif kind == "ConfigMap" and name == "config-network":
        # Traefik's class instead of upstream's default, Istio's.
        doc.setdefault("data", {})["ingress-class"] = INGRESS_CLASS
    elif kind == "ConfigMap" and name == "config-autoscaler" and overlay == "test":
        doc.setdefault("data", {}).update(TEST_AUTOSCALER)


def _load_documents(images: dict[str, str], overlay: str) -> list[tuple[str, dict]]:
    if overlay not in ("default", "test"):
        raise ValueError(f"unknown overlay {overlay!r} (default, test)")
    missing = set(KNATIVE_COMPONENTS) - set(images)
    if missing:
        raise ValueError(f"no image for {', '.join(sorted(missing))}")
    serving_dir = knative_module_dir()
    skipped = _skipped_shared_crds(serving_dir)
    documents = []
    for name, path in _config_core_files(serving_dir):
        if name in skipped:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                _edit_document(doc, images, overlay)
                documents.append((name, doc))
    leftover = [f"{name}: {doc['kind']}/{doc['metadata']['name']}" for name, doc in documents
                if "ko://" in yaml.safe_dump(doc)]
    if leftover:
        raise RuntimeError(f"ko:// references left unreplaced: {leftover}")
    return documents


class _BlockStringDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMaps' _example blocks) as `|` blocks, readable as upstream;
    number-like strings quoted, since kubectl's YAML reads e.g. 1e5 as a number where PyYAML does not."""


_NUMBER_LIKE = re.compile(r"[-+]?[0-9_.]+([eE][-+]?[0-9]+)?|0[xXoObB][0-9a-fA-F_]+")


def _represent_string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else '"' if _NUMBER_LIKE.fullmatch(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStringDumper.add_representer(str, _represent_string)


def _dump(documents: list[tuple[str, dict]]) -> str:
    return "".join(f"---\n# config/core/{name}\n"
                   + yaml.dump(doc, Dumper=_BlockStringDumper, sort_keys=False, width=1000, allow_unicode=True)
                   for name, doc in documents)


def knative_manifests(images: dict[str, str], overlay: str = "default") -> str:
    """Serving's config/core as one stream for `kubectl apply -f -`: CRDs first (apply them and
    wait for Established, e.g. with knative_crds(), before the rest: a CR in the same apply as
    its new CRD is rejected), without the CRDs the cluster applies from CRDS_DIR."""
    return _dump(_load_documents(images, overlay))


def knative_crds() -> str:
    """Only the CustomResourceDefinitions of knative_manifests, to apply (and wait for) first."""
    placeholder = {component: image_ref(component) for component in KNATIVE_COMPONENTS}
    return _dump([(name, doc) for name, doc in _load_documents(placeholder, "default")
                  if doc["kind"] == "CustomResourceDefinition"])


def main(argv: list[str]) -> int:
    overlay = argv[argv.index("--overlay") + 1] if "--overlay" in argv else "default"
    started = time.monotonic()
    images = ensure_knative_images()
    stream = knative_manifests(images, overlay)
    for component, ref in images.items():
        print(f"{component:<11} {ref}")
    kinds: dict[str, int] = {}
    for doc in yaml.safe_load_all(stream):
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
    print(f"manifests ({overlay}): {sum(kinds.values())} documents: "
          + ", ".join(f"{count} {kind}" for kind, count in kinds.items()))
    print(f"done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
