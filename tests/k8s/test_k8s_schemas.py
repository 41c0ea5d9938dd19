"""Every manifest parses, and every object each overlay renders validates: core objects against
the Kubernetes OpenAPI schemas (kubernetes-validate), Knative and KEDA objects against the
upstream CRDs' openAPIV3Schema. An object several overlays render alike is validated once."""
from __future__ import annotations

import copy
import re

import jsonschema
import k8s_helpers as h
import kubernetes_validate
import pytest
import yaml

DOCS = h.distinct_docs(h.load_docs(h.KAFKA_CLIENT_SECRET.read_text(), h.KAFKA_CLIENT_SECRET))
CORE = [d for d in DOCS if d.group in h.CORE_GROUPS]
CUSTOM = [d for d in DOCS if d.group not in h.CORE_GROUPS]

# CEL rules (x-kubernetes-validations) in the CRDs, which jsonschema cannot run: each is
# checked here by hand, and a CRD update that brings a new rule fails test_cel_rules_known.
CEL_RULES = {
    "!has(self.minReplicaCount) || self.minReplicaCount <= (has(self.maxReplicaCount) ? self.maxReplicaCount : 100)":
        lambda spec: spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100),
}

# Knative fields gated by a config-features flag (the CRD says "behind a feature flag - X").
# Only flags enabled in a default install may be used, or the webhook rejects the Service.
# emptyDir: PodSpecVolumesEmptyDir is Enabled in defaultFeaturesConfig (knative/serving
# pkg/apis/config/features.go).
KNATIVE_FLAGS_ON_BY_DEFAULT = {"kubernetes.podspec-volumes-emptydir"}


def test_every_yaml_file_parses():
    for path in h.object_files():
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        # One object per file, its comments beside its values.
        assert len(docs) == 1, f"{path} holds {len(docs)} objects"
        assert {"apiVersion", "kind", "metadata"} <= set(docs[0]), f"{path} is not a Kubernetes object"
    for path in h.K8S.rglob("kustomization.yaml"):
        assert yaml.safe_load(path.read_text())["kind"] in ("Kustomization", "Component"), path
    assert yaml.safe_load((h.ROOT / ".github/workflows/ci.yml").read_text())


@pytest.mark.parametrize("doc", DOCS, ids=str)
def test_object_basics(doc):
    meta = doc.obj["metadata"]
    assert set(meta) <= {"name", "namespace", "labels", "annotations"}, f"{doc}: unexpected metadata"
    assert h.dns_label(doc.name), f"{doc}: name is not a DNS-1123 label"
    assert meta.get("namespace") == h.expected_namespace(doc), f"{doc}: must live in {h.expected_namespace(doc)}"
    labels = meta.get("labels", {})
    assert labels.get("app.kubernetes.io/part-of") == h.PART_OF, f"{doc}: missing part-of label"
    assert labels.get("app.kubernetes.io/name"), f"{doc}: missing name label"


