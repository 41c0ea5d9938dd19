"""The real images under podman, as the manifests run them: user 10001, read-only root, /tmp
the only writable place. Built (or found cached, seconds) by images/build.py; skipped where
podman or mmdebstrap is missing."""
from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest
import requests
from support import wait_until

from tools.common import free_port

pytestmark = [
    pytest.mark.podman,
    pytest.mark.skipif(shutil.which("podman") is None or shutil.which("mmdebstrap") is None,
                       reason="needs podman and mmdebstrap (images/build.py)"),
]

HTTP_FUNCTIONS = ("buy", "history")
RESTRICTED = ["--read-only", "--tmpfs", "/tmp", "--user", "10001:10001", "--cap-drop", "ALL",
              "--security-opt", "no-new-privileges"]


@pytest.fixture(scope="session")
def build():
    from images import build as images_build
    return images_build


@pytest.fixture(scope="session")
def function_images(build) -> dict[str, str]:
    refs = build.build_function_images()
    return {ref.rsplit("/", 1)[1].split(":")[0]: ref for ref in refs}


def podman(build, *args, timeout_s=120, check=True) -> subprocess.CompletedProcess:
    return build.podman(*args, timeout_s=timeout_s, check=check)


def unreachable_servers() -> list[str]:
    """Kafka and MongoDB that are surely not there: the probes must answer anyway."""
    return ["--env", f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{free_port()}",
            "--env", f"MONGODB_URI=mongodb://127.0.0.1:{free_port()}/", "--env", "MONGODB_TIMEOUT_MS=500"]


def run_detached(build, image: str, port: int, *extra: str) -> str:
    """Start the image with 8080 published on 127.0.0.1:port; the container's name."""
    name = f"purchase-test-{uuid.uuid4().hex[:8]}"
    podman(build, "run", "--detach", "--name", name, *RESTRICTED, "--publish", f"127.0.0.1:{port}:8080",
           *unreachable_servers(), *extra, image)
    return name


