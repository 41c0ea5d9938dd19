"""What the tests of k8s/, functions/Dockerfile and mk/deploy.mk share (no cluster, no Docker).

Manifests are each overlay of k8s/ as the standalone kustomize renders it (tools/kustomize.py,
the version kubectl's `apply -k` embeds); upstream CRDs come from PURCHASE_CRDS_DIR (default
../shared/crds beside the repository); `make` runs with recording `kubectl`/`docker` shims on PATH.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tools import kustomize
from tools.common import ROOT

K8S = ROOT / "k8s"
# k8s/ itself is the base kustomization; its folders hold the objects, beside these two.
NOT_BASE = ("overlays", "components")
BASE_FOLDERS = tuple(sorted(p.name for p in K8S.iterdir() if p.is_dir() and p.name not in NOT_BASE))
OVERLAYS = tuple(sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml")))
# Filled in and applied by hand, so in no kustomization (k8s/README.md, SASL/TLS).
KAFKA_CLIENT_SECRET = K8S / "components" / "kafka-auth" / "kafka-client-secret.example.yaml"
# What gets deployed: each overlay, and the default one with the optional SASL/TLS component
# (`make deploy KAFKA_AUTH=1`).
VARIANTS = OVERLAYS + ("minikube+kafka-auth",)
NAMESPACE = "purchase"
PART_OF = "purchase-system"

# Kubernetes versions the core objects are validated against with kubernetes-validate:
# the oldest this deployment claims (k8s/README.md: Knative Serving 1.23 supports only
# recent releases) and the newest schema kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSIONS = ("1.34", "1.37")

# Versions of the CRD files in ../shared/crds (shared/README.md); the files carry no
# version of their own, so this is what the closing note reports.
CRD_VERSIONS = {"keda.sh": "KEDA v2.20.1", "serving.knative.dev": "Knative Serving v1.23.0"}

# Function -> (source folder, image name, the k8s objects that belong to it alone).
FUNCTIONS = {
    "buy": ("functions/buy", "buy", {("Service", "serving.knative.dev", "buy"),
                                     ("Ingress", "networking.k8s.io", "buy"),
                                     ("NetworkPolicy", "networking.k8s.io", "buy-from-knative")}),
    "history": ("functions/history", "history", {("Service", "serving.knative.dev", "history"),
                                                 ("Ingress", "networking.k8s.io", "history"),
                                                 ("NetworkPolicy", "networking.k8s.io", "history-from-knative")}),
    "persist-purchase": ("functions/persist_purchase", "persist-purchase",
                         {("Deployment", "apps", "persist-purchase"),
                          ("ScaledObject", "keda.sh", "persist-purchase"),
                          ("NetworkPolicy", "networking.k8s.io", "persist-purchase-no-ingress")}),
}

# Function -> the kind of image it is: the stage of functions/Dockerfile its build targets.
IMAGE_KINDS = {"buy": "http-function", "history": "http-function", "persist-purchase": "consumer"}

CORE_GROUPS = {"", "apps", "batch", "networking.k8s.io", "policy", "rbac.authorization.k8s.io"}


@dataclass(frozen=True)
class IngressLayer:
    """How an overlay's purchase.local Ingresses reach Knative (k8s/README.md, "Which ingress
    each overlay uses"): the Ingress class, the Service knative-gateway stands for, the namespace
    the functions take requests from, and whether the controller's own objects ship in the overlay."""
    ingress_class: str
    gateway: str
    namespace: str
    shipped: bool


