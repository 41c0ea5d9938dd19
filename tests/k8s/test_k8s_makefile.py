"""mk/deploy.mk, run for real with recording `kubectl`, `docker` and `minikube` shims on PATH:
each deploy target is one `kubectl apply -k` of the chosen overlay that applies exactly its own
objects (what kubectl's kustomize renders, filtered by the target's -l selector), with the
image `make build` tags."""
from __future__ import annotations

import re
import subprocess

import k8s_helpers as h
import pytest

REGISTRY, TAG = "registry.example.com/acme/purchase", "1.2.3"
INFRA = {
    ("Namespace", "", "purchase"), ("ConfigMap", "", "purchase-config"), ("Secret", "", "mongodb-credentials"),
    ("StatefulSet", "apps", "kafka"), ("Service", "", "kafka-headless"), ("PodDisruptionBudget", "policy", "kafka"),
    ("Job", "batch", "kafka-create-topics"),
    ("StatefulSet", "apps", "mongodb"), ("Service", "", "mongodb"), ("Service", "", "mongodb-headless"),
    ("Service", "", "knative-gateway"),
    ("Secret", "", "mongodb-app-credentials"), ("Job", "batch", "mongodb-app-user"),
    *(("NetworkPolicy", "networking.k8s.io", name) for name in (
        "default-deny-ingress", "kafka-clients-only", "mongodb-clients-only")),
}
TRIGGER_AUTH = ("TriggerAuthentication", "keda.sh", "kafka-client-auth")
OWNED = set().union(*(objects for _, _, objects in h.FUNCTIONS.values()))


def images_of(docs):
    return {c["image"] for d in docs for c in h.containers(d)}


def kubectl_calls(calls):
    return [c["argv"] for c in calls if c["tool"] == "kubectl"]


@pytest.fixture()
def make(tmp_path):
    def run(*args, ok=True):
        result, calls = h.run_make(tmp_path / "bin", *args)
        if ok:
            assert result.returncode == 0, result.stdout + result.stderr
        return result, calls
    return run


def test_every_object_belongs_to_exactly_one_target():
    for variant in h.VARIANTS:
        all_keys = [d.key for d in h.rendered(variant)]
        assert len(all_keys) == len(set(all_keys))
        shipped_ingress = h.INGRESS_CONTROLLER if h.ingress_layer(variant).shipped else set()
        provider = h.IDENTITY_PROVIDER | h.TRACE_BACKEND if h.overlay_of(variant) == "node" else set()
        assert set(all_keys) == INFRA | OWNED | shipped_ingress | provider | \
            ({TRIGGER_AUTH} if "kafka-auth" in variant else set())
    assert not INFRA & OWNED


@pytest.mark.parametrize("selector,labels,selected", [
    ("app.kubernetes.io/name=buy", {"app.kubernetes.io/name": "buy"}, True),
    ("app.kubernetes.io/name=buy", {"app.kubernetes.io/name": "history"}, False),
    ("app.kubernetes.io/name!=purchase", {"app.kubernetes.io/name": "purchase"}, False),
    ("app.kubernetes.io/name notin (buy,history)", {"app.kubernetes.io/name": "kafka"}, True),
    ("app.kubernetes.io/name notin (buy,history)", {"app.kubernetes.io/name": "history"}, False),
    ("a in (x, y),b=1", {"a": "y", "b": "1"}, True),
    ("a in (x, y),b=1", {"a": "y", "b": "2"}, False),
])
def test_the_shims_selector_reads_like_kubectl(selector, labels, selected):
    assert h.selects(selector, labels) is selected


