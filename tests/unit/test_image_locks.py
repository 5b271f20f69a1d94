"""requirements/runtime.lock and build.lock (what the container image installs) follow pyproject.toml
and run exactly the versions of requirements/test.lock: change one without `scripts/lock` and this fails.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)


def _pins(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / name).read_text(encoding="utf-8")
    return {canonicalize_name(n): v for n, v in PIN.findall(text)}


def _hashed(name: str) -> bool:
    """Every pin carries at least one sha256 (pip --require-hashes in the Dockerfile)."""
    blocks = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / "requirements" / name).read_text(encoding="utf-8"))
    return all("--hash=sha256:" in block for block in blocks if PIN.match(block))


def test_runtime_lock_is_the_runtime_part_of_the_test_lock() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime, tested = _pins("runtime.lock"), _pins("test.lock")
    for line in [*project["dependencies"], *project["optional-dependencies"]["fast"]]:
        req = Requirement(line)
        version = runtime.get(canonicalize_name(req.name))
        assert version is not None and req.specifier.contains(version, prereleases=True), \
            f"{req} (runtime.lock: {version}); run scripts/lock"
    assert {n: v for n, v in runtime.items() if tested.get(n) != v} == {}, "versions differ from test.lock"
    assert not {"pytest", "mypy", "ruff", "playwright", "uv"} & runtime.keys()   # nothing of the tests
    assert _hashed("runtime.lock")


def test_build_lock_builds_the_wheel_with_the_tested_setuptools() -> None:
    build_system = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["build-system"]
    build, tested = _pins("build.lock"), _pins("test.lock")
    for line in build_system["requires"]:
        req = Requirement(line)
        version = build.get(canonicalize_name(req.name))
        assert version is not None and req.specifier.contains(version), f"{req} (build.lock: {version})"
        assert tested.get(canonicalize_name(req.name)) == version
    assert _hashed("build.lock")
