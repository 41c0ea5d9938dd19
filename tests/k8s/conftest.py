"""Fixtures for the Kubernetes, image and deploy-target tests (no cluster, no Docker)."""
from __future__ import annotations

import os

import k8s_helpers as h  # pytest puts this conftest's folder on sys.path (prepend import mode)
import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "venv_install: builds a fresh virtualenv per function from PyPI (as the image build does); "
        "part of `make test`, about a minute with a warm pip cache",
    )
    config.addinivalue_line(
        "markers",
        "podman: runs the real images under podman (built or found cached by images/build.py); "
        "skipped where podman is missing",
    )


@pytest.fixture(scope="session", params=h.VARIANTS)
def docs(request) -> list[h.Doc]:
    """The objects of one overlay (or the default one with the SASL/TLS component) as rendered."""
    return h.rendered(request.param)


@pytest.fixture(scope="session")
def crds() -> dict:
    """The upstream CRDs; missing ones skip locally but fail under CI=true."""
    directory = h.crds_dir()
    wanted = {("keda.sh", "ScaledObject"), ("keda.sh", "TriggerAuthentication"),
              ("serving.knative.dev", "Service")}
    found = h.load_crds(directory) if directory.is_dir() else {}
    missing = sorted(wanted - set(found))
    if missing:
        message = (f"upstream CRDs {missing} not found in {directory} "
                   "(set PURCHASE_CRDS_DIR to a folder with the KEDA and Knative Serving CRD YAML)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found
