"""Shared fixtures: the real Kafka and MongoDB-wire servers, started once per session.

With KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI / ZIPKIN_URL set, the suite uses those servers instead
(e.g. a real mongod or Kafka cluster); otherwise it starts Apache Kafka, FerretDB and Zipkin
through the same code as `make run`, on free ports, with data in a temporary folder. Every
function the suite starts exports its spans to that Zipkin (the `zipkin` fixture reads them back).
Each session uses its own topic, group and database, so it never sees other data.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import isolated_env

from devstack import stack as devstack


@dataclass
class Pipeline:
    """One isolated instance of the three functions and the gateway on the session's servers."""
    stack: devstack.Stack
    env: dict
    topic: str
    dead_letter_topic: str
    group: str
    database: str
    log_dir: Path
    ports: dict = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def buy(self) -> str:
        return f"http://127.0.0.1:{self.ports['buy']}"

    @property
    def history(self) -> str:
        return f"http://127.0.0.1:{self.ports['history']}"

    def collection(self):
        from purchase_common import storage
        client = storage.connect(self.stack.mongodb_uri)
        return client[self.database]["purchases"]


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("stack")
    stack = devstack.start_servers(data_dir, preferred_ports=False, traces=True)
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def zipkin(servers):
    """The session's Zipkin (tools.trace.ZipkinClient: base_url, traces_with_tag, trace)."""
    from tools.trace import ZipkinClient
    return ZipkinClient(servers.zipkin_url)


@pytest.fixture(scope="session")
def pipeline(servers, tmp_path_factory):
    env, names = isolated_env(servers, "e2e-" + uuid.uuid4().hex[:8])
    log_dir = tmp_path_factory.mktemp("logs")
    # A Stack of its own, so these processes stop with this fixture, not with the servers.
    functions = devstack.Stack(servers.kafka_bootstrap, servers.mongodb_uri)
    devstack.start_functions(functions, log_dir, preferred_ports=False, env=env)
    yield Pipeline(servers, env, log_dir=log_dir, ports=functions.ports, **names)
    functions.stop()


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory):
    """The OpenID Connect provider (mock-oauth2-server, devstack/oidc.py) every auth test uses."""
    from devstack import oidc
    provider = oidc.start(tmp_path_factory.mktemp("oidc"))
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def auth_pipeline(servers, oidc_provider, tmp_path_factory):
    """A second pipeline, AUTH_MODE=jwt against the provider, its JWKS fetched through a proxy
    the tests can take down (`auth_pipeline.jwks`); otherwise like `pipeline`."""
    from auth_tokens import CountingProxy
    jwks = CountingProxy(oidc_provider.base_url)
    env, names = isolated_env(servers, "auth-" + uuid.uuid4().hex[:8], AUTH_MODE="jwt",
                              AUTH_ISSUER=oidc_provider.issuer, AUTH_JWKS_URL=jwks.url + "/purchase/jwks",
                              AUTH_HTTP_TIMEOUT_S="1", AUTH_REFRESH_INTERVAL_S="0.5")
    log_dir = tmp_path_factory.mktemp("auth-logs")
    functions = devstack.Stack(servers.kafka_bootstrap, servers.mongodb_uri)
    devstack.start_functions(functions, log_dir, preferred_ports=False, env=env)
    pipeline = Pipeline(servers, env, log_dir=log_dir, ports=functions.ports, **names)
    pipeline.provider, pipeline.jwks = oidc_provider, jwks
    yield pipeline
    functions.stop()
    jwks.close()
