"""The images, without Docker: functions/Dockerfile, as each function's `make build-<fn>` builds
it (its FUNCTION, its target stage), is checked for what it promises, and what it does is
replayed in a fresh virtualenv per function (its own requirements + the shared package, the
COPY'd sources, the ENV, the ENTRYPOINT/CMD), which must start and answer."""
from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import k8s_helpers as h
import pytest
import requests
import yaml
from support import wait_until

from tools.common import free_port

FOLDERS = {function: folder for function, (folder, _, _) in h.FUNCTIONS.items()}
TARGETS = {"buy": "buy", "history": "history"}  # HTTP functions: functions-framework targets


def tagged(function):
    """The instructions of the image `make build-<function>` tags (its target stage and those it is FROM)."""
    return h.function_image(function).final


# --- Dockerfile -------------------------------------------------------------------------

def test_one_dockerfile_builds_every_function():
    for function, (folder, _, _) in h.FUNCTIONS.items():
        image = h.function_image(function)
        assert image.dockerfile == h.ROOT / "functions/Dockerfile"
        assert h.build_args(image.argv)["FUNCTION"] == Path(folder).name
        assert image.target == h.IMAGE_KINDS[function]
    assert not list(h.ROOT.glob("functions/*/Dockerfile")), "one Dockerfile, not one per function"


def test_podman_builds_what_make_builds():
    """images/build.py (the node's images, tests/k8s/test_k8s_podman.py) passes make's arguments."""
    from images import build
    for function in h.FUNCTIONS:
        image = h.function_image(function)
        function_arg, target = build.FUNCTION_BUILDS[function]
        assert build.FUNCTION_DOCKERFILE == image.dockerfile
        assert (function_arg, target) == (h.build_args(image.argv)["FUNCTION"], image.target)


