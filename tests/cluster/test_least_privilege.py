"""Least privilege on the node: the functions log in to MongoDB as the application user the
mongodb-app-user Job made (never as root), the NetworkPolicies are in the API server, and no
secret shows in `make k8s-status` or in any pod's log."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from clusterlib import CONSUMER, NAMESPACE, ROOT
from pymongo import MongoClient
from pymongo.errors import OperationFailure

AUTHENTICATION_FAILED = 18
POLICIES = {"default-deny-ingress", "kafka-clients-only", "mongodb-clients-only", "buy-from-knative",
            "history-from-knative", "persist-purchase-no-ingress"}


def _secret_values(kube) -> dict[str, str]:
    values = {}
    for name, keys in (("mongodb-credentials", ("MONGO_INITDB_ROOT_PASSWORD",)),
                       ("mongodb-app-credentials", ("MONGODB_APP_PASSWORD",))):
        for key in keys:
            values[f"{name}/{key}"] = kube.secret_value(name, key)
    return values


def _pod_template_env(kube, kind: str, name: str) -> list[dict]:
    obj = kube.get(kind, name)
    template = obj["spec"]["template"]["spec"]
    return [env for container in template["containers"] for env in container.get("env", []) or []]


def test_the_app_user_job_completes_and_the_functions_use_only_its_login(stack, kube):
    job = kube.get("job.batch", "mongodb-app-user")
    if job is not None:  # ttlSecondsAfterFinished may have removed it already
        assert kube.condition(job, "Complete") == "True", job["status"]
        log = kube.run("logs", f"--namespace={NAMESPACE}", "job/mongodb-app-user").stdout
        assert "user 'purchase-app' of database 'purchases'" in log, log
    for kind, name in (("service.serving.knative.dev", "history"), ("deployment", CONSUMER)):
        env = _pod_template_env(kube, kind, name)
        uri = next(e for e in env if e["name"] == "MONGODB_URI")
        assert uri["valueFrom"]["secretKeyRef"]["name"] == "mongodb-app-credentials", (name, uri)
        assert not [e for e in env if "INITDB" in e["name"] or e["name"] == "MONGODB_ADMIN_URI"], (name, env)
    buy_env = _pod_template_env(kube, "service.serving.knative.dev", "buy")
    assert not [e for e in buy_env if "MONGO" in e["name"]], "buy never needs the database"


def test_the_app_login_works_and_a_wrong_password_is_refused(stack, kube):
    app_uri = kube.secret_value("mongodb-app-credentials", "MONGODB_URI")
    with MongoClient(app_uri, serverSelectionTimeoutMS=10000) as client:
        assert client.purchases.purchases.estimated_document_count() >= 0
    password = kube.secret_value("mongodb-app-credentials", "MONGODB_APP_PASSWORD")
    wrong = app_uri.replace(f":{password}@", ":not-the-password@")
    assert wrong != app_uri
    with MongoClient(wrong, serverSelectionTimeoutMS=10000) as client, pytest.raises(OperationFailure) as refused:
        client.purchases.purchases.find_one()
    assert refused.value.code == AUTHENTICATION_FAILED


def test_the_network_policies_are_in_the_api_server(deployed, kube):
    # Applied and accepted; the node's bridge CNI plugin does not enforce NetworkPolicy, so what
    # they allow is checked statically (tests/k8s), not by trying connections here.
    names = {p["metadata"]["name"] for p in kube.items("networkpolicy.networking.k8s.io")}
    assert names >= POLICIES, names


def test_no_secret_shows_in_make_status_or_in_any_pod_log(stack, kube):
    # Some traffic first, so the functions have logged their connections.
    stack.buy(3)
    secrets = _secret_values(kube)
    env = dict(os.environ, KUBECONFIG=str(kube.kubeconfig))
    status = subprocess.run(["make", "--no-print-directory", "k8s-status", f"KUBECTL={kube.kubectl_path}",
                             f"PYTHON={sys.executable}"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0, status.stderr
    assert "mongodb" in status.stdout  # it did list the namespace
    logs = {}
    for pod in kube.items("pods"):
        for container in pod["spec"]["containers"]:
            result = kube.run("logs", f"--namespace={NAMESPACE}", pod["metadata"]["name"], "-c", container["name"],
                              check=False)
            logs[f"{pod['metadata']['name']}/{container['name']}"] = result.stdout
    assert len(logs) >= 3, logs.keys()  # kafka, mongodb and buy (just used) at least
    for where, text in {"make k8s-status": status.stdout + status.stderr, **logs}.items():
        leaked = [name for name, value in secrets.items() if value in text]
        assert not leaked, f"{leaked} in {where}"


TRAEFIK = "system:serviceaccount:traefik:traefik"


def _can(kube, verb: str, resource: str, namespace: str | None) -> bool:
    resource, _, subresource = resource.partition("/")
    args = ["auth", "can-i", verb, resource, f"--as={TRAEFIK}"]
    args += [f"--subresource={subresource}"] if subresource else []
    args += [f"--namespace={namespace}"] if namespace else []
    result = kube.run(*args, check=False)
    return result.stdout.strip() == "yes"


def test_the_ingress_runs_non_root_read_only_and_reads_only_what_its_two_providers_need(stack, kube):
    pods = [p for p in kube.items("pods", "app.kubernetes.io/name=traefik", namespace="traefik")
            if kube.condition(p, "Ready") == "True"]
    assert pods, "no Ready Traefik pod"
    spec = pods[0]["spec"]
    container = spec["containers"][0]
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    allowed = [("list", "ingresses.networking.k8s.io", NAMESPACE),
               ("update", "ingresses.networking.k8s.io/status", NAMESPACE),
               ("watch", "ingresses.networking.internal.knative.dev", NAMESPACE),
               ("update", "ingresses.networking.internal.knative.dev/status", NAMESPACE),
               ("list", "endpointslices.discovery.k8s.io", NAMESPACE),
               ("list", "services", NAMESPACE),
               ("list", "ingressclasses.networking.k8s.io", None),
               ("watch", "nodes", None)]
    refused = [("create", "ingresses.networking.k8s.io", NAMESPACE),
               ("update", "ingresses.networking.internal.knative.dev", NAMESPACE),
               ("list", "pods", NAMESPACE),
               ("list", "secrets", "kube-system"),
               ("list", "secrets", "knative-serving"),
               ("list", "services", "default"),
               ("update", "nodes", None),
               ("create", "pods/exec", NAMESPACE)]
    assert [a for a in allowed if not _can(kube, *a)] == []
    assert [r for r in refused if _can(kube, *r)] == []
