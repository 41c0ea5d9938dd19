"""The functions' own MongoDB user (python -m purchase_common.app_user, the k8s Job's command),
against a real FerretDB with authentication on, as the node's MongoDB stand-in runs it."""
from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from devstack.servers import start_ferretdb

pytestmark = pytest.mark.integration

ROOT_PASSWORD = "root-" + uuid.uuid4().hex
AUTHENTICATION_FAILED = 18


@pytest.fixture(scope="module")
def secured_ferretdb(tmp_path_factory):
    """FerretDB with its (experimental) SCRAM authentication and a root user in admin."""
    server = start_ferretdb(tmp_path_factory.mktemp("ferretdb-auth"), env={
        "FERRETDB_TEST_ENABLE_NEW_AUTH": "true", "FERRETDB_SETUP_DATABASE": "admin",
        "FERRETDB_SETUP_USERNAME": "root", "FERRETDB_SETUP_PASSWORD": ROOT_PASSWORD})
    yield f"127.0.0.1:{server.port}"
    server.stop()


def provision(address: str, username: str, password: str) -> subprocess.CompletedProcess:
    env = {"MONGODB_ADMIN_URI": f"mongodb://root:{ROOT_PASSWORD}@{address}/?authSource=admin",
           "MONGODB_APP_USERNAME": username, "MONGODB_APP_PASSWORD": password}
    return subprocess.run([sys.executable, "-m", "purchase_common.app_user"], env=env, capture_output=True,
                          text=True, timeout=60)


def app_client(address: str, username: str, password: str) -> MongoClient:
    return MongoClient(f"mongodb://{username}:{password}@{address}/purchases?authSource=purchases",
                       serverSelectionTimeoutMS=5000)


def test_the_app_user_is_created_logs_in_and_a_rerun_rotates_its_password(secured_ferretdb):
    username, first, second = "app-" + uuid.uuid4().hex[:6], "pw-" + uuid.uuid4().hex, "pw-" + uuid.uuid4().hex
    created = provision(secured_ferretdb, username, first)
    assert created.returncode == 0, created.stderr
    assert "created" in created.stdout
    with app_client(secured_ferretdb, username, first) as client:
        client.purchases.probe.insert_one({"ok": 1})
        assert client.purchases.probe.count_documents({}) >= 1

    rotated = provision(secured_ferretdb, username, second)
    assert rotated.returncode == 0, rotated.stderr
    assert "updated" in rotated.stdout
    with app_client(secured_ferretdb, username, first) as client, pytest.raises(OperationFailure) as refused:
        client.purchases.probe.find_one()
    assert refused.value.code == AUTHENTICATION_FAILED
    with app_client(secured_ferretdb, username, second) as client:
        assert client.purchases.probe.find_one() is not None
    for output in (created.stdout + created.stderr, rotated.stdout + rotated.stderr):
        assert first not in output and second not in output and ROOT_PASSWORD not in output


def test_a_wrong_root_password_fails_without_printing_any_password(secured_ferretdb):
    password = "pw-" + uuid.uuid4().hex
    env = {"MONGODB_ADMIN_URI": f"mongodb://root:not-{ROOT_PASSWORD}@{secured_ferretdb}/?authSource=admin",
           "MONGODB_APP_USERNAME": "app-x", "MONGODB_APP_PASSWORD": password}
    result = subprocess.run([sys.executable, "-m", "purchase_common.app_user"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "Authentication failed" in result.stderr
    assert ROOT_PASSWORD not in result.stderr and password not in result.stderr


def test_without_a_login_the_secured_server_refuses_everything(secured_ferretdb):
    with MongoClient(f"mongodb://{secured_ferretdb}/", serverSelectionTimeoutMS=5000) as client, \
            pytest.raises(OperationFailure):
        client.purchases.probe.find_one()
