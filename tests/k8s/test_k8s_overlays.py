"""The kustomize layout of k8s/: the base holds every object file, and each overlay (and the
optional component) changes exactly what it says and nothing else, checked on what the
standalone kustomize renders (tools/kustomize.py)."""
from __future__ import annotations

import json
import subprocess

import k8s_helpers as h
import yaml

from devstack import oidc
from images import build as images_build
from tools import kustomize

FUNCTION_IMAGES = {f"dev.local/purchase/{image}:dev": image for _, image, _ in h.FUNCTIONS.values()}


def differences(before: list[h.Doc], after: list[h.Doc]) -> dict[tuple, tuple]:
    """(object key, path) -> (value before, value after), for every value that differs."""
    found = {}

    def walk(key, path, a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            for name in a.keys() | b.keys():
                walk(key, f"{path}.{name}", a.get(name), b.get(name))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(key, f"{path}[{i}]", x, y)
        elif a != b:
            found[(key, path)] = (a, b)

    objects_before, objects_after = {d.key: d.obj for d in before}, {d.key: d.obj for d in after}
    for key in objects_before.keys() | objects_after.keys():
        walk(key, "", objects_before.get(key), objects_after.get(key))
    return found


def image_changes(docs: list[h.Doc]) -> dict[tuple, str]:
    """(object key, container path) -> image, for every container."""
    changes = {}
    for doc in docs:
        for i, container in enumerate(h.containers(doc)):
            changes[(doc.key, f".spec.template.spec.containers[{i}].image")] = container["image"]
    return changes


def resources(folder):
    return yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]


def test_the_base_lists_every_object_file():
    assert sorted(resources(h.K8S)) == list(h.BASE_FOLDERS), "k8s/kustomization.yaml lists every base folder"
    folders = [(h.K8S / name, set()) for name in h.BASE_FOLDERS]
    for folder, examples in folders + [(h.K8S / "components" / "kafka-auth", {h.KAFKA_CLIENT_SECRET})]:
        listed = {folder / r for r in resources(folder)}
        files = {p for p in h.object_files() if p.parent.is_relative_to(folder)} - examples
        assert listed == files, f"{folder}: a file the kustomization does not list is never deployed"


def test_every_overlay_takes_the_whole_base():
    """kustomize refuses k8s/ itself as an overlay's resource (it holds the overlay), so each
    overlay lists the base's folders, in the base's order: none may be left out."""
    base = [f"../../{name}" for name in resources(h.K8S)]
    for overlay in h.OVERLAYS:
        listed = [r for r in resources(h.K8S / "overlays" / overlay) if r.startswith("../../")]
        assert listed == base, overlay


def test_the_node_overlay_changes_only_the_substitute_images_kedas_timings_the_ingress_issuer_and_tracing():
    timings = yaml.safe_load((h.K8S / "overlays/node/scaledobject-timings.yaml").read_text())["spec"]
    substitutes = {"apache/kafka:4.1.1": images_build.KAFKA_IMAGE, "mongo:8.0": images_build.MONGODB_IMAGE}
    minikube, node = h.rendered("minikube"), h.rendered("node")
    expected = {where: (image, substitutes[image]) for where, image in image_changes(minikube).items()
                if image in substitutes}
    assert len(expected) == 3, "the Kafka and MongoDB StatefulSets and the topic Job"
    scaled_object = ("ScaledObject", "keda.sh", "persist-purchase")
    spec = h.find(minikube, "ScaledObject", "persist-purchase").obj["spec"]
    for name, value in timings.items():
        expected[(scaled_object, f".spec.{name}")] = (spec[name], value)
    assert set(timings) == {"pollingInterval", "cooldownPeriod"}
    # The ingress: Traefik's own objects added, and the wiring of the base's ingress objects to it.
    expected.update({(d.key, ""): (None, d.obj) for d in node if d.key in h.INGRESS_CONTROLLER})
    for name in ("buy", "history"):
        ingress = h.find(minikube, "Ingress", name).key
        vhost = ".metadata.annotations.nginx.ingress.kubernetes.io/upstream-vhost"
        expected[(ingress, ".spec.ingressClassName")] = ("nginx", "traefik")
        expected[(ingress, vhost)] = (f"{name}.purchase.svc.cluster.local", None)
        expected[(ingress, ".metadata.annotations.traefik.ingress.kubernetes.io/router.middlewares")] = (
            None, f"{name}-host@file")
        policy = h.find(minikube, "NetworkPolicy", f"{name}-from-knative").key
        expected[(policy, ".spec.ingress[0].from[1].namespaceSelector.matchLabels.kubernetes.io/metadata.name")] = (
            "kourier-system", "traefik")
    gateway = h.find(minikube, "Service", "knative-gateway", group="").key
    expected[(gateway, ".spec.externalName")] = ("kourier-internal.kourier-system.svc.cluster.local",
                                                "traefik-internal.traefik.svc.cluster.local")
    # The OpenID Connect provider's objects added, and the issuer the functions trust set to it.
    expected.update({(d.key, ""): (None, d.obj) for d in node if d.key in h.IDENTITY_PROVIDER})
    config = h.find(minikube, "ConfigMap", "purchase-config")
    expected[(config.key, ".data.AUTH_ISSUER")] = (config.obj["data"]["AUTH_ISSUER"], node_issuer(node))
    # The trace backend's objects added, and the functions' exporter pointed at it (the base exports none).
    expected.update({(d.key, ""): (None, d.obj) for d in node if d.key in h.TRACE_BACKEND})
    expected[(config.key, ".data.OTEL_TRACES_EXPORTER")] = (None, "zipkin_json")
    expected[(config.key, ".data.OTEL_EXPORTER_ZIPKIN_ENDPOINT")] = (None, node_zipkin_endpoint(node))
    assert differences(minikube, node) == expected