@pytest.mark.parametrize("function", list(h.FUNCTIONS))
def test_deploy_function_applies_only_its_objects_with_the_chosen_image(function, make):
    folder, image_name, owned = h.FUNCTIONS[function]
    _, calls = make(f"deploy-{function}", f"REGISTRY={REGISTRY}", f"TAG={TAG}")
    assert [c["tool"] for c in calls] == ["kubectl"], "one kubectl apply, no build, no push"
    assert kubectl_calls(calls) == [["apply", "-k", f".run/deploy/deploy-{function}",
                                     "-l", f"app.kubernetes.io/name={function}"]]
    docs = h.applied_docs(calls)
    assert {d.key for d in docs} == owned
    assert images_of(docs) == {f"{REGISTRY}/{image_name}:{TAG}"}
    assert "image: dev.local" not in calls[0]["rendered"], "every function image replaced"


@pytest.mark.parametrize("function", list(h.FUNCTIONS))
def test_deploy_function_default_image_is_what_build_tags(function, make):
    folder, _, _ = h.FUNCTIONS[function]
    _, calls = make(f"deploy-{function}")
    assert images_of(h.applied_docs(calls)) == {h.make_image_names()[folder]}


def test_rendered_objects_still_validate(make, crds):
    import kubernetes_validate
    from test_k8s_schemas import validate_custom
    for target in ("deploy-buy", "deploy-history", "deploy-persist-purchase"):
        _, calls = make(target, f"REGISTRY={REGISTRY}", f"TAG={TAG}", "KAFKA_AUTH=1")
        for doc in h.applied_docs(calls):
            if doc.group in h.CORE_GROUPS:
                kubernetes_validate.validate(doc.obj, h.KUBERNETES_VERSIONS[0], strict=True)
            else:
                validate_custom(doc, crds)


def test_kafka_auth_adds_the_trigger_authentication(make, crds):
    _, calls = make("deploy-persist-purchase", "KAFKA_AUTH=1")
    docs = h.applied_docs(calls)
    assert {d.key for d in docs} == h.FUNCTIONS["persist-purchase"][2] | {TRIGGER_AUTH}
    scaled = h.find(docs, "ScaledObject", "persist-purchase").obj
    assert [t["authenticationRef"] for t in scaled["spec"]["triggers"]] == [{"name": "kafka-client-auth"}]
    # Without it, nothing references a TriggerAuthentication (off by default).
    _, calls = make("deploy-persist-purchase")
    scaled = h.find(h.applied_docs(calls), "ScaledObject", "persist-purchase").obj
    assert all("authenticationRef" not in t for t in scaled["spec"]["triggers"])


def test_deploy_infra_applies_infra_and_waits(make):
    _, calls = make("deploy-infra")
    argvs = kubectl_calls(calls)
    assert argvs[0] == ["apply", "-k", ".run/deploy/deploy-infra",
                        "-l", "app.kubernetes.io/name notin (buy,history,persist-purchase)"]
    docs = h.applied_docs(calls)
    assert {d.key for d in docs} == INFRA
    assert docs[0].key == ("Namespace", "", "purchase"), "the namespace exists before what lives in it"
    waits = [a for a in argvs if "apply" not in a]
    assert ["-n", "purchase", "rollout", "status", "statefulset/kafka", "--timeout=300s"] in waits
    assert ["-n", "purchase", "rollout", "status", "statefulset/mongodb", "--timeout=300s"] in waits
    assert ["-n", "purchase", "wait", "job/kafka-create-topics", "--for=condition=complete",
            "--timeout=300s"] in waits


def test_deploy_infra_without_waiting(make):
    _, calls = make("deploy-infra", "DEPLOY_WAIT=")
    assert all(a[0] == "apply" for a in kubectl_calls(calls))
    assert {d.key for d in h.applied_docs(calls)} == INFRA


def test_deploy_applies_everything_once_infra_first(make):
    _, calls = make("deploy", f"REGISTRY={REGISTRY}", f"TAG={TAG}")
    docs = h.applied_docs(calls)
    keys = [d.key for d in docs]
    assert sorted(keys) == sorted(INFRA | OWNED)
    first_function = min(keys.index(k) for k in OWNED)
    assert all(keys.index(k) < first_function for k in INFRA)
    assert images_of(docs) - {"apache/kafka:4.1.1", "mongo:8.0"} == {
        f"{REGISTRY}/{image}:{TAG}" for _, image, _ in h.FUNCTIONS.values()}


