"""The image installs from deploy/requirements.lock (and builds with deploy/build-requirements.lock),
pinned with hashes: these tests fail when pyproject.toml changes without `make lock`. No network: the
lock is read and compared with pyproject.toml, under the image's Python and platform."""

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The image's interpreter (deploy/Dockerfile's base, and LOCK_FLAGS in the Makefile).
IMAGE_PYTHON = "3.11.13"
IMAGE_ENVIRONMENT = {**default_environment(), "python_version": "3.11", "python_full_version": IMAGE_PYTHON,
                     "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                     "implementation_name": "cpython", "platform_python_implementation": "CPython"}
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+) \\$")
HASH = re.compile(r"^    --hash=sha256:[0-9a-f]{64}(?: \\)?$")


class Locked:
    """One lock file: each pin's version, hashes, and the `# via` lines uv wrote under it."""

    def __init__(self, path: Path) -> None:
        self.text = path.read_text()
        self.versions: dict[str, Version] = {}
        self.hashes: dict[str, int] = {}
        self.via: dict[str, set[str]] = {}
        current = ""
        for line in self.text.splitlines():
            if match := PIN.match(line):
                current = canonicalize_name(match["name"])
                assert current not in self.versions, f"{current} pinned twice"
                self.versions[current], self.hashes[current], self.via[current] = Version(match["version"]), 0, set()
            elif HASH.match(line):
                assert current, line
                self.hashes[current] += 1
            elif line.strip().startswith("#"):
                via = line.strip().lstrip("#").strip().removeprefix("via").strip()
                if current and via:
                    self.via[current].add(via)
            else:
                assert not line.strip(), f"{path.name}: unexpected line {line!r} (only pins with hashes)"


def _requirements(texts: list[str]) -> list[Requirement]:
    """Those of `texts` that apply in the image."""
    requirements = [Requirement(text) for text in texts]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(IMAGE_ENVIRONMENT)]


@pytest.mark.parametrize(("lock", "requirements"), [
    ("requirements.lock", PYPROJECT["project"]["dependencies"]),
    ("build-requirements.lock", PYPROJECT["build-system"]["requires"]),
])
def test_every_requirement_of_pyproject_is_pinned_with_hashes_at_a_version_it_accepts(
        lock: str, requirements: list[str]) -> None:
    locked = Locked(DEPLOY / lock)
    for requirement in _requirements(requirements):
        name = canonicalize_name(requirement.name)
        assert name in locked.versions, f"{name} is not in deploy/{lock}: run `make lock`"
        assert requirement.specifier.contains(locked.versions[name], prereleases=True), (
            f"deploy/{lock} pins {name}=={locked.versions[name]}, outside {requirement.specifier}: run `make lock`")
    for name, count in locked.hashes.items():
        assert count >= 1, f"{name} has no hash in deploy/{lock}"
    assert "#    make lock" in locked.text  # says how it was made


def test_nothing_in_the_lock_claims_to_come_from_pyproject_unless_pyproject_asks_for_it() -> None:
    """A dependency removed from pyproject.toml but left in the lock would still be installed."""
    locked = Locked(DEPLOY / "requirements.lock")
    direct = {canonicalize_name(r.name) for r in _requirements(PYPROJECT["project"]["dependencies"])}
    claimed = {name for name, via in locked.via.items() if any(v.startswith("call-ledger") for v in via)}
    assert claimed == direct, claimed ^ direct
    # Everything else is there because something locked needs it.
    for name, via in locked.via.items():
        assert via, f"{name}: no `# via` line (was the lock generated without annotations?)"
        assert all(v.startswith("call-ledger") or canonicalize_name(v) in locked.versions for v in via), (name, via)


def test_an_extra_of_a_dependency_is_locked_too() -> None:
    """fakeredis[lua] needs lupa: the lock must have resolved the extra, not just the name."""
    locked = Locked(DEPLOY / "requirements.lock")
    for requirement in _requirements(PYPROJECT["project"]["dependencies"]):
        if requirement.extras:
            dependents = {name for name, via in locked.via.items() if canonicalize_name(requirement.name) in
                          {canonicalize_name(v) for v in via}}
            assert dependents, f"nothing locked for {requirement}"
    assert "lupa" in locked.versions


def test_the_dockerfile_installs_only_from_the_locks_with_hashes_then_the_project_without_deps() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    runs = [line for line in re.findall(r"^RUN (.*)$", dockerfile, re.M) if "pip " in line]
    assert runs == [
        "pip install --no-cache-dir --require-hashes -r /tmp/build-requirements.lock",
        "pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .",
        "pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock && rm /tmp/requirements.lock",
        "pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels && pip check",
    ]
    assert "COPY deploy/requirements.lock /tmp/requirements.lock" in dockerfile
    assert "COPY deploy/build-requirements.lock /tmp/build-requirements.lock" in dockerfile
    # The lock is made for the image's Python: the base image and the Makefile's flags agree.
    assert re.search(rf"^FROM python:{re.escape(IMAGE_PYTHON)}-slim", dockerfile, re.M)
    assert f"--python-version {IMAGE_PYTHON}" in (ROOT / "Makefile").read_text()
