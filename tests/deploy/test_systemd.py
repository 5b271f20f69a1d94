"""deploy/systemd: the unit passes `systemd-analyze verify` without a word (it exits 0 on typos, so any
output fails), `systemd-analyze security` rates it at most 2.5, and its example environment plus the
credentials it loads make a configuration `authproxy check-config` accepts.

verify runs against a scratch root holding the unit, systemd's own units and a stub for ExecStart's
binary (verify fails when that is missing, and nothing is installed on this machine for it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from authproxy.config.schema import ServerConfig
from tests.integration.test_cli import base_env

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "authproxy.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "authproxy.env"
MAX_EXPOSURE = 2.5


def _directives(text: str) -> list[tuple[str, str]]:
    return [(k.strip(), v.strip()) for k, _, v in (line.partition("=") for line in text.splitlines())
            if k.strip() and not k.startswith(("#", ";", "["))]


def _scratch_root(tmp_path: Path, unit_text: str, name: str = "authproxy.service") -> Path:
    root = tmp_path / "root"
    units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / name).write_text(unit_text)
    exec_start = dict(_directives(unit_text))["ExecStart"].split()[0]
    stub = root / exec_start.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    return root


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail(
            "systemd-analyze missing: apt-get install -y systemd (scripts/test installs it)", pytrace=False
        )
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False)


def test_verify_prints_nothing(tmp_path: Path) -> None:
    root = _scratch_root(tmp_path, UNIT.read_text())
    result = _analyze("verify", f"--root={root}", "authproxy.service")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check above can fail: one misspelt key is only a message, with exit code 0."""
    root = _scratch_root(tmp_path, UNIT.read_text().replace("ProtectSystem=", "ProtectSytem="))
    result = _analyze("verify", f"--root={root}", "authproxy.service")
    assert result.returncode == 0 and "Unknown key 'ProtectSytem'" in result.stdout + result.stderr


def test_security_exposure_is_low(tmp_path: Path) -> None:
    root = _scratch_root(tmp_path, UNIT.read_text())
    result = _analyze("security", "--offline=true", f"--root={root}", "authproxy.service")
    match = re.search(r"Overall exposure level for authproxy\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    print(f"\nsystemd-analyze security: exposure {match.group(1)}")
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_unit_fits_authproxy() -> None:
    """What the unit promises authproxy does: readiness by sd_notify, a drain shorter than the stop
    timeout, a *_FILE variable for every credential."""
    settings = _directives(UNIT.read_text())
    one = dict(settings)
    assert one["Type"] == "notify" and one["KillMode"] == "mixed"
    assert one["EnvironmentFile"] == "/etc/authproxy/authproxy.env"
    for key in ("DynamicUser", "NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict" and one["CapabilityBoundingSet"] == ""
    assert ("SystemCallFilter", "@system-service") in settings
    timeout_stop = float(one["TimeoutStopSec"].removesuffix("s"))
    assert timeout_stop >= ServerConfig().shutdown_timeout + 5
    credentials = {v.split(":", 1)[0] for k, v in settings if k == "LoadCredential"}
    environment = [v for k, v in settings if k == "Environment"]
    for name in credentials:
        assert f"{name.upper()}_FILE=%d/{name}" in environment, name


def test_example_environment_and_credentials_make_a_valid_configuration(tmp_path: Path) -> None:
    """authproxy.env as EnvironmentFile= reads it, the unit's Environment= lines with %d (the credentials
    directory) and %S (the state directory) filled in, the session secret as a loaded credential."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "session_secret").write_text("c" * 48 + "\n")
    env = base_env(CREDENTIALS_DIRECTORY=str(credentials))
    env.update(dict(_directives(ENV_EXAMPLE.read_text())))
    for key, value in _directives(UNIT.read_text()):
        if key == "Environment":
            name, _, val = value.partition("=")
            env[name] = val.replace("%d", str(credentials)).replace("%S", str(tmp_path / "state"))
    result = subprocess.run([sys.executable, "-m", "authproxy", "check-config"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout and "store=sqlite" in result.stdout
    assert str(tmp_path / "state" / "authproxy") in result.stdout