NGINX_KOURIER = IngressLayer("nginx", "kourier-internal.kourier-system.svc.cluster.local", "kourier-system", False)
TRAEFIK = IngressLayer("traefik", "traefik-internal.traefik.svc.cluster.local", "traefik", True)
INGRESS_OF = {"node": TRAEFIK}
# The objects of the ingress controller an overlay ships (its own namespace; the Role and its
# binding in the functions' namespace; the cluster-scoped ones in none).
INGRESS_CONTROLLER = {
    ("Namespace", "", "traefik"), ("ServiceAccount", "", "traefik"),
    ("ClusterRole", "rbac.authorization.k8s.io", "traefik-ingress-classes"),
    ("ClusterRoleBinding", "rbac.authorization.k8s.io", "traefik-ingress-classes"),
    ("Role", "rbac.authorization.k8s.io", "traefik"), ("RoleBinding", "rbac.authorization.k8s.io", "traefik"),
    ("IngressClass", "networking.k8s.io", "traefik"), ("ConfigMap", "", "traefik-dynamic"),
    ("Deployment", "apps", "traefik"), ("Service", "", "traefik"), ("Service", "", "traefik-internal"),
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "IngressClass"}
# The node overlay's OpenID Connect provider (k8s/overlays/node/oidc/), in a namespace of its own.
IDENTITY_PROVIDER_NAMESPACE = "purchase-auth"
IDENTITY_PROVIDER = {
    ("Namespace", "", IDENTITY_PROVIDER_NAMESPACE), ("ConfigMap", "", "oidc-config"), ("Deployment", "apps", "oidc"),
    ("Service", "", "oidc"), ("NetworkPolicy", "networking.k8s.io", "oidc-clients-only"),
}
# The node overlay's trace backend (k8s/overlays/node/zipkin/), in a namespace of its own.
TRACE_BACKEND_NAMESPACE = "purchase-trace"
TRACE_BACKEND = {
    ("Namespace", "", TRACE_BACKEND_NAMESPACE), ("Deployment", "apps", "zipkin"), ("Service", "", "zipkin"),
    ("NetworkPolicy", "networking.k8s.io", "zipkin-clients-only"),
}


def overlay_of(variant: str) -> str:
    return variant.partition("+")[0]


def ingress_layer(variant: str) -> IngressLayer:
    return INGRESS_OF.get(overlay_of(variant), NGINX_KOURIER)


def expected_namespace(doc: Doc) -> str | None:
    if doc.kind in CLUSTER_SCOPED:
        return None
    if doc.key in INGRESS_CONTROLLER and doc.kind not in ("Role", "RoleBinding"):
        return TRAEFIK.namespace
    if doc.key in IDENTITY_PROVIDER:
        return IDENTITY_PROVIDER_NAMESPACE
    if doc.key in TRACE_BACKEND:
        return TRACE_BACKEND_NAMESPACE
    return NAMESPACE


@dataclass
class Doc:
    path: Path
    index: int
    obj: dict

    @property
    def kind(self) -> str:
        return self.obj["kind"]

    @property
    def group(self) -> str:
        api = self.obj["apiVersion"]
        return api.split("/", 1)[0] if "/" in api else ""

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.group, self.name)

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}#{self.index} {self.kind}/{self.name}"


def object_files() -> list[Path]:
    """The files of the base and the components, one object each (not their kustomizations)."""
    folders = [K8S / name for name in BASE_FOLDERS] + [K8S / "components"]
    return sorted(p for folder in folders for p in folder.rglob("*.y*ml")
                  if p.name != "kustomization.yaml")


def load_docs(text: str, path: Path) -> list[Doc]:
    return [Doc(path, i, obj) for i, obj in enumerate(yaml.safe_load_all(text)) if obj is not None]


@functools.cache
def rendered(variant: str) -> list[Doc]:
    """The objects of a VARIANTS entry: `kustomize build` of the overlay (plus the component)."""
    overlay, _, component = variant.partition("+")
    target = K8S / "overlays" / overlay
    with tempfile.TemporaryDirectory() as tmp:
        if component:
            # kustomize takes other kustomizations by relative path only.
            (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump({
                "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": [os.path.relpath(target, tmp)],
                "components": [os.path.relpath(K8S / "components" / component, tmp)]}))
            target = Path(tmp)
        return load_docs(kustomize.build(target), K8S / "overlays" / variant)


def distinct_docs(extra: list[Doc] = ()) -> list[Doc]:
    """Every object any variant renders, each distinct one once, plus extra."""
    seen, docs = set(), []
    for doc in [d for variant in VARIANTS for d in rendered(variant)] + list(extra):
        text = json.dumps(doc.obj, sort_keys=True)
        if text not in seen:
            seen.add(text)
            docs.append(doc)
    return docs


