"""The database password never shows: not in a function's log lines, not in an error answer,
even while every login with it fails (history and the consumer against the real FerretDB with
credentials it refuses)."""
from __future__ import annotations

import urllib.parse
import uuid

import pytest
import requests
from support import isolated_env, wait_until

from devstack import stack as devstack
from devstack.servers import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def refused_login(servers, tmp_path_factory):
    """history and persist-purchase with a MONGODB_URI carrying a password FerretDB refuses."""
    password = "canary-" + uuid.uuid4().hex
    address = urllib.parse.urlsplit(servers.mongodb_uri).netloc
    env, _ = isolated_env(servers, "secret-" + uuid.uuid4().hex[:8],
                          MONGODB_URI=f"mongodb://purchase-app:{password}@{address}/?authSource=purchases",
                          MONGODB_TIMEOUT_MS="1500")
    log_dir = tmp_path_factory.mktemp("secret-logs")
    history = devstack.start_history(env, free_port(), log_dir)
    consumer = devstack.start_consumer(env, free_port(), log_dir, wait=False)
    yield password, history, consumer
    history.stop()
    consumer.stop()


def test_failed_logins_answer_and_log_without_the_password(refused_login):
    password, history, consumer = refused_login
    response = requests.get(f"http://127.0.0.1:{history.port}/api/user/u1/purchases", timeout=20)
    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert password not in response.text
    # The consumer reports the refused login; its log line names the failure, not the secret.
    consumer_log = wait_until(lambda: "mongodb" in (text := consumer.log.read_text(errors="replace")) and text,
                              60, message="the consumer's log of the refused login")
    history_log = wait_until(lambda: "database unavailable" in (text := history.log.read_text(errors="replace"))
                             and text, 20, message="history's log of the refused login")
    for text in (consumer_log, history_log):
        assert password not in text
        assert "canary-" not in text
