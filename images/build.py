"""Build the project's container images with podman, on a machine without Docker Hub.

* a local Python base with the role of python:3.11-slim (Debian bookworm from deb.debian.org
  via mmdebstrap, trusting the host's CA bundle so pip reaches PyPI through it);
* the three function images from functions/Dockerfile, as `make build` builds them, with
  PYTHON_IMAGE pointed at it;
* substitutes for the upstream images the node cannot pull (images/substitutes/*/README.md).

Root filesystems and stamps are cached in $PURCHASE_CACHE_DIR/images/ (outside the clone).
An image whose `purchase.stamp` label matches the hash of everything it is built from is not
built again, so a warm run only inspects podman's storage.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devstack import oidc, servers, zipkin
from tools.common import CACHE_DIR, ROOT, exclusive, fetch_maven_jars, speaker

CACHE = CACHE_DIR / "images"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
STAMP_LABEL = "purchase.stamp"

SUITE = "bookworm"
MIRRORS = ["deb http://deb.debian.org/debian bookworm main",
           "deb http://deb.debian.org/debian bookworm-updates main",
           "deb http://deb.debian.org/debian-security bookworm-security main"]

PYTHON_BASE = "localhost/purchase/python-base:3.11-bookworm"
JRE_BASE = "localhost/purchase/jre-base:17-bookworm"
DEBIAN_BASE = "localhost/purchase/debian-base:bookworm"
POSTGRESQL_BASE = "localhost/purchase/postgresql-base:15-bookworm"
KAFKA_IMAGE = f"localhost/purchase-substitute/kafka:{servers.KAFKA_VERSION}"
MONGODB_IMAGE = f"localhost/purchase-substitute/mongodb:ferretdb-{servers.FERRETDB_VERSION.lstrip('v')}"
PAUSE_IMAGE = "localhost/purchase-substitute/pause:catatonit"
OIDC_IMAGE = f"localhost/purchase-substitute/mock-oauth2-server:{oidc.VERSION}"
ZIPKIN_IMAGE = f"localhost/purchase-substitute/zipkin:{zipkin.VERSION}"

# Image name -> (FUNCTION, the folder under functions/; target, the stage of functions/Dockerfile),
# the build arguments mk/deploy.mk's build-<name> passes.
FUNCTION_DOCKERFILE = ROOT / "functions" / "Dockerfile"
FUNCTION_BUILDS = {"buy": ("buy", "http-function"), "history": ("history", "http-function"),
                   "persist-purchase": ("persist_purchase", "consumer")}
SUBSTITUTES = ROOT / "images" / "substitutes"

# Root filesystems: name -> (image, packages, trust the host CA, image config).
ROOTFS = {
    "python-base": (PYTHON_BASE, ["python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd"], True,
                    ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
                     'CMD ["python3"]']),
    "jre-base": (JRE_BASE, ["openjdk-17-jre-headless", "ca-certificates", "passwd"], True,
                 ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8"]),
    "debian-base": (DEBIAN_BASE, ["passwd"], False,
                    ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
    # The MongoDB substitute's store: Debian's PostgreSQL 15 under FerretDB (devstack/ferretdb_store.sh).
    "postgresql-base": (POSTGRESQL_BASE, ["postgresql-15", "passwd"], False,
                        ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8"]),
}

# Like the slim images: no manuals, docs or translations in a container.
DPKG_EXCLUDES = ["path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*",
                 "path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/locale/*",
                 "path-exclude=/usr/share/info/*"]

POSTGRESQL_JIT_FILES = ("/usr/lib/x86_64-linux-gnu/libLLVM-*", "/usr/lib/x86_64-linux-gnu/libz3.so*",
                        "/usr/lib/postgresql/15/lib/llvmjit*", "/usr/lib/postgresql/15/lib/bitcode/*")

# Here: no systemd and no CAP_SYS_RESOURCE, so crun and podman's default rlimits fail.
CONTAINERS_CONF = """# Written by images/build.py; podman reads it through CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""
# Builds use the host's network: netavark's bridge is not needed to reach the registries.
BUILD_FLAGS = ["--network", "host"]


