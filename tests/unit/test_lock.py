"""requirements/test.lock still answers pyproject.toml: edit one without `scripts/lock` and this fails.

Why: scripts/test installs from the lock alone (with hashes) and then authproxy with --no-deps, so a
dependency added to pyproject.toml but not locked would be missing from every test run and CI, and a
changed bound would go unnoticed.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)


def _locked() -> dict[str, str]:
    text = (ROOT / "requirements/test.lock").read_text(encoding="utf-8")
    return {canonicalize_name(name): version for name, version in PIN.findall(text)}


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    extra = (ROOT / "requirements/test.in").read_text(encoding="utf-8").splitlines()
    lines += [line.split("#", 1)[0].strip() for line in extra if line.split("#", 1)[0].strip()]
    return [Requirement(line) for line in lines]


def test_every_declared_requirement_is_locked_within_its_bounds() -> None:
    locked = _locked()
    wrong = []
    for req in _declared():
        version = locked.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            wrong.append(f"{req} (locked: {version})")
    assert not wrong, f"requirements/test.lock is stale, run scripts/lock: {wrong}"

