"""functions/*/requirements.lock, what the images install with --require-hashes, is current
with requirements.txt (offline: `make lock` recompiles it, this only checks what it says)."""
from __future__ import annotations

import re
import tomllib

import k8s_helpers as h
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

FOLDERS = {function: folder for function, (folder, _, _) in h.FUNCTIONS.items()}
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def requirement_lines(path) -> list[str]:
    """Logical lines (backslash continuations joined), comments dropped."""
    text = path.read_text().replace("\\\n", " ")
    return [line.split(" #")[0].strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def lock_of(function: str) -> dict[str, tuple[str, list[str]]]:
    """canonical name -> (version, hashes)."""
    entries = {}
    for line in requirement_lines(h.ROOT / FOLDERS[function] / "requirements.lock"):
        match = ENTRY.match(line)
        assert match, f"{function}: not an exact pin in the lock: {line!r}"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        entries[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return entries


def direct_pins(function: str) -> dict[str, str]:
    pins = {}
    for line in requirement_lines(h.ROOT / FOLDERS[function] / "requirements.txt"):
        # The lock names a requirement without its extras (PyJWT[crypto] is pyjwt there).
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{function}: not an exact pin: {line!r}"
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


@pytest.mark.parametrize("function", list(h.FUNCTIONS))
def test_lock_pins_every_requirement_at_its_version_with_hashes(function):
    lock = lock_of(function)
    for name, version in direct_pins(function).items():
        assert name in lock, f"{function}: {name} is in requirements.txt but not in the lock: run `make lock`"
        assert lock[name][0] == version, (f"{function}: requirements.txt pins {name}=={version}, the lock "
                                          f"{lock[name][0]}: run `make lock`")
    for name, (_, hashes) in lock.items():
        assert hashes, f"{function}: {name} has no --hash, so `pip install --require-hashes` would refuse it"


@pytest.mark.parametrize("function", list(h.FUNCTIONS))
def test_lock_has_no_direct_requirement_that_requirements_txt_dropped(function):
    """uv marks what came from requirements.txt with `# via -r ...`: the two sets must agree."""
    text = (h.ROOT / FOLDERS[function] / "requirements.lock").read_text()
    via_requirements = set()
    for block in re.split(r"\n(?=\S)", text):
        match = ENTRY.match(block)
        if match and f"-r {FOLDERS[function]}/requirements.txt" in block:
            via_requirements.add(canonicalize_name(match.group(1)))
    assert via_requirements == set(direct_pins(function)), "run `make lock`"


@pytest.mark.parametrize("function", list(h.FUNCTIONS))
def test_lock_satisfies_the_shared_package(function):
    """The images install lib/purchase_common with --no-deps: the lock must carry its dependencies."""
    project = tomllib.loads((h.ROOT / "lib/purchase_common/pyproject.toml").read_text())["project"]
    lock = lock_of(function)
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{function}: the shared package needs {spec}, which the lock lacks"
        assert requirement.specifier.contains(lock[name][0]), f"{function}: {spec} vs {lock[name][0]}"


def test_dockerfile_installs_the_lock_with_hashes():
    for function, folder in FOLDERS.items():
        build = h.function_image(function).stages["build"]
        copies = [i.args for i in build if i.op == "COPY"]
        assert f"{folder}/requirements.lock requirements.lock" in copies
        runs = " ".join(i.args for i in build if i.op == "RUN")
        assert "pip install --require-hashes --no-deps -r requirements.lock" in runs
        assert "pip install --no-deps ./lib/purchase_common" in runs and "pip check" in runs


def test_make_lock_compiles_for_the_image_python_with_hashes(tmp_path):
    result, _ = h.run_make(tmp_path / "bin", "lock", dry_run=True)
    assert result.returncode == 0, result.stderr
    assert "uv pip compile" in result.stdout and "--generate-hashes" in result.stdout
    assert "--python-version 3.11" in result.stdout
