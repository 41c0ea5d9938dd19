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


def _pod_env(container: dict, pod: str) -> dict[str, str]:
    """The container's env as kubelet gives it to pod `pod`: $(POD_NAME) expanded; the
    downward-API node.id left out, so the image's start script derives it from the hostname."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"].replace("$(POD_NAME)", pod)
    return env


def _serves(build, name: str, probe: list[str]) -> bool:
    return podman(build, "exec", name, *probe, check=False, timeout_s=30).returncode == 0


def test_kafka_substitute_runs_the_statefulset_as_three_pods_and_the_topic_job(substitutes, build):
    """The three pods of the StatefulSet on a network of their own, each reachable by its
    headless-Service name: Ready (the manifest's probe) only once a quorum exists, and the topic
    Job creates and checks both topics at replication 3, min ISR 2."""
    import k8s_helpers as h
    docs = h.rendered("node")  # what runs on the node with the substitutes
    sts = h.find(docs, "StatefulSet", "kafka").obj
    (broker,) = h.containers(h.find(docs, "StatefulSet", "kafka"))
    (job,) = h.containers(h.find(docs, "Job", "kafka-create-topics"))
    probe = broker["readinessProbe"]["exec"]["command"]
    image, run = substitutes["apache/kafka:4.1.1"], uuid.uuid4().hex[:8]
    network = f"purchase-test-{run}"
    pods = [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]
    names = {pod: f"{network}-{pod}" for pod in pods}

    def start(pod: str) -> None:
        fqdn = f"{pod}.{sts['spec']['serviceName']}.{h.NAMESPACE}.svc.cluster.local"
        podman(build, "run", "--detach", "--name", names[pod], "--network", network, "--network-alias", fqdn,
               "--hostname", pod, "--user", "1000:1000",
               *[arg for key, value in _pod_env(broker, pod).items() for arg in ("--env", f"{key}={value}")], image)

    podman(build, "network", "create", network)
    try:
        start(pods[0])
        # Alone, the first pod has no quorum (one voter of three): never Ready.
        time.sleep(20)
        assert not _serves(build, names[pods[0]], probe), "Ready without a controller quorum"
        for pod in pods[1:]:
            start(pod)
        for pod in pods:
            wait_until(lambda p=pod: _serves(build, names[p], probe), 240, 2, f"{pod} serving")
        logs = podman(build, "logs", names[pods[2]]).stdout
        assert f"{pods[2]} is node.id 2" in logs, logs[-2000:]
        job_env = {e["name"]: e["value"] for e in job["env"]}
        created = podman(build, "run", "--rm", "--network", network, "--user", "1000:1000",
                         "--entrypoint", job["command"][0],
                         *[arg for key, value in job_env.items() for arg in ("--env", f"{key}={value}")],
                         image, *job["command"][1:], *job["args"], timeout_s=300)
        out = created.stdout
        for topic, partitions in ((job_env["PURCHASES_TOPIC"], job_env["PURCHASES_PARTITIONS"]),
                                  (job_env["DEAD_LETTER_TOPIC"], job_env["DEAD_LETTER_PARTITIONS"])):
            assert (f"topic {topic}: {partitions} partitions, replication factor {job_env['REPLICATION_FACTOR']}, "
                    f"min.insync.replicas {job_env['MIN_INSYNC_REPLICAS']}, all in sync") in out, out + created.stderr
        # One pod away: the other two keep the quorum and still serve.
        podman(build, "stop", "--time", "30", names[pods[0]], timeout_s=60)
        assert all(_serves(build, names[pod], probe) for pod in pods[1:])
    finally:
        for name in names.values():
            podman(build, "rm", "--force", "--time", "5", name, check=False)
        podman(build, "network", "rm", "--force", network, check=False)


def test_kafka_substitute_refuses_a_node_id_other_than_its_ordinal(substitutes, build):
    result = podman(build, "run", "--rm", "--hostname", "kafka-1", "--user", "1000:1000",
                    "--env", "KAFKA_NODE_ID=2", "--env", "KAFKA_PROCESS_ROLES=broker,controller",
                    substitutes["apache/kafka:4.1.1"], check=False, timeout_s=60)
    assert result.returncode == 2 and "KAFKA_NODE_ID=2, but this is pod kafka-1" in result.stderr, result.stderr
