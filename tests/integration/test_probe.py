"""`authproxy probe URL` as a process, against the real qbittorrent-nox and transmission-daemon (as
tests/support/apps.py starts them) and the faithful fakes of Technitium, Pi-hole and AdGuard Home. The
configuration it prints must pass `authproxy check-config` as it stands, and probing must cost nothing:
no failed sign-in counted anywhere, no session opened."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.adguard import FakeAdGuard
from tests.fakes.pihole import FakePihole
from tests.fakes.technitium import FakeTechnitium
from tests.fakes.truenas import FakeTrueNAS
from tests.integration.test_cli import ROOT, base_env, check_config
from tests.support.apps import QBittorrentApp, TransmissionApp, start_transmission

ARGV = [sys.executable, "-m", "authproxy", "probe"]


def probe(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ARGV, url, "--timeout", "5"], env=base_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)


async def aprobe(url: str) -> subprocess.CompletedProcess[str]:
    """`probe` without blocking the event loop the fakes answer on."""
    proc = await asyncio.create_subprocess_exec(*ARGV, url, "--timeout", "5", env=base_env(), cwd=ROOT,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(ARGV, proc.returncode, out.decode(), err.decode())


def recognised(url: str, kind: str, tmp_path: Path,
               result: subprocess.CompletedProcess[str] | None = None) -> str:
    result = result or probe(url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"UPSTREAM_TYPE={kind}\n" in out and f"UPSTREAM_URL={url}\n" in out, out
    assert f'type = "{kind}"' in out
    env = dict(line.split("=", 1) for line in out.splitlines() if line[:1].isupper() and "=" in line)
    checked = check_config(base_env(**env, AUTHPROXY_DATA_DIR=str(tmp_path / "data"), HTTPS_ENABLED="true"))
    assert checked.returncode == 0, checked.stderr
    return out


def test_real_qbittorrent(qbittorrent: QBittorrentApp, tmp_path: Path) -> None:
    out = recognised(qbittorrent.url, "qbittorrent", tmp_path)
    assert "qBittorrent at" in out


def test_real_transmission_with_a_password_is_asked_once(transmission: TransmissionApp,
                                                         tmp_path: Path) -> None:
    out = recognised(transmission.url, "transmission", tmp_path)
    assert "asks for a password" in out


def test_real_transmission_without_a_password_is_named_and_the_risk_said(tmp_path: Path) -> None:
    app = start_transmission(tmp_path, settings={"rpc-authentication-required": False})
    try:
        out = recognised(app.url, "transmission", tmp_path)
        assert "rpc-authentication-required is off" in out
    finally:
        app.stop()


async def test_technitium_fake(technitium: FakeTechnitium, tmp_path: Path) -> None:
    sessions = dict(technitium.sessions)
    out = recognised(technitium.url, "technitium", tmp_path, await aprobe(technitium.url))
    assert "Technitium DNS Server" in out and "api_version" in out
    assert technitium.sessions == sessions   # nothing signed in


async def test_pihole_fake(pihole: FakePihole, tmp_path: Path) -> None:
    recognised(pihole.url, "pihole", tmp_path, await aprobe(pihole.url))


async def test_adguard_fake(adguard: FakeAdGuard, tmp_path: Path) -> None:
    recognised(adguard.url, "adguard", tmp_path, await aprobe(adguard.url))
    assert adguard.blocked_for() == 0 and not adguard.requests_to("/control/login")


async def test_truenas_fake(tmp_path: Path) -> None:
    async with FakeTrueNAS() as nas:
        nas.add_user("alice", "alice-pw")
        out = recognised(nas.url, "truenas", tmp_path, await aprobe(nas.url))
        assert "ENOTAUTHENTICATED" in out
        # One call, not a login, and not one the rate limit for unauthenticated calls counts.
        assert [(c.user, c.method) for c in nas.calls] == [(None, "system.info")]


@pytest.mark.parametrize("url", ["ftp://x", "not a url"])
def test_a_bad_url_is_said_plainly(url: str) -> None:
    result = probe(url)
    assert result.returncode == 2 and "give the upstream's own URL" in result.stderr


def test_nothing_known_there(tmp_path: Path) -> None:
    from tests.support.procs import free_port

    result = probe(f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "nothing authproxy knows answered" in result.stderr
    assert "ClientConnectorError" in result.stderr and "Traceback" not in result.stderr