say = speaker("images")


def podman_env() -> dict:
    """The environment every podman call of the project runs with (also the node's loader)."""
    conf = CACHE / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(CONTAINERS_CONF)
    return dict(os.environ, CONTAINERS_CONF=str(conf))


def podman_build_flags() -> list[str]:
    """`make build DOCKER=podman DOCKER_BUILD_FLAGS=...` equivalent of podman_env() + BUILD_FLAGS."""
    return ["--runtime", "runc", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768", *BUILD_FLAGS]


def podman(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout_s)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ... failed ({result.returncode}):\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def image_stamp(ref: str) -> str | None:
    result = podman("image", "inspect", "--format", f'{{{{index .Labels "{STAMP_LABEL}"}}}}', ref, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def image_id(ref: str) -> str:
    return podman("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


def digest(*parts: str | bytes | Path) -> str:
    """sha256 over strings, bytes and files/folders (path names and contents, sorted)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for file in files:
                if "__pycache__" in file.parts or any(x.endswith(".egg-info") for x in file.parts) \
                        or "build" in file.relative_to(part if part.is_dir() else file.parent).parts:
                    continue
                h.update(str(file.relative_to(ROOT) if file.is_relative_to(ROOT) else file.name).encode())
                h.update(file.read_bytes())
        else:
            h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


# --- Debian root filesystems ------------------------------------------------------------

def _mmdebstrap_argv(packages: list[str], trust_host_ca: bool, tarball: Path) -> list[str]:
    argv = ["mmdebstrap", "--mode=root", "--variant=minbase", f"--include={','.join(packages)}",
            *[f"--dpkgopt={rule}" for rule in DPKG_EXCLUDES]]
    if any(package.startswith("openjdk-") for package in packages):
        # OpenJDK's postinst registers its man pages with update-alternatives, which fails when
        # the excluded man1 folder does not exist.
        argv += ["--setup-hook", 'mkdir -p "$1/usr/share/man/man1"']
    if "postgresql-15" in packages:
        # The package's postinst makes a "main" cluster; the store makes its own under /data/db.
        # LLVM serves only PostgreSQL's JIT, which the store turns off (jit=off): the largest part of the image.
        argv += ["--customize-hook", 'rm -rf "$1/var/lib/postgresql/15/main" "$1/etc/postgresql/15/main"',
                 *[f"--dpkgopt=path-exclude={path}" for path in POSTGRESQL_JIT_FILES]]
    if trust_host_ca:
        # The host's bundle (with the CA that intercepts TLS here) becomes a local CA of the image;
        # pip gets it too: pip uses its own certifi bundle, not the system store.
        argv += ["--customize-hook",
                 'cp /etc/ssl/certs/ca-certificates.crt "$1/usr/local/share/ca-certificates/host-trusted.crt"',
                 "--customize-hook", 'chroot "$1" update-ca-certificates --fresh >/dev/null',
                 "--customize-hook",
                 "printf '[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n' > \"$1/etc/pip.conf\""]
    return argv + [SUITE, str(tarball), *MIRRORS]


def ensure_rootfs_image(name: str) -> str:
    ref, packages, trust_host_ca, changes = ROOTFS[name]
    tarball = CACHE / "rootfs" / f"{name}.tar"
    partial = tarball.with_suffix(".partial.tar")
    argv = _mmdebstrap_argv(packages, trust_host_ca, partial)
    stamp = digest(json.dumps([argv[:-len(MIRRORS) - 1], MIRRORS, changes]),
                   HOST_CA_BUNDLE.read_bytes() if trust_host_ca else b"")
    if image_stamp(ref) == stamp:
        return ref
    started = time.monotonic()
    stamp_file = tarball.with_suffix(".stamp")
    with exclusive(tarball.with_suffix(".lock")):
        if image_stamp(ref) == stamp:  # built by another process while this one waited
            return ref
        if not (tarball.exists() and stamp_file.exists() and stamp_file.read_text() == stamp):
            if shutil.which("mmdebstrap") is None:
                raise RuntimeError("the local base images are built with mmdebstrap (apt-get install mmdebstrap)")
            say(f"building the {name} root filesystem with mmdebstrap ({', '.join(packages)})")
            tarball.parent.mkdir(parents=True, exist_ok=True)
            result = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
            if result.returncode != 0:
                raise RuntimeError(f"mmdebstrap for {name} failed:\n{result.stderr[-3000:]}")
            os.replace(partial, tarball)
            stamp_file.write_text(stamp)
        change_args = [arg for change in [*changes, f"LABEL {STAMP_LABEL}={stamp}"] for arg in ("--change", change)]
        podman("import", "--quiet", *change_args, str(tarball), ref, timeout_s=600)
    say(f"{ref} ready in {time.monotonic() - started:.0f}s")
    return ref


def ensure_python_base() -> str:
    """The local stand-in for python:3.11-slim: Debian bookworm's Python 3.11 + venv + pip."""
    return ensure_rootfs_image("python-base")


# --- images built from a Dockerfile ------------------------------------------------------

def build_image(ref: str, dockerfile: Path, context: Path, stamp: str, build_args: dict[str, str],
                target: str | None = None, timeout_s: float = 1800) -> str:
    if image_stamp(ref) == stamp:
        return ref
    say(f"building {ref}")
    started = time.monotonic()
    args = [arg for key, value in build_args.items() for arg in ("--build-arg", f"{key}={value}")]
    podman("build", *BUILD_FLAGS, *args, *(["--target", target] if target else []),
           "--label", f"{STAMP_LABEL}={stamp}", "-f", str(dockerfile), "-t", ref, str(context), timeout_s=timeout_s)
    say(f"{ref} built in {time.monotonic() - started:.0f}s")
    return ref


def function_stamp(base_id: str, name: str) -> str:
    """What a function image is built from: the base, functions/Dockerfile, its build arguments,
    the function's folder and the shared package (a change to another function's folder is not)."""
    function, target = FUNCTION_BUILDS[name]
    return digest(base_id, function, target, ROOT / ".dockerignore", FUNCTION_DOCKERFILE,
                  ROOT / "functions" / function, ROOT / "lib" / "purchase_common")


def build_function_images(registry: str = "dev.local/purchase", tag: str = "dev") -> list[str]:
    """The three function images, from functions/Dockerfile on the local Python base."""
    base = ensure_python_base()
    base_id = image_id(base)
    return [build_image(f"{registry}/{name}:{tag}", FUNCTION_DOCKERFILE, ROOT, function_stamp(base_id, name),
                        {"PYTHON_IMAGE": base, "FUNCTION": function}, target=target)
            for name, (function, target) in FUNCTION_BUILDS.items()]


# --- substitutes for upstream images -------------------------------------------------------

def _kafka_tools_jar() -> Path:
    """kafka-tools (TopicCommand, BrokerApiVersionsCommand) without its Connect/Jetty dependencies:
    the broker's jars already hold everything those two commands use."""
    home = CACHE / f"kafka-tools-{servers.KAFKA_VERSION}"
    jar = home / "libs" / f"kafka-tools-{servers.KAFKA_VERSION}.jar"
    if jar.exists():
        return jar
    fetch_maven_jars(home, "kafka-tools-jar", [("org.apache.kafka", "kafka-tools", servers.KAFKA_VERSION)],
                             transitive=False, timeout_s=900)
    return jar


def _staged_context(name: str, extra: dict[str, Path]) -> Path:
    """images/substitutes/<name>/ plus cached artifacts (hard links) in one build context."""
    context = CACHE / "context" / name
    shutil.rmtree(context, ignore_errors=True)
    shutil.copytree(SUBSTITUTES / name, context)
    for target, source in extra.items():
        destination = context / target
        if source.is_dir():
            shutil.copytree(source, destination, copy_function=os.link)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, destination)
            except OSError:  # the clone on another file system than the cache
                shutil.copy2(source, destination)
    return context


def _jre_substitute(name: str, ref: str, artifacts: dict[str, Path]) -> str:
    """images/substitutes/<name>/ with cached Java artifacts (path in the context -> file or
    folder) on the JRE base, rebuilt when any of them changes."""
    base = ensure_rootfs_image("jre-base")
    stamp = digest(image_id(base), SUBSTITUTES / name, *artifacts.values())
    if image_stamp(ref) == stamp:
        return ref
    context = _staged_context(name, artifacts)
    return build_image(ref, context / "Containerfile", context, stamp, {"JRE_IMAGE": base})


def build_kafka_substitute() -> str:
    libs, tools = servers.ensure_kafka(), _kafka_tools_jar()
    return _jre_substitute("kafka", KAFKA_IMAGE, {"libs": libs, f"libs/{tools.name}": tools})


def build_mongodb_substitute() -> str:
    """FerretDB on PostgreSQL, with the local stack's own store script and SQL."""
    base = ensure_rootfs_image("postgresql-base")
    binary = servers.ensure_ferretdb()
    stamp = digest(image_id(base), SUBSTITUTES / "mongodb", binary, servers.STORE_SCRIPT, servers.STORE_SQL)
    if image_stamp(MONGODB_IMAGE) == stamp:
        return MONGODB_IMAGE
    context = _staged_context("mongodb", {"ferretdb": binary, servers.STORE_SCRIPT.name: servers.STORE_SCRIPT,
                                          servers.STORE_SQL.name: servers.STORE_SQL})
    return build_image(MONGODB_IMAGE, context / "Containerfile", context, stamp, {"POSTGRESQL_IMAGE": base})


def build_pause_substitute() -> str:
    catatonit = Path(shutil.which("catatonit") or "/usr/bin/catatonit")
    stamp = digest(SUBSTITUTES / "pause", catatonit)
    if image_stamp(PAUSE_IMAGE) == stamp:
        return PAUSE_IMAGE
    context = _staged_context("pause", {"catatonit": catatonit})
    return build_image(PAUSE_IMAGE, context / "Containerfile", context, stamp, {})


def build_oidc_substitute() -> str:
    """The node's OpenID Connect provider: mock-oauth2-server's jars (devstack/oidc.py's) on the JRE base."""
    return _jre_substitute("oidc", OIDC_IMAGE, {"libs": oidc.fetch()})


def build_zipkin_substitute() -> str:
    """The node's trace backend: Zipkin's executable jar (devstack/zipkin.py's) on the JRE base."""
    return _jre_substitute("zipkin", ZIPKIN_IMAGE, {"zipkin.jar": zipkin.fetch()})


def build_substitutes() -> dict[str, str]:
    """Upstream image -> local substitute, built in parallel (each is cached by its stamp)."""
    builders = {"apache/kafka:4.1.1": build_kafka_substitute, "mongo:8.0": build_mongodb_substitute,
                "registry.k8s.io/pause": build_pause_substitute,
                f"ghcr.io/navikt/mock-oauth2-server:{oidc.VERSION}": build_oidc_substitute,
                f"openzipkin/zipkin:{zipkin.VERSION}": build_zipkin_substitute}
    with ThreadPoolExecutor(max_workers=len(builders)) as pool:
        futures = {upstream: pool.submit(build) for upstream, build in builders.items()}
        return {upstream: future.result() for upstream, future in futures.items()}


def build_all() -> list[str]:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        functions = pool.submit(build_function_images)
        substitutes = pool.submit(build_substitutes)
        refs = [*functions.result(), *substitutes.result().values()]
    say(f"{len(refs)} images ready in {time.monotonic() - started:.1f}s")
    return refs