def test_podman_build_stamp_follows_the_dockerfile_and_the_function(tmp_path, monkeypatch):
    """An image is rebuilt when functions/Dockerfile, its function's folder or the shared package
    changes, and only then."""
    from images import build
    for path in (".dockerignore", "functions", "lib/purchase_common"):
        source = h.ROOT / path
        if source.is_dir():
            shutil.copytree(source, tmp_path / path,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        else:
            shutil.copy(source, tmp_path / path)
    monkeypatch.setattr(build, "ROOT", tmp_path)
    monkeypatch.setattr(build, "FUNCTION_DOCKERFILE", tmp_path / "functions/Dockerfile")

    def stamps():
        return {name: build.function_stamp("base", name) for name in build.FUNCTION_BUILDS}

    before = stamps()
    assert len(set(before.values())) == len(before), "each function its own stamp"
    assert build.function_stamp("another base", "buy") != before["buy"]
    with (tmp_path / "functions/buy/main.py").open("a") as source:
        source.write("\n# changed\n")
    after_buy = stamps()
    assert after_buy["buy"] != before["buy"]
    assert {n: v for n, v in after_buy.items() if n != "buy"} == {n: v for n, v in before.items() if n != "buy"}
    for changed in ("functions/Dockerfile", "lib/purchase_common/purchase_common/config.py", ".dockerignore"):
        previous = stamps()
        with (tmp_path / changed).open("a") as file:
            file.write("\n# changed\n")
        assert all(previous[name] != stamp for name, stamp in stamps().items()), changed


@pytest.mark.parametrize("function", list(h.FUNCTIONS))
def test_dockerfile_is_multistage_slim_and_non_root(function):
    image = h.function_image(function)
    preamble_args = [i.args for i in h.parse_dockerfile(image.dockerfile)[0] if i.op == "ARG"]
    assert "PYTHON_IMAGE=python:3.11-slim" in preamble_args
    assert set(image.stages) == {"build", "runtime", image.target}, "build stage + runtime stage (+ its kind)"
    assert [i.args for i in image.stages["build"] if i.op == "FROM"] == ["${PYTHON_IMAGE} AS build"]
    final = image.final
    froms = [i.args for i in final if i.op == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS runtime", f"runtime AS {image.target}"], \
        "the image descends from the slim Python 3.11 runtime stage, not from the build stage"
    runs = " ".join(i.args for i in final if i.op == "RUN")
    for tool in ("apt-get install", "gcc", "build-essential", "pip install"):
        assert tool not in runs, f"the runtime stage must not install {tool!r}"
    copies = [i.args for i in final if i.op == "COPY"]
    assert "--from=build /opt/venv /opt/venv" in copies, "the runtime stage takes the built venv only"
    user = [i.args for i in final if i.op == "USER"]
    assert len(user) == 1 and user[0].split(":")[0].isdigit() and int(user[0].split(":")[0]) > 0, \
        "a numeric non-root user, so runAsNonRoot can verify it"
    env = h.dockerfile_env(final)
    assert env["HOST"] == "0.0.0.0", "probes reach the pod IP, not loopback"
    assert env["PATH"].startswith("/opt/venv/bin:")


@pytest.mark.parametrize("function", list(h.FUNCTIONS))
def test_dockerfile_installs_pinned_requirements_and_the_shared_package(function):
    build = h.function_image(function).stages["build"]
    copies = [i.args for i in build if i.op == "COPY"]
    assert f"{FOLDERS[function]}/requirements.lock requirements.lock" in copies
    assert "lib/purchase_common lib/purchase_common" in copies
    runs = " ".join(i.args for i in build if i.op == "RUN")
    # The lock (test_k8s_locks.py) pins requirements.txt and everything beneath it, with hashes.
    assert "pip install --require-hashes --no-deps -r requirements.lock" in runs
    assert "pip install --no-deps ./lib/purchase_common" in runs
    requirements = (h.ROOT / FOLDERS[function] / "requirements.txt").read_text().splitlines()
    pins = [line for line in requirements if line.strip() and not line.startswith("#")]
    assert pins and all("==" in line for line in pins), f"unpinned: {[p for p in pins if '==' not in p]}"


# functions-framework's options, read from the environment when not given on its command line.
FRAMEWORK_ENV = {"target": "FUNCTION_TARGET", "source": "FUNCTION_SOURCE",
                 "signature_type": "FUNCTION_SIGNATURE_TYPE", "host": "HOST", "port": "PORT"}


def test_functions_framework_reads_its_options_from_the_environment():
    from functions_framework._cli import _cli
    assert {p.name: p.envvar for p in _cli.params if p.name in FRAMEWORK_ENV} == FRAMEWORK_ENV


def test_http_images_run_functions_framework_on_port():
    for function, target in TARGETS.items():
        image = tagged(function)
        command = h.dockerfile_exec(image, "ENTRYPOINT") + h.dockerfile_exec(image, "CMD")
        assert command == ["functions-framework"], "exec form, so SIGTERM reaches it as PID 1"
        env = h.dockerfile_env(image)
        # = functions-framework --target=<target> --source=main.py --signature-type=http
        options = [env.get(FRAMEWORK_ENV[option]) for option in ("target", "source", "signature_type")]
        assert options == [target, "main.py", "http"]
        # functions-framework takes --port from PORT (Knative sets it) and --host from HOST.
        assert env["PORT"] == "8080"
        assert "8080" in [i.args for i in image if i.op == "EXPOSE"]


def test_consumer_image_runs_the_consumer():
    final = tagged("persist-purchase")
    assert h.dockerfile_exec(final, "ENTRYPOINT") == []
    assert h.dockerfile_exec(final, "CMD") == ["python", "consumer.py"]
    assert h.dockerfile_env(final)["HEALTH_PORT"] == "8081"


def dockerignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: `**` spans folders, `*` and `?` stay inside one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path, or one of its parent folders, wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = dockerignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_images_copy_and_drops_the_rest():
    patterns = [line.strip() for line in (h.ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    needed = []
    for function in h.FUNCTIONS:
        for stage in h.function_image(function).stages.values():
            for instruction in stage:
                if instruction.op == "COPY" and not instruction.args.startswith("--from"):
                    source = instruction.args.split()[0]
                    matches = glob.glob(str(h.ROOT / source))
                    assert matches, f"{function}: COPY {source} matches nothing"
                    for match in matches:
                        match = Path(match)
                        files = [p for p in match.rglob("*") if p.is_file()] if match.is_dir() else [match]
                        needed += [str(p.relative_to(h.ROOT)) for p in files if "__pycache__" not in p.parts
                                   and not any(x.endswith(".egg-info") for x in p.parts)]
    assert "lib/purchase_common/pyproject.toml" in needed
    for path in needed:
        assert not dockerignored(path, patterns), f".dockerignore drops {path}, which an image COPYs"
    for path in (".venv/bin/python", ".git/HEAD", "tests/k8s/conftest.py", "k8s/config/namespace.yaml",
                 ".cache/x", "lib/purchase_common/purchase_common/__pycache__/config.cpython-311.pyc",
                 "lib/purchase_common/purchase_common.egg-info/PKG-INFO"):
        assert dockerignored(path, patterns), f".dockerignore should drop {path}"


def test_ci_workflow_tests_builds_and_pushes():
    workflow = yaml.safe_load((h.ROOT / ".github/workflows/ci.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "push" in triggers and "pull_request" in triggers
    steps = workflow["jobs"]["test"]["steps"]
    runs = [s.get("run", "") for s in steps]
    uses = [s.get("uses", "") for s in steps]
    assert any(r.strip() == "make test" for r in runs)
    assert any(u.startswith("actions/setup-java") for u in uses) and any(u.startswith("actions/setup-go") for u in uses)
    assert any("PURCHASE_CRDS_DIR" in r for r in runs), "tests/k8s needs the upstream CRDs in CI"
    images = workflow["jobs"]["images"]
    assert images["needs"] == "test"
    assert images["strategy"]["matrix"]["function"] == list(h.FUNCTIONS)
    assert images["permissions"]["packages"] == "write"
    image_runs = " ".join(s.get("run", "") for s in images["steps"])
    assert "make build-${{ matrix.function }}" in image_runs and "make push-${{ matrix.function }}" in image_runs
    main_only = "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    for step in images["steps"]:
        if "push-" in step.get("run", "") or step.get("uses", "").startswith("docker/login-action"):
            assert step["if"] == main_only, step


# --- each function installs alone and its entry point answers ---------------------------

def build_image_like_venv(function: str, root: Path) -> Path:
    """What the Dockerfile does, in root/: venv + pip install, then the COPY'd sources in app/."""
    folder = FOLDERS[function]
    lib = root / "src/lib/purchase_common"
    shutil.copytree(h.ROOT / "lib/purchase_common", lib,
                    ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    venv = root / "venv"
    steps = [
        [h.python(), "-m", "venv", str(venv)],
        [str(venv / "bin/pip"), "install", "--quiet", "--require-hashes", "--no-deps",
         "-r", str(h.ROOT / folder / "requirements.lock")],
        [str(venv / "bin/pip"), "install", "--quiet", "--no-deps", str(lib)],
        [str(venv / "bin/pip"), "check"],
        [str(venv / "bin/pip"), "uninstall", "--quiet", "--yes", "pip", "setuptools"],
    ]
    for argv in steps:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=root)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")
    app = root / "app"
    app.mkdir()
    for instruction in tagged(function):
        if instruction.op == "COPY" and not instruction.args.startswith("--from"):
            for source in glob.glob(str(h.ROOT / instruction.args.split()[0])):
                shutil.copy(source, app)
    return venv


@pytest.fixture(scope="session")
def image_venvs(tmp_path_factory):
    """One fresh virtualenv per function, built in parallel (pip's cache keeps reruns fast)."""
    roots = {f: tmp_path_factory.mktemp(f"image-{f}") for f in h.FUNCTIONS}
    with ThreadPoolExecutor(max_workers=len(roots)) as pool:
        futures = {f: pool.submit(build_image_like_venv, f, root) for f, root in roots.items()}
        return {f: (future.result(), roots[f] / "app") for f, future in futures.items()}


def container_env(function: str, venv: Path, **overrides) -> dict:
    """The image's ENV, pointed at this venv, with servers that are surely not there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "MONGODB_", "PURCHASES_", "CONSUMER_"))}
    env.update(h.dockerfile_env(tagged(function)))
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"
    env.update(HOST="127.0.0.1", KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
               MONGODB_URI=f"mongodb://127.0.0.1:{free_port()}/", MONGODB_TIMEOUT_MS="500")
    env.update(overrides)
    return env


def start(argv, env, cwd) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_for_answer(proc, url, timeout_s=45.0) -> requests.Response:
    """The first HTTP answer, whatever its status; fails at once if the process exits."""
    def attempt() -> list[requests.Response] | None:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            return [requests.get(url, timeout=2)]  # in a list: a 4xx/5xx Response is falsy
        except requests.ConnectionError:
            return None
    return wait_until(attempt, timeout_s, 0.2, f"an answer from {url}")[0]


def stop(proc, timeout_s=20.0) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            raise AssertionError(f"did not stop within {timeout_s}s of SIGTERM") from None
    return proc.returncode


@pytest.mark.venv_install
@pytest.mark.parametrize("function", list(TARGETS))
def test_http_function_installs_alone_and_answers_on_port(function, image_venvs):
    venv, app = image_venvs[function]
    image = tagged(function)
    port = free_port()
    proc = start(h.dockerfile_exec(image, "ENTRYPOINT") + h.dockerfile_exec(image, "CMD"),
                 container_env(function, venv, PORT=str(port)), app)
    try:
        response = wait_for_answer(proc, f"http://127.0.0.1:{port}/healthz")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ok"
        assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
    finally:
        stop(proc)


@pytest.mark.venv_install
def test_consumer_installs_alone_and_serves_health_while_kafka_is_away(image_venvs):
    venv, app = image_venvs["persist-purchase"]
    port = free_port()
    proc = start(h.dockerfile_exec(tagged("persist-purchase"), "CMD"),
                 container_env("persist-purchase", venv, HEALTH_PORT=str(port)), app)
    try:
        response = wait_for_answer(proc, f"http://127.0.0.1:{port}/healthz")
        assert response.status_code == 200, "alive while it retries the broker"
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 503, \
            "not ready without Kafka and MongoDB"
    finally:
        started = time.monotonic()
        stop(proc)
        assert time.monotonic() - started < 20, "SIGTERM ends the consumer promptly"


@pytest.mark.venv_install
def test_consumer_image_also_serves_the_cloudevent_target(image_venvs):
    venv, app = image_venvs["persist-purchase"]
    port = free_port()
    env = container_env("persist-purchase", venv, PORT=str(port))
    check = subprocess.run([str(venv / "bin/python"), "-c", "import consumer, main; print(main.persist_purchase)"],
                           env=env, cwd=app, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    proc = start(["functions-framework", "--target=persist_purchase", "--source=main.py",
                  "--signature-type=cloudevent"], env, app)
    try:
        wait_for_answer(proc, f"http://127.0.0.1:{port}/")  # up (a GET is refused: 405)
        # Not a CloudEvent: functions-framework itself answers 400 before calling the function.
        response = requests.post(f"http://127.0.0.1:{port}/", json={"not": "an event"}, timeout=5)
        assert response.status_code == 400, response.text
    finally:
        stop(proc)