@pytest.mark.parametrize("overlay", h.OVERLAYS)
def test_deploy_applies_the_chosen_overlay(overlay, make):
    """`make deploy OVERLAY=x` applies what `kubectl apply -k k8s/overlays/x` would, with
    REGISTRY/TAG at their defaults: the make targets add nothing of their own."""
    _, calls = make("deploy", f"OVERLAY={overlay}")
    applied = {d.key: d.obj for d in h.applied_docs(calls)}
    assert applied == {d.key: d.obj for d in h.rendered(overlay)}


def test_undeploy_only_deletes(make):
    _, calls = make("undeploy")
    argvs = kubectl_calls(calls)
    assert argvs and all("delete" in a and "--ignore-not-found" in a for a in argvs)
    deleted = {d.key for d in h.applied_docs(calls, verb="delete")}
    assert OWNED | {TRIGGER_AUTH} | (INFRA - {("Namespace", "", "purchase")}) == deleted
    # KEDA lets go of the Deployment before the Deployment goes.
    assert argvs[0] == ["-n", "purchase", "delete", "--ignore-not-found", "scaledobject.keda.sh/persist-purchase"]


def test_k8s_status_only_reads(make):
    _, calls = make("k8s-status")
    argvs = kubectl_calls(calls)
    assert argvs and all("get" in a and "purchase" in a for a in argvs)
    assert any("scaledobject" in " ".join(a) and "hpa" in " ".join(a) for a in argvs)


def dockerfile_args(function):
    """One functions/Dockerfile for all: the function's folder as FUNCTION, its kind as the target stage."""
    folder, _, _ = h.FUNCTIONS[function]
    return ["-f", "functions/Dockerfile", "--build-arg", f"FUNCTION={folder.removeprefix('functions/')}",
            "--target", h.IMAGE_KINDS[function]]


@pytest.mark.parametrize("function", list(h.FUNCTIONS))
def test_build_and_push(function, make):
    _, image_name, _ = h.FUNCTIONS[function]
    image = f"{REGISTRY}/{image_name}:{TAG}"
    _, calls = make(f"build-{function}", f"REGISTRY={REGISTRY}", f"TAG={TAG}")
    assert calls == [{"tool": "docker", "argv": ["build", *dockerfile_args(function), "-t", image, "."],
                      "cwd": str(h.ROOT)}], "build context = repository root"
    _, calls = make(f"push-{function}", f"REGISTRY={REGISTRY}", f"TAG={TAG}")
    assert [c["argv"] for c in calls] == [["build", *dockerfile_args(function), "-t", image, "."],
                                          ["push", image]]


@pytest.mark.parametrize("function", list(h.FUNCTIONS))
def test_build_on_another_base_image_with_extra_flags(function, make):
    """Where python:3.11-slim cannot be pulled: PYTHON_IMAGE and DOCKER_BUILD_FLAGS reach the build."""
    _, image_name, _ = h.FUNCTIONS[function]
    base = "localhost/purchase/python-base:3.11-bookworm"
    _, calls = make(f"build-{function}", "DOCKER_BUILD_FLAGS=--network host --ulimit nofile=20000:20000",
                    f"PYTHON_IMAGE={base}")
    assert [c["argv"] for c in calls] == [["build", "--build-arg", f"PYTHON_IMAGE={base}", "--network", "host",
                                           "--ulimit", "nofile=20000:20000", *dockerfile_args(function),
                                           "-t", f"dev.local/purchase/{image_name}:dev", "."]]


