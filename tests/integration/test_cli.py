"""The command line for real: `python -m authproxy check-config` and `python -m authproxy run` over HTTPS."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.technitium import FakeTechnitium
from tests.integration.conftest import LOGIN, LOGOUT, SESSION
from tests.support.procs import ManagedProcess, free_port

ROOT = Path(__file__).resolve().parents[2]


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment: nothing from the developer's shell leaks into the configuration."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authproxy", "check-config"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False)


def test_check_config_prints_every_problem_at_once(tmp_path: Path) -> None:
    result = check_config(base_env(
        AUTH_MODE="session", UPSTREAM_URL="ftp://dns.example", UPSTREAM_TYPE="nope", PORT="99999",
        SESSION_IDLE_TIMEOUT="soon", SESSION_SECRET="short", TRUSTED_PROXIES="10.0.0.0/8,bogus",
        LOG_LEVEL="LOUD", HTTPS_ENABLED="maybe", COOKIE_DOMAIN="not a domain",
        AUTHPROXY_DATA_DIR=str(tmp_path / "data")))
    assert result.returncode != 0
    err = result.stderr
    assert "configuration problem" in err
    for variable in ("PORT", "SESSION_IDLE_TIMEOUT", "SESSION_SECRET", "TRUSTED_PROXIES", "LOG_LEVEL",
                     "HTTPS_ENABLED", "COOKIE_DOMAIN", "UPSTREAM_URL", "UPSTREAM_TYPE", "TRUST_PROXY"):
        assert variable in err, variable
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(problems) >= 10, err
    assert "Traceback" not in err and "short" not in err.replace("shorter", "")  # a secret is not echoed
    assert not (tmp_path / "data").exists()  # checking writes nothing


def test_check_config_names_both_https_options_in_session_mode(tmp_path: Path) -> None:
    result = check_config(base_env(UPSTREAM_URL="http://127.0.0.1:5380", UPSTREAM_TYPE="technitium",
                                   AUTHPROXY_DATA_DIR=str(tmp_path)))
    assert result.returncode != 0
    assert "HTTPS_ENABLED=true" in result.stderr and "TRUST_PROXY=true" in result.stderr


def test_check_config_ok(tmp_path: Path) -> None:
    result = check_config(base_env(UPSTREAM_URL="http://127.0.0.1:5380", UPSTREAM_TYPE="technitium",
                                   TRUST_PROXY="true", AUTHPROXY_DATA_DIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout and "technitium" in result.stdout


async def _wait_healthy(
    http: aiohttp.ClientSession, url: str, proc: ManagedProcess, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.running, proc.log_tail()
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, f"authproxy did not answer {url}\n{proc.log_tail()}"
        await asyncio.sleep(0.05)


async def test_run_serves_https_with_generated_certificate_and_secret(
        tmp_path: Path, technitium: FakeTechnitium,
        process_factory: Callable[..., ManagedProcess]) -> None:
    data = tmp_path / "data"
    port = free_port()
    audit_file = tmp_path / "audit.jsonl"
    env = base_env(UPSTREAM_URL=technitium.url, UPSTREAM_TYPE="technitium", HTTPS_ENABLED="true",
                   AUTHPROXY_DATA_DIR=str(data), PORT=str(port), HOST="127.0.0.1",
                   AUDIT_LOG_FILE=str(audit_file), LOG_FORMAT="json")
    base = f"https://127.0.0.1:{port}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False),
                                     cookie_jar=aiohttp.DummyCookieJar()) as http:
        proc = process_factory([sys.executable, "-m", "authproxy", "run"], env=env, inherit_env=False,
                               cwd=ROOT, name="authproxy")
        await _wait_healthy(http, f"{base}/_authproxy/healthz", proc)
        for name, mode in (("session_secret", 0o600), ("selfsigned.key", 0o600)):
            assert stat.S_IMODE(os.stat(data / name).st_mode) == mode, name
        assert (data / "selfsigned.crt").is_file()
        secret = (data / "session_secret").read_text().strip()
        assert len(secret) >= 32
        first_log = proc.log_tail(100_000)
        assert first_log.count("generated a session signing secret") == 1
        assert secret not in first_log

        # Plain http to the TLS port is not served; https answers readiness and a real sign-in.
        async with http.get(f"{base}/_authproxy/readyz") as resp:
            assert resp.status == 200
        async with http.post(base + LOGIN, json={"username": "alice", "password": "alice-pass"}) as resp:
            assert resp.status == 200, await resp.text()
            cookie = resp.cookies["__Host-authproxy"].value
        headers = {"Cookie": f"__Host-authproxy={cookie}"}
        async with http.get(base + "/api/zones/list", headers=headers) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        # MAX_HEADER_SIZE (default 8190) is what the served parser enforces.
        async with http.get(base + SESSION, headers={**headers, "X-Big": "a" * 9000}) as resp:
            assert 400 <= resp.status < 500
        proc.stop()
        assert proc.returncode == 0 or proc.returncode == -15, proc.log_tail()

        lines = [json.loads(line) for line in audit_file.read_text().splitlines()]
        assert [(x["event"], x["outcome"], x["user"]) for x in lines] == [("login", "success", "alice")]
        assert "alice-pass" not in audit_file.read_text() and cookie not in proc.log_tail(100_000)

        # Restarted: same secret, same certificate, same SQLite file -> the same cookie still works.
        proc2 = process_factory([sys.executable, "-m", "authproxy", "run"], env=env, inherit_env=False,
                                cwd=ROOT, name="authproxy")
        await _wait_healthy(http, f"{base}/_authproxy/healthz", proc2)
        async with http.get(base + SESSION, headers=headers) as resp:
            assert (await resp.json())["authenticated"] is True
        assert (data / "session_secret").read_text().strip() == secret
        assert "generated a session signing secret" not in proc2.log_tail(100_000)  # said once, on creation


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(x) for x in out.split()]


async def test_workers_share_the_port_and_stop_with_the_master(
        tmp_path: Path, technitium: FakeTechnitium,
        process_factory: Callable[..., ManagedProcess]) -> None:
    """`run --workers 2`: two processes serve one port; SIGTERM to the master alone (systemd, docker
    stop) stops both, so no worker is left holding the port."""
    port = free_port()
    env = base_env(UPSTREAM_URL=technitium.url, UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                   AUTHPROXY_DATA_DIR=str(tmp_path / "data"), PORT=str(port), HOST="127.0.0.1",
                   SESSION_SECRET="s" * 40)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        proc = process_factory([sys.executable, "-m", "authproxy", "run", "--workers", "2"], env=env,
                               inherit_env=False, cwd=ROOT, name="authproxy-workers")
        await _wait_healthy(http, f"http://127.0.0.1:{port}/_authproxy/healthz", proc)
        workers = _children(proc.pid)
        assert len(workers) == 2, proc.log_tail()
        os.kill(proc.pid, signal.SIGTERM)                 # the master only, not its process group
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{w}").exists() and "zombie" not in _state(w) for w in workers) or proc.running:
            assert time.monotonic() < deadline, proc.log_tail()
            await asyncio.sleep(0.1)
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://127.0.0.1:{port}/_authproxy/healthz")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "zombie"


def _pids_on(port: int, state: str) -> set[int]:
    """The processes holding `port`'s sockets in `state`: `listening`, or `established` (which worker
    took each client connection)."""
    out = subprocess.run(["ss", "-Htnp", "state", state, f"( sport = :{port} )"], capture_output=True,
                         text=True, check=False).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_logout_on_one_worker_is_effective_on_every_worker_before_its_answer(
        store: str, tmp_path: Path, technitium: FakeTechnitium, request: pytest.FixtureRequest,
        process_factory: Callable[..., ManagedProcess]) -> None:
    """Issue 8 W4: `run --workers 2`, an upstream whose logout fails (its token stays valid), and 16
    clients hammering the API over connections spread across both workers while one signs out. Not one
    request that started after the logout's answer arrived may succeed, on either worker."""
    technitium.logout_fails = True
    port = free_port()
    env = base_env(UPSTREAM_URL=technitium.url, UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                   AUTHPROXY_DATA_DIR=str(tmp_path / "data"), PORT=str(port), HOST="127.0.0.1",
                   SESSION_SECRET="s" * 40, ACCESS_LOG="false")
    if store == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    base = f"http://127.0.0.1:{port}"
    https = {"X-Forwarded-Proto": "https"}

    async def hammer(headers: dict[str, str], stop: asyncio.Event, results: list[tuple[float, int]]) -> None:
        """One client on its own keep-alive connection (SO_REUSEPORT gives it to one of the workers):
        (when each request started, 200 for a served API call or the status it got)."""
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                         cookie_jar=aiohttp.DummyCookieJar()) as own:
            while not stop.is_set():
                started = time.monotonic()
                async with own.get(base + "/api/zones/list", headers=headers) as r:
                    served = r.status == 200 and (await r.json())["status"] == "ok"
                    results.append((started, 200 if served else r.status))

    proc = process_factory([sys.executable, "-m", "authproxy", "run", "--workers", "2"], env=env,
                           inherit_env=False, cwd=ROOT, name="authproxy-workers")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        await _wait_healthy(http, f"{base}/_authproxy/healthz", proc)
        workers = set(_children(proc.pid))
        assert len(workers) == 2, proc.log_tail()
        deadline = time.monotonic() + 15
        while not workers <= _pids_on(
            port, "listening"
        ):  # the kernel spreads connections over listeners only
            assert time.monotonic() < deadline, proc.log_tail()
            await asyncio.sleep(0.05)
        for cycle in range(3):
            async with http.post(base + LOGIN, json={"username": "alice", "password": "alice-pass"},
                                 headers=https) as resp:
                assert resp.status == 200, await resp.text()
                headers = {**https, "Cookie": f"__Host-authproxy={resp.cookies['__Host-authproxy'].value}"}
            results: list[tuple[float, int]] = []
            stop = asyncio.Event()
            clients = [asyncio.create_task(hammer(headers, stop, results)) for _ in range(16)]
            await asyncio.sleep(0.5)  # every client has been served: both workers have the session cached
            assert _pids_on(port, "established") == workers, "the clients did not reach both workers"
            async with http.post(base + LOGOUT, headers=headers) as resp:
                assert resp.status == 200 and (await resp.json())["loggedOut"] is True
            answered = time.monotonic()
            await asyncio.sleep(1.0)  # twice the SQLite store's invalidation poll interval
            stop.set()
            await asyncio.gather(*clients)
            assert len(technitium.sessions) == cycle + 1  # the upstream's logout failed: its token lives on
            before = [status for started, status in results if started < answered]
            after = [status for started, status in results if started >= answered]
            assert before.count(200) > 20 and len(after) > 50, (len(before), len(after))
            assert after.count(200) == 0, f"{after.count(200)} of {len(after)} requests that started after " \
                                          f"the logout's answer were served (cycle {cycle})"
            assert set(after) == {401}
    assert "upstream logout failed" in proc.log_tail(200_000)