def find(docs: list[Doc], kind: str, name: str, group: str | None = None) -> Doc:
    found = [d for d in docs if d.kind == kind and d.name == name and (group is None or d.group == group)]
    assert len(found) == 1, f"expected one {kind}/{name}, found {[str(d) for d in found]}"
    return found[0]


def pod_template(doc: Doc) -> dict | None:
    """The pod template of a workload (Knative Services included), else None."""
    if doc.kind in ("Deployment", "StatefulSet", "Job"):
        return doc.obj["spec"]["template"]
    if doc.kind == "Service" and doc.group == "serving.knative.dev":
        return doc.obj["spec"]["template"]
    return None


def containers(doc: Doc) -> list[dict]:
    template = pod_template(doc)
    return template["spec"]["containers"] if template else []


# --- upstream CRDs ---------------------------------------------------------------------

def crds_dir() -> Path:
    return Path(os.environ.get("PURCHASE_CRDS_DIR") or ROOT.parent / "shared" / "crds")


def load_crds(directory: Path) -> dict[tuple[str, str], dict]:
    """(group, kind) -> CRD, from every YAML file in directory (single or multi-document)."""
    crds = {}
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".yaml", ".yml"):
            continue
        for obj in yaml.safe_load_all(path.read_text()):
            if obj and obj.get("kind") == "CustomResourceDefinition":
                crds[(obj["spec"]["group"], obj["spec"]["names"]["kind"])] = obj
    return crds


def crd_schema(crd: dict, version: str) -> dict:
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            assert entry.get("served", False), f"{crd['metadata']['name']} {version} is not served"
            return entry["schema"]["openAPIV3Schema"]
    raise AssertionError(f"{crd['metadata']['name']} has no version {version}")


def strict_schema(schema: dict) -> dict:
    """The CRD schema as `kubectl apply` (strict field validation) enforces it.

    The API server rejects fields a structural schema does not declare, except under
    x-kubernetes-preserve-unknown-fields; JSON Schema allows them unless
    additionalProperties is false, so that is added wherever the server would reject.
    """
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for key in ("properties", "patternProperties"):
                for child in node.get(key, {}).values():
                    walk(child)
            for key in ("items", "additionalProperties", "not"):
                if isinstance(node.get(key), dict):
                    walk(node[key])
            for key in ("allOf", "anyOf", "oneOf"):
                for child in node.get(key, []):
                    walk(child)

    walk(schema)
    return schema


def schema_nodes_used(schema: dict, instance, path: str = ""):
    """Yield (path, schema node, instance value) for every value the instance sets."""
    yield path, schema, instance
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if key in props:
                yield from schema_nodes_used(props[key], value, f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from schema_nodes_used(extra, value, f"{path}.{key}")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(instance):
            yield from schema_nodes_used(schema["items"], value, f"{path}[{i}]")


# --- make with recording shims ----------------------------------------------------------

# Records each call; for `kubectl ... -k DIR` also what kubectl's kustomize would render there
# and then (the target may rewrite DIR for its next call).
SHIM = r'''#!/usr/bin/env python3
import json, os, subprocess, sys
args = sys.argv[1:]
entry = {"tool": os.path.basename(sys.argv[0]), "argv": args, "cwd": os.getcwd()}
if "-k" in args:
    entry["rendered"] = subprocess.run([os.environ["SHIM_KUSTOMIZE"], "build", args[args.index("-k") + 1]],
                                       capture_output=True, text=True, check=True, timeout=120).stdout
with open(os.environ["SHIM_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\n")
'''

# Variables a caller's environment (or an outer `make test REGISTRY=...`) could leak in.
MAKE_ENV_NOISE = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "REGISTRY", "TAG", "KUBECTL",
                  "DOCKER", "MINIKUBE", "KAFKA_AUTH", "WAIT_TIMEOUT", "DEPLOY_WAIT", "OVERLAY",
                  "PYTHON_IMAGE", "DOCKER_BUILD_FLAGS")