def test_build_push_and_minikube_images_cover_all_images(make):
    images = {f"{REGISTRY}/{image}:{TAG}" for _, image, _ in h.FUNCTIONS.values()}
    _, calls = make("push", f"REGISTRY={REGISTRY}", f"TAG={TAG}")
    assert {c["argv"][-1] for c in calls if c["argv"][0] == "push"} == images
    _, calls = make("minikube-images", f"REGISTRY={REGISTRY}", f"TAG={TAG}")
    assert [c["argv"][:2] for c in calls] == [["image", "load"]] * 3
    assert {c["argv"][2] for c in calls} == images


def test_a_failing_kubectl_fails_the_target(tmp_path):
    bin_dir = tmp_path / "bin"
    h.make_shims(bin_dir)
    (bin_dir / "kubectl").write_text("#!/bin/sh\ncat >/dev/null; exit 3\n")
    env = h.clean_make_env()
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = subprocess.run(["make", "-s", "-C", str(h.ROOT), "deploy-buy"], env=env, capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode != 0


MAKEFILES = (h.ROOT / "Makefile", *sorted((h.ROOT / "mk").glob("*.mk")))
SECTIONS = ("Run locally", "Test", "Benchmark & load", "Images & deploy", "The node", "Inspect")


def run_help(*makefiles):
    args = [a for f in makefiles for a in ("-f", str(f))]
    return subprocess.run(["make", "-s", "-C", str(h.ROOT), *args, "help"], env=h.clean_make_env(),
                          capture_output=True, text=True, timeout=60)


def help_sections():
    """`make help` as {section title: [target, ...]}, in the order it prints them."""
    result = run_help()
    assert result.returncode == 0, result.stderr
    sections = {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", result.stdout).splitlines():
        if line and not line.startswith(" "):
            assert line.endswith(":"), line
            sections[line[:-1]] = current = []
        elif line.strip():
            current.append(line.split()[0])
    return sections


def documented_targets():
    """The targets whose rule carries a help line (`target: ... ## @section text`)."""
    return {m.group(1) for f in MAKEFILES for m in re.finditer(r"^([a-zA-Z0-9_-]+):[^\n]*## ", f.read_text(), re.M)}


def phony_targets():
    text = "\n".join(f.read_text().replace("\\\n", " ") for f in MAKEFILES)
    return {t for line in re.findall(r"^\.PHONY:(.*)$", text, re.M) for t in line.split()}


def test_help_lists_every_target_in_exactly_one_section():
    sections = help_sections()
    assert [title.split(" (")[0] for title in sections] == list(SECTIONS)
    assert all(sections.values()), {title: targets for title, targets in sections.items() if not targets}
    listed = [target for targets in sections.values() for target in targets]
    assert len(listed) == len(set(listed)), "a target in two sections"
    assert set(listed) == documented_targets() == phony_targets()
    wanted = {"run", "test", "lint", "build", "push", "deploy", "deploy-infra", "undeploy", "k8s-status",
              "minikube-images"}
    for function in h.FUNCTIONS:
        wanted |= {f"build-{function}", f"push-{function}", f"deploy-{function}"}
    assert wanted <= set(listed), sorted(wanted - set(listed))


def test_one_verb_per_meaning():
    """`load` is purchase load; putting images into a runtime is `<where>-images`."""
    listed = {target for targets in help_sections().values() for target in targets}
    assert {t for t in listed if "load" in t} == {"load", "load-node"}
    assert {t for t in listed if t.endswith("-images")} == {"minikube-images", "cluster-images"}
    assert {t for t in listed if t.endswith("status")} == {"stack-status", "cluster-status", "k8s-status"}


def test_help_refuses_a_target_without_a_section(tmp_path):
    extra = tmp_path / "extra.mk"
    extra.write_text("nowhere: ## @nosuch a target in no section\n")
    result = run_help(*MAKEFILES, extra)
    assert result.returncode != 0
    assert "nowhere names no section" in result.stderr
