"""The lock files and pyproject.toml agree: every declared dependency is pinned, in range.

A fresh clone installs from ``requirements.txt`` / ``requirements-test.txt`` (see
``scripts/install.sh``); a range widened or narrowed in ``pyproject.toml`` without re-running
``scripts/lock.sh`` fails here instead of silently installing something untested.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)


def locked(path: Path) -> dict[str, str]:
    """Package name → pinned version, as written in a lock file."""
    text = path.read_text()
    assert "--hash=sha256:" in text, f"{path.name} has no hashes"
    return {canonicalize_name(name): version for name, version in PIN.findall(text)}


def declared(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    if extra:
        specs += project["optional-dependencies"][extra]
    return [Requirement(spec) for spec in specs]


@pytest.mark.parametrize(
    ("lock", "extra"), [("requirements.txt", None), ("requirements-test.txt", "test")]
)
def test_every_declared_dependency_is_locked_within_its_range(lock: str, extra: str | None) -> None:
    pins = locked(ROOT / lock)
    environment = default_environment()
    problems = []
    for requirement in declared(extra):
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name} is not in {lock}")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}=={version} in {lock} is outside {requirement}")
    assert not problems, "run `bash scripts/lock.sh`:\n" + "\n".join(problems)


def test_the_runtime_lock_is_the_test_lock_without_the_test_tools() -> None:
    runtime, test = locked(ROOT / "requirements.txt"), locked(ROOT / "requirements-test.txt")
    differing = {name for name in runtime if test.get(name) != runtime[name]}
    assert not differing, f"runtime and test locks pin different versions of {sorted(differing)}"


def test_the_build_backends_are_locked() -> None:
    pins = locked(ROOT / "requirements-test.txt")
    assert {"setuptools", "flit-core"} <= pins.keys()