def first_answer(url: str, build, name: str, timeout_s: float = 60) -> requests.Response:
    """The container's first HTTP answer, whatever its status; fails at once if the container stops."""
    def attempt() -> list[requests.Response] | None:
        try:
            return [requests.get(url, timeout=2)]  # in a list: a 4xx/5xx Response is falsy
        except requests.ConnectionError:
            state = podman(build, "inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
            if state not in ("running", "created", "configured"):
                raise AssertionError(f"{name} is {state}:\n{podman(build, 'logs', name, check=False).stderr}") from None
            return None
    return wait_until(attempt, timeout_s, 0.3, f"an answer from {url}")[0]


@pytest.mark.parametrize("function", HTTP_FUNCTIONS)
def test_http_image_answers_healthz_read_only_as_10001(function, function_images, build):
    port = free_port()
    name = run_detached(build, function_images[function], port)
    try:
        response = first_answer(f"http://127.0.0.1:{port}/healthz", build, name)
        assert response.status_code == 200, response.text
        time.sleep(1)  # gunicorn starts its control socket after the first worker
        logs = podman(build, "logs", name)
        output = logs.stdout + logs.stderr
        # gunicorn >= 25.1 put its control socket under $HOME (/nonexistent) before XDG_RUNTIME_DIR=/tmp.
        assert "Control server error" not in output and "Read-only file system" not in output, output
        assert "Failed to start control socket" not in output, output
        user = podman(build, "exec", name, "python", "-c", "import os; print(os.getuid(), os.getgid())")
        assert user.stdout.split() == ["10001", "10001"]
    finally:
        podman(build, "rm", "--force", "--time", "5", name, check=False)


def test_consumer_image_imports_read_only_as_10001(function_images, build):
    result = podman(build, "run", "--rm", *RESTRICTED, "--entrypoint", "python", function_images["persist-purchase"],
                    "-c", "import consumer, main; print('ok')")
    assert result.stdout.strip() == "ok", result.stderr


def test_images_carry_no_pip_and_no_build_tools(function_images, build):
    for image in function_images.values():
        result = podman(build, "run", "--rm", *RESTRICTED, "--entrypoint", "python", image, "-c",
                        "import importlib.util as u; print([m for m in ('pip', 'setuptools') if u.find_spec(m)])")
        assert result.stdout.strip() == "[]", (image, result.stdout, result.stderr)


# --- substitutes for the upstream images the node cannot pull ------------------------------

@pytest.fixture(scope="session")
def substitutes(build) -> dict[str, str]:
    return build.build_substitutes()


def test_mongodb_substitute_takes_the_secret_login_and_ignores_mongod_args(substitutes, build):
    import k8s_helpers as h
    import pymongo
    secret = h.find(h.rendered("node"), "Secret", "mongodb-credentials").obj["stringData"]
    port = free_port()
    name = f"purchase-test-{uuid.uuid4().hex[:8]}"
    podman(build, "run", "--detach", "--name", name, "--user", "999:999", "--publish", f"127.0.0.1:{port}:27017",
           "--env", f"MONGO_INITDB_ROOT_USERNAME={secret['MONGO_INITDB_ROOT_USERNAME']}",
           "--env", f"MONGO_INITDB_ROOT_PASSWORD={secret['MONGO_INITDB_ROOT_PASSWORD']}",
           substitutes["mongo:8.0"], "--wiredTigerCacheSizeGB", "0.25")
    try:
        uri = secret["MONGODB_ADMIN_URI"].replace("mongodb.purchase.svc.cluster.local:27017", f"127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=2000)
                client.purchases.check.insert_one({"ok": 1})
                break
            except pymongo.errors.ServerSelectionTimeoutError:
                if time.monotonic() > deadline:
                    raise
        assert client.purchases.check.count_documents({}) == 1
        with pytest.raises(pymongo.errors.OperationFailure):
            pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=2000
                                ).purchases.check.insert_one({"anonymous": 1})
    finally:
        podman(build, "rm", "--force", "--time", "5", name, check=False)


def test_kafka_substitute_runs_the_statefulset_env_and_the_topic_job(substitutes, build):
    import k8s_helpers as h
    from kafka import KafkaConsumer, KafkaProducer
    docs = h.rendered("node")  # what runs on the node with the substitutes
    broker = h.containers(h.find(docs, "StatefulSet", "kafka"))[0]
    job = h.containers(h.find(docs, "Job", "kafka-create-topics"))[0]
    port = free_port()
    env = {e["name"]: e["value"] for e in broker["env"]}
    env["KAFKA_ADVERTISED_LISTENERS"] = f"PLAINTEXT://127.0.0.1:{port}"
    name = f"purchase-test-{uuid.uuid4().hex[:8]}"
    podman(build, "run", "--detach", "--name", name, "--user", "1000:1000", "--publish", f"127.0.0.1:{port}:9092",
           *[arg for key, value in env.items() for arg in ("--env", f"{key}={value}")],
           substitutes["apache/kafka:4.1.1"])
    try:
        job_env = {e["name"]: e["value"] for e in job["env"]} | {"BOOTSTRAP": f"127.0.0.1:{port}"}
        created = podman(build, "run", "--rm", "--network", "host", "--user", "1000:1000",
                         "--entrypoint", job["command"][0],
                         *[arg for key, value in job_env.items() for arg in ("--env", f"{key}={value}")],
                         substitutes["apache/kafka:4.1.1"], *job["command"][1:], *job["args"], timeout_s=180)
        assert "topic purchases: 6 partitions wanted, 6 found" in created.stdout, created.stdout + created.stderr
        producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", acks="all")
        producer.send("purchases", key=b"555", value=b"from-the-substitute").get(timeout=30)
        producer.close()
        consumer = KafkaConsumer("purchases", bootstrap_servers=f"127.0.0.1:{port}", group_id="substitute-check",
                                 auto_offset_reset="earliest", consumer_timeout_ms=20000)
        try:
            assert [m.value for m in consumer] == [b"from-the-substitute"]
        finally:
            consumer.close()
    finally:
        podman(build, "rm", "--force", "--time", "10", name, check=False)