def clean_make_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in MAKE_ENV_NOISE}


def make_shims(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for tool in ("kubectl", "docker", "minikube"):
        shim = directory / tool
        shim.write_text(SHIM)
        shim.chmod(0o755)
    return directory / "calls.jsonl"


def run_make(shim_dir: Path, *args: str, dry_run: bool = False) -> tuple[subprocess.CompletedProcess, list[dict]]:
    log = make_shims(shim_dir)
    log.write_text("")
    env = clean_make_env()
    env["PATH"] = f"{shim_dir}{os.pathsep}{env.get('PATH', '')}"
    env["SHIM_LOG"] = str(log)
    env["SHIM_KUSTOMIZE"] = str(kustomize.ensure())
    argv = ["make", "--no-print-directory", "-s", "-C", str(ROOT)] + (["-n"] if dry_run else []) + list(args)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    calls = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return result, calls


def applied_docs(calls: list[dict], verb: str = "apply") -> list[Doc]:
    """The objects `kubectl <verb> -k DIR [-l SELECTOR]` was given, in the order kubectl gets them."""
    docs = []
    for call in calls:
        argv = call["argv"]
        if call["tool"] != "kubectl" or verb not in argv or "rendered" not in call:
            continue
        selector = argv[argv.index("-l") + 1] if "-l" in argv else ""
        docs += [d for d in load_docs(call["rendered"], Path(call["cwd"]) / argv[argv.index("-k") + 1])
                 if selects(selector, d.obj["metadata"].get("labels", {}))]
    return docs


SELECTOR_TERM = re.compile(r"\s*([\w./-]+)\s*(?:(notin|in)\s*\(([^)]*)\)|(==|!=|=)\s*([\w.-]*))\s*(?:,|$)")


def selects(selector: str, labels: dict) -> bool:
    """A label selector as kubectl's -l reads it: `k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`."""
    position, wanted = 0, True
    while position < len(selector):
        term = SELECTOR_TERM.match(selector, position)
        assert term, f"selector {selector!r} not understood at {position}"
        key, set_op, values, op, value = term.groups()
        have = labels.get(key)
        if set_op:
            inside = have in {v.strip() for v in values.split(",")}
            wanted &= inside if set_op == "in" else not inside
        else:
            wanted &= (have == value) if op in ("=", "==") else (have != value)
        position = term.end()
    return wanted


def make_builds(*targets_and_variables: str) -> list[list[str]]:
    """The `docker build` argvs (after `docker`) that `make -n` of the targets runs."""
    result = subprocess.run(["make", "--no-print-directory", "-s", "-n", "-C", str(ROOT), *targets_and_variables],
                            env=clean_make_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [words[1:] for words in map(shlex.split, result.stdout.splitlines())
            if len(words) > 2 and words[1] == "build"]


def build_args(argv: list[str]) -> dict[str, str]:
    """The --build-arg NAME=VALUE pairs of a `docker build` argv."""
    pairs = [argv[i + 1].partition("=") for i, word in enumerate(argv) if word == "--build-arg"]
    return {name: value for name, _, value in pairs}


def make_image_names(*variables: str) -> dict[str, str]:
    """Function folder (functions/<FUNCTION>) -> image tag, read from `make -n build` (default
    variables unless given)."""
    return {f"functions/{build_args(argv)['FUNCTION']}": argv[argv.index("-t") + 1]
            for argv in make_builds("build", *variables)}


# --- Dockerfiles ------------------------------------------------------------------------

@dataclass
class Instruction:
    op: str
    args: str


def parse_dockerfile(path: Path) -> list[list[Instruction]]:
    """Instructions grouped by stage (ARGs before the first FROM form stage 0's preamble)."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[list[Instruction]] = [[]]
    for line in logical:
        op, _, args = line.partition(" ")
        instruction = Instruction(op.upper(), args.strip())
        if instruction.op == "FROM" and stages[-1] and any(i.op == "FROM" for i in stages[-1]):
            stages.append([])
        stages[-1].append(instruction)
    return stages


# Where Docker substitutes $NAME / ${NAME} (the shell does it in RUN; CMD/ENTRYPOINT not at all).
SUBSTITUTED_OPS = {"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}


def _substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))",
                  lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def stage_name(stage: list[Instruction], number: int) -> str:
    """A stage's name (`FROM image AS name`), else its number, as COPY --from names it."""
    words = stage[0].args.split()
    return words[2] if len(words) == 3 and words[1].upper() == "AS" else str(number)


def built_stages(path: Path, target: str | None = None, args: dict[str, str] | None = None,
                 ) -> dict[str, list[Instruction]]:
    """Stage name -> instructions, for the stages `docker build -f path [--target] [--build-arg]`
    runs: what the target (else the last stage) needs (the stage it is FROM, COPY --from), then it.
    A stage FROM another one starts with that one's instructions, as the image it makes does.
    The given build args are substituted where Docker would: after a stage declares the ARG
    (a bare `ARG NAME` takes the global one), and in FROM lines the global ARGs."""
    args = args or {}
    raw = parse_dockerfile(path)
    first_from = next(n for n, i in enumerate(raw[0]) if i.op == "FROM")
    preamble, raw[0] = raw[0][:first_from], raw[0][first_from:]
    global_args = {i.args.partition("=")[0] for i in preamble if i.op == "ARG"}
    stages: dict[str, list[Instruction]] = {}
    for number, stage in enumerate(raw):
        in_scope, out = set(), []
        for instruction in stage:
            if instruction.op == "ARG":
                in_scope.add(instruction.args.partition("=")[0])
            values = {name: value for name, value in args.items()
                      if name in (global_args if instruction.op == "FROM" else in_scope)}
            out.append(Instruction(instruction.op, _substitute(instruction.args, values)
                                   if instruction.op in SUBSTITUTED_OPS else instruction.args))
        stages[stage_name(out, number)] = out
    target = target or list(stages)[-1]
    assert target in stages, f"{path}: no stage {target}"
    needed: dict[str, list[Instruction]] = {}

    def need(name: str) -> list[Instruction]:
        if name not in needed:
            own = stages[name]
            parent = own[0].args.split()[0]
            needed[name] = (need(parent) if parent in stages else []) + own
            for instruction in own:
                source = re.match(r"--from=(\S+)", instruction.args) if instruction.op == "COPY" else None
                if source and source.group(1) in stages:
                    need(source.group(1))
        return needed[name]

    need(target)
    return {**{name: stage for name, stage in needed.items() if name != target}, target: needed[target]}


@dataclass
class FunctionImage:
    argv: list[str]                       # what `make build-<function>` runs after `docker`
    dockerfile: Path
    target: str | None
    stages: dict[str, list[Instruction]]  # built_stages() of that build, the target last

    @property
    def final(self) -> list[Instruction]:
        """The instructions of the image the build tags."""
        return list(self.stages.values())[-1]


@functools.cache
def function_image(function: str) -> FunctionImage:
    """A function's image as `make build-<function>` builds it (the Dockerfile, --target, --build-arg)."""
    (argv,) = make_builds(f"build-{function}")
    dockerfile = ROOT / argv[argv.index("-f") + 1]
    target = argv[argv.index("--target") + 1] if "--target" in argv else None
    return FunctionImage(argv, dockerfile, target, built_stages(dockerfile, target, build_args(argv)))


def dockerfile_env(stage: list[Instruction]) -> dict[str, str]:
    env = {}
    for instruction in stage:
        if instruction.op == "ENV":
            for pair in shlex.split(instruction.args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def dockerfile_exec(stage: list[Instruction], op: str) -> list[str]:
    for instruction in reversed(stage):
        if instruction.op == op:
            value = json.loads(instruction.args)
            assert isinstance(value, list), f"{op} must use the exec (JSON) form"
            return value
    return []


def python() -> str:
    return sys.executable


def dns_label(name: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)) and len(name) <= 63