@pytest.mark.parametrize("version", h.KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", CORE, ids=str)
def test_core_object_validates(doc, version):
    try:
        kubernetes_validate.validate(doc.obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{doc} is invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_core_kinds_covered():
    kinds = {d.kind for d in CORE}
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "StatefulSet", "Service", "Ingress", "Job"} <= kinds
    # PersistentVolumeClaims are the StatefulSets' volumeClaimTemplates, validated with them.
    for doc in CORE:
        if doc.kind == "StatefulSet":
            assert doc.obj["spec"]["volumeClaimTemplates"], f"{doc}: no PVC"


def validate_custom(doc: h.Doc, crds: dict) -> None:
    crd = crds[(doc.group, doc.kind)]
    version = doc.obj["apiVersion"].split("/", 1)[1]
    schema = h.crd_schema(crd, version)
    jsonschema.Draft7Validator(h.strict_schema(schema)).validate(doc.obj)
    for path, node, value in h.schema_nodes_used(schema, doc.obj):
        for rule in node.get("x-kubernetes-validations", []):
            assert CEL_RULES[rule["rule"]](value), f"{doc}{path}: {rule['message']}"


@pytest.mark.parametrize("doc", CUSTOM, ids=str)
def test_custom_resource_validates_against_upstream_crd(doc, crds):
    assert (doc.group, doc.kind) in crds, f"{doc}: no CRD for {doc.group}/{doc.kind}"
    try:
        validate_custom(doc, crds)
    except jsonschema.ValidationError as exc:
        pytest.fail(f"{doc} does not match the {h.CRD_VERSIONS[doc.group]} CRD: {exc.message} "
                    f"at {'.'.join(map(str, exc.absolute_path))}")


def test_custom_kinds_covered():
    assert {(d.group, d.kind) for d in CUSTOM} == {
        ("serving.knative.dev", "Service"), ("keda.sh", "ScaledObject"), ("keda.sh", "TriggerAuthentication")}


def test_cel_rules_known(crds):
    for (group, kind), crd in crds.items():
        for entry in crd["spec"]["versions"]:
            for _, node, _ in _all_nodes(entry["schema"]["openAPIV3Schema"]):
                for rule in node.get("x-kubernetes-validations", []):
                    assert rule["rule"] in CEL_RULES, f"{group}/{kind}: unchecked CEL rule {rule['rule']!r}"


def _all_nodes(node, path=""):
    if isinstance(node, dict):
        yield path, node, None
        for key, child in node.items():
            yield from _all_nodes(child, f"{path}.{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _all_nodes(child, f"{path}[{i}]")


def test_knative_services_use_only_default_features(crds):
    schema = h.crd_schema(crds[("serving.knative.dev", "Service")], "v1")
    for doc in (d for d in CUSTOM if d.kind == "Service"):
        for path, node, _ in h.schema_nodes_used(schema, doc.obj):
            flag = re.search(r"behind a feature flag - (\S+)", node.get("description", ""))
            if flag:
                assert flag.group(1) in KNATIVE_FLAGS_ON_BY_DEFAULT, (
                    f"{doc}{path} needs Knative feature flag {flag.group(1)}, off in a default install")


# --- the validation really rejects what the cluster would reject ---------------------------

def _mutated(name: str, kind: str, mutate):
    doc = next(d for d in CUSTOM if d.name == name and d.kind == kind)
    obj = copy.deepcopy(doc.obj)
    mutate(obj)
    return h.Doc(doc.path, doc.index, obj)


@pytest.mark.parametrize("kind,name,mutate,error", [
    # A field Knative does not allow in a container securityContext (absent from its schema).
    ("Service", "buy", lambda o: o["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        .update(procMount="Default"), "'procMount' was unexpected"),
    # A misspelt top-level field.
    ("Service", "history", lambda o: o["spec"].update(templates={}), "'templates' was unexpected"),
    # KEDA: trigger metadata values must be strings.
    ("ScaledObject", "persist-purchase", lambda o: o["spec"]["triggers"][0]["metadata"].update(lagThreshold=100),
     "100 is not of type 'string'"),
    # KEDA's CEL rule, checked by hand.
    ("ScaledObject", "persist-purchase", lambda o: o["spec"].update(minReplicaCount=o["spec"]["maxReplicaCount"] + 1),
     "minReplicaCount must be less than or equal to maxReplicaCount"),
    # A misspelt KEDA field.
    ("ScaledObject", "persist-purchase", lambda o: o["spec"].update(maxReplicas=3), "'maxReplicas' was unexpected"),
], ids=["knative-procMount", "knative-typo", "keda-int-metadata", "keda-cel", "keda-typo"])
def test_crd_validation_rejects_invalid_objects(kind, name, mutate, error, crds):
    with pytest.raises((jsonschema.ValidationError, AssertionError), match=re.escape(error)):
        validate_custom(_mutated(name, kind, mutate), crds)


def test_core_validation_rejects_invalid_objects():
    doc = next(d for d in CORE if d.kind == "Deployment")
    obj = copy.deepcopy(doc.obj)
    obj["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, h.KUBERNETES_VERSIONS[0], strict=True)
    obj = copy.deepcopy(doc.obj)
    obj["spec"]["template"]["spec"]["containers"][0]["envfrom"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, h.KUBERNETES_VERSIONS[0], strict=True)