def node_zipkin_endpoint(node) -> str:
    """Zipkin's span endpoint by its Service's cluster name and port, which is the container's."""
    service = h.find(node, "Service", "zipkin").obj
    container = h.containers(h.find(node, "Deployment", "zipkin"))[0]
    assert service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"] == 9411
    return f"http://zipkin.{h.TRACE_BACKEND_NAMESPACE}.svc.cluster.local:9411/api/v2/spans"


def node_issuer(node) -> str:
    """The provider's Service by its cluster name and port (the container's, which the server puts
    into the issuer), and devstack/oidc.py's issuer id."""
    service = h.find(node, "Service", "oidc").obj
    container = h.containers(h.find(node, "Deployment", "oidc"))[0]
    assert service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"] == 8080
    return f"http://oidc.{h.IDENTITY_PROVIDER_NAMESPACE}.svc.cluster.local:8080/{oidc.ISSUER_ID}"


def test_the_node_provider_is_configured_as_the_local_one_and_every_overlay_requires_tokens():
    node = h.rendered("node")
    served = json.loads(h.find(node, "ConfigMap", "oidc-config").obj["data"]["oidc-config.json"])
    local = oidc.server_config("unused", expiry_s=served["tokenCallbacks"][0]["tokenExpiry"])
    del local["tokenProvider"]  # the pod makes its own key at start
    assert served == local
    assert h.find(node, "ConfigMap", "purchase-config").obj["data"]["AUTH_ISSUER"] == node_issuer(node)
    image = h.containers(h.find(node, "Deployment", "oidc"))[0]["image"]
    assert image == images_build.OIDC_IMAGE
    for overlay in h.OVERLAYS:
        data = h.find(h.rendered(overlay), "ConfigMap", "purchase-config").obj["data"]
        assert data["AUTH_MODE"] == "jwt" and data["AUTH_ISSUER"] and data["AUTH_AUDIENCE"] == oidc.AUDIENCE, overlay


def test_the_registry_example_changes_only_the_function_images():
    built = h.make_image_names("REGISTRY=ghcr.io/example/purchase", "TAG=1.0.0")
    by_image = {image: built[folder] for folder, image, _ in h.FUNCTIONS.values()}
    minikube = h.rendered("minikube")
    expected = {where: (image, by_image[FUNCTION_IMAGES[image]]) for where, image in image_changes(minikube).items()
                if image in FUNCTION_IMAGES}
    # Every function image is renamed (persist-purchase's twice: the mongodb-app-user Job runs it too).
    assert {old for old, _ in expected.values()} == set(FUNCTION_IMAGES)
    assert differences(minikube, h.rendered("registry-example")) == expected


def test_the_kafka_auth_component_adds_only_the_login():
    auth = ("TriggerAuthentication", "keda.sh", "kafka-client-auth")
    scaled_object = ("ScaledObject", "keda.sh", "persist-purchase")
    found = differences(h.rendered("minikube"), h.rendered("minikube+kafka-auth"))
    assert set(found) == {(auth, ""), (scaled_object, ".spec.triggers[0].authenticationRef")}
    assert found[(scaled_object, ".spec.triggers[0].authenticationRef")] == (None, {"name": "kafka-client-auth"})


def test_the_standalone_kustomize_is_the_one_kubectl_embeds():
    result = subprocess.run([str(kustomize.ensure()), "version"], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == kustomize.VERSION
    assert kustomize.VERSION.startswith("v5."), "kubectl's `apply -k` has embedded kustomize v5 since 1.27"
