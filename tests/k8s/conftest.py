"""Fixtures for the Kubernetes, image and deploy-target tests (no cluster, no Docker)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # k8s_helpers; devstack and the repository root

import k8s_helpers as h  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "venv_install: builds a fresh virtualenv per function from PyPI (as the image build does); "
        "part of `make test`, about a minute with a warm pip cache",
    )


@pytest.fixture(scope="session")
def docs() -> list[h.Doc]:
    return h.all_docs()


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
