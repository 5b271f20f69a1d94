"""`authproxy check-config` explains how /verify* is protected; `authproxy run` serves the forward-auth
listener in every worker (ISSUE V1)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.fakes.technitium import FakeTechnitium
from tests.integration.test_cli import ROOT, _children, _wait_healthy, base_env, check_config
from tests.integration.test_forward_auth import proxy_headers
from tests.support.procs import ManagedProcess, free_port

SECRET = "check-config-secret-" + "z" * 40


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env(UPSTREAM_URL="http://127.0.0.1:5380", UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                    AUTHPROXY_DATA_DIR=str(tmp_path / "data"), **extra)


def _forward_auth_lines(out: str) -> str:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("forward auth:"))
    return "\n".join(lines[start:])


def test_check_config_says_forward_auth_is_off_and_what_to_set(tmp_path: Path) -> None:
    result = check_config(_env(tmp_path))
    assert result.returncode == 0, result.stderr
    text = _forward_auth_lines(result.stdout)
    assert text.startswith("forward auth: off. /_authproxy/verify* answers 404")
    assert "can get an upstream credential" in text
    for hint in (
        "FORWARD_AUTH_PORT",
        "FORWARD_AUTH_HOST",
        "127.0.0.1",
        "FORWARD_AUTH_SECRET",
        "X-Authproxy-Secret",
        "Caddy forward_auth",
        "nginx auth_request",
        "Traefik ForwardAuth",
    ):
        assert hint in text, hint


def test_check_config_describes_the_listener(tmp_path: Path) -> None:
    result = check_config(_env(tmp_path, FORWARD_AUTH_PORT="9001", PORT="9000"))
    assert result.returncode == 0, result.stderr
    text = _forward_auth_lines(result.stdout)
    assert "served only on its own listener http://127.0.0.1:9001" in text
    assert "the public listener 127.0.0.1:9000 answers it 404" in text
    assert "TRUSTED_PROXIES (127.0.0.0/8, ::1/128)" in text and "note:" not in text

    six = check_config(_env(tmp_path, FORWARD_AUTH_PORT="9001", FORWARD_AUTH_HOST="::1"))
    assert "its own listener http://[::1]:9001 " in six.stdout and "note:" not in six.stdout

    wide = check_config(_env(tmp_path, FORWARD_AUTH_PORT="9001", FORWARD_AUTH_HOST="0.0.0.0"))
    assert "note: FORWARD_AUTH_HOST=0.0.0.0 is not a loopback address" in wide.stdout
    assert "never published, or add FORWARD_AUTH_SECRET" in wide.stdout

    both = check_config(_env(tmp_path, FORWARD_AUTH_PORT="9001", FORWARD_AUTH_SECRET=SECRET))
    assert "sending the X-Authproxy-Secret header carrying FORWARD_AUTH_SECRET" in both.stdout
    assert SECRET not in both.stdout + both.stderr


def test_check_config_describes_the_shared_secret(tmp_path: Path) -> None:
    (tmp_path / "fa").write_text(SECRET + "\n")
    result = check_config(_env(tmp_path, FORWARD_AUTH_SECRET_FILE=str(tmp_path / "fa")))
    assert result.returncode == 0, result.stderr
    text = _forward_auth_lines(result.stdout)
    assert "served on the public listener 127.0.0.1:8443 only to TRUSTED_PROXIES" in text
    assert "X-Authproxy-Secret" in text and "403" in text
    assert "Traefik's ForwardAuth cannot add a header: use FORWARD_AUTH_PORT" in text
    assert SECRET not in result.stdout + result.stderr


def test_check_config_refuses_a_forward_auth_that_cannot_work(tmp_path: Path) -> None:
    result = check_config(_env(tmp_path, FORWARD_AUTH_HOST="127.0.0.1", FORWARD_AUTH_SECRET="tiny"))
    assert result.returncode == 2
    assert "FORWARD_AUTH_HOST: set without FORWARD_AUTH_PORT; set FORWARD_AUTH_PORT" in result.stderr
    assert "FORWARD_AUTH_SECRET: shorter than 32 characters" in result.stderr
    assert "tiny" not in result.stderr and "Traceback" not in result.stderr


def _listening(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its socket inodes, matched in /proc/net/tcp and tcp6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_every_worker_serves_both_listeners(
        tmp_path: Path, technitium: FakeTechnitium, process_factory: Callable[..., ManagedProcess]) -> None:
    port, fa_port = free_port(), free_port()
    env = base_env(UPSTREAM_URL=technitium.url, UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                   AUTHPROXY_DATA_DIR=str(tmp_path / "data"), PORT=str(port), HOST="127.0.0.1",
                   FORWARD_AUTH_PORT=str(fa_port), SESSION_SECRET="s" * 40)
    public, listener = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{fa_port}"
    check = proxy_headers("caddy", "https://dns.example.com/api/zones/list")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        proc = process_factory([sys.executable, "-m", "authproxy", "run", "--workers", "2"], env=env,
                               inherit_env=False, cwd=ROOT, name="authproxy-workers")
        await _wait_healthy(http, f"{public}/_authproxy/healthz", proc)
        deadline = time.monotonic() + 15
        while proc.log_tail(100_000).count("forward-auth listener ready") < 2:
            assert time.monotonic() < deadline, proc.log_tail()
            await asyncio.sleep(0.05)
        workers = _children(proc.pid)
        assert len(workers) == 2, proc.log_tail()
        for worker in workers:
            assert {port, fa_port} <= _listening(worker), (worker, _listening(worker))
        for _ in range(8):  # whichever worker the kernel picks
            async with http.get(f"{public}/_authproxy/verify/caddy", headers=check) as resp:
                assert resp.status == 404
            async with http.get(f"{listener}/_authproxy/verify/caddy", headers=check) as resp:
                assert resp.status == 401 and (await resp.json())["error"] == "unauthenticated"
            async with http.get(f"{listener}/_authproxy/healthz") as resp:
                assert resp.status == 404
        assert "forward auth: /_authproxy/verify* is served only on its own listener" in proc.log_tail(
            100_000
        )
