"""WORKERS=2 for real (`authproxy run`, two processes sharing both ports): whichever worker answers a
scrape, it reports the totals of both (prometheus-client multiprocess mode in a per-run directory,
removed when the run ends), open WebSockets included."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

from tests.fakes.technitium import FakeTechnitium
from tests.fakes.ws_upstream import running_socket_upstream
from tests.integration.test_cli import ROOT, _wait_healthy, base_env
from tests.integration.test_faults_workers import _children
from tests.integration.test_forward_auth import proxy_headers
from tests.integration.test_metrics import Samples, parse, total, value
from tests.support.procs import ManagedProcess, free_port
from tests.support.technitium import ALICE

ROUNDS = 12


async def _fresh(method: str, url: str, **kw: object) -> tuple[int, str, str]:
    """One request on a connection of its own (SO_REUSEPORT spreads connections over the workers)."""
    async with (aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
                http.request(method, url, allow_redirects=False, **kw) as resp):  # type: ignore[arg-type]
        cookie = resp.cookies["__Host-authproxy"].value if "__Host-authproxy" in resp.cookies else ""
        return resp.status, await resp.text(), cookie


async def _websockets_add_up(base: str, fa: str, cookies: list[str]) -> None:
    """Bridges opened on connections of their own (so on both workers) are one sum; closed, none."""
    sessions = [aiohttp.ClientSession() for _ in cookies]
    try:
        sockets = [await http.ws_connect(base + "/ws", headers={"X-Forwarded-Proto": "https",
                                                                 "Cookie": f"__Host-authproxy={cookie}"})
                   for http, cookie in zip(sessions, cookies, strict=True)]
        for ws in sockets:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "hello"
        await _until_every_scrape_says(fa, len(sockets))
        for ws in sockets:
            await ws.close()
        await _until_every_scrape_says(fa, 0)
    finally:
        for http in sessions:
            await http.close()


async def _until_every_scrape_says(fa: str, open_: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        seen = [value(await _scrape(fa), "authproxy_websockets_open") for _ in range(6)]
        if seen == [open_] * 6:
            return
        assert time.monotonic() < deadline, (seen, open_)
        await asyncio.sleep(0.3)


async def _scrape(url: str) -> Samples:
    status, text, _ = await _fresh("GET", url + "/_authproxy/metrics")
    assert status == 200, text
    return parse(text)


async def test_two_workers_report_the_totals_of_both(
        tmp_path: Path, process_factory: Callable[..., ManagedProcess]) -> None:
    async with running_socket_upstream(ALICE) as upstream:
        await _two_workers(tmp_path, upstream.fake, process_factory)


async def _two_workers(tmp_path: Path, technitium: FakeTechnitium,
                       process_factory: Callable[..., ManagedProcess]) -> None:
    port, fa_port = free_port(), free_port()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = base_env(UPSTREAM_URL=technitium.url, UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                   AUTHPROXY_DATA_DIR=str(tmp_path / "data"), PORT=str(port), HOST="127.0.0.1",
                   FORWARD_AUTH_PORT=str(fa_port), SESSION_SECRET="s" * 40, WORKERS="2",
                   LOGIN_MAX_FAILURES="1000", ACCESS_LOG="false", TMPDIR=str(tmp))
    proc = process_factory([sys.executable, "-m", "authproxy", "run"], env=env, inherit_env=False, cwd=ROOT,
                           name="authproxy")
    base, fa = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{fa_port}"
    async with aiohttp.ClientSession() as http:
        await _wait_healthy(http, base + "/_authproxy/healthz", proc)
    [run_dir] = list(tmp.glob("authproxy-metrics-*"))
    login = base + "/_authproxy/api/auth/login"
    https = {"X-Forwarded-Proto": "https"}
    cookies = []
    for _ in range(ROUNDS):
        status, _, _ = await _fresh("POST", login, json={"username": ALICE[0], "password": "no"},
                                    headers=https)
        assert status == 401
        status, text, cookie = await _fresh("POST", login, json=dict(zip(("username", "password"), ALICE,
                                                                         strict=True)), headers=https)
        assert status == 200 and cookie, text
        cookies.append(cookie)
    for cookie in cookies:
        headers = CIMultiDict([*proxy_headers("caddy", "https://dns.example.com/api/zones/list"),
                               ("Cookie", f"__Host-authproxy={cookie}")])
        assert (await _fresh("GET", fa + "/_authproxy/verify/caddy", headers=headers))[0] == 200
        status, _, _ = await _fresh("GET", base + "/api/zones/list",
                                    headers={**https, "Cookie": f"__Host-authproxy={cookie}"})
        assert status == 200
    # Every scrape (each on its own connection, so both workers answer some) gives the same totals.
    deadline = time.monotonic() + 10
    while True:
        seen = [await _scrape(fa) for _ in range(8)]
        checks = [(value(s, "authproxy_sign_ins_total", site="technitium", outcome="success"),
                   value(s, "authproxy_sign_ins_total", site="technitium", outcome="failure"),
                   value(s, "authproxy_verify_decisions_total", proxy="caddy", outcome="allow"),
                   value(s, "authproxy_proxied_requests_total", site="technitium", code="2xx"),
                   value(s, "authproxy_upstream_latency_seconds_count", site="technitium"),
                   # flushed once a second: every cookie was checked twice (verify, then the proxy)
                   total(s, "authproxy_session_cache_hits_total")
                   + total(s, "authproxy_session_cache_misses_total"),
                   value(s, "authproxy_sessions_live"))
                  for s in seen]
        if all(c == (ROUNDS, ROUNDS, ROUNDS, ROUNDS, ROUNDS, 2 * ROUNDS, ROUNDS) for c in checks):
            break
        assert time.monotonic() < deadline, checks
        await asyncio.sleep(0.3)
    await _websockets_add_up(base, fa, cookies[:4])
    # Both workers wrote their own files (one per process and kind), and build info is said once.
    files = list(run_dir.glob("counter_*.db"))
    assert len({p.name.rsplit("_", 1)[-1] for p in files}) == 2, list(run_dir.iterdir())
    assert sum(1 for k in seen[0] if k[0] == "authproxy_build_info") == 1
    os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while proc.running:
        assert time.monotonic() < deadline, proc.log_tail()
        await asyncio.sleep(0.05)
    assert proc.returncode == 0
    assert not run_dir.exists()   # the run's directory leaves with it


async def test_a_worker_that_dies_leaves_the_gauges_but_not_the_totals(
        tmp_path: Path, process_factory: Callable[..., ManagedProcess]) -> None:
    """SIGKILL one of two workers while WebSockets are open on both: once the supervisor restarted it,
    the open-WebSockets sum is what is really still open (the dead one's gauge is forgotten), and the
    counters keep what the dead worker counted."""
    async with running_socket_upstream(ALICE) as upstream:
        port, fa_port = free_port(), free_port()
        env = base_env(UPSTREAM_URL=upstream.url, UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                       AUTHPROXY_DATA_DIR=str(tmp_path / "data"), PORT=str(port), HOST="127.0.0.1",
                       FORWARD_AUTH_PORT=str(fa_port), SESSION_SECRET="s" * 40, WORKERS="2",
                       ACCESS_LOG="false", SHUTDOWN_TIMEOUT="1")
        proc = process_factory([sys.executable, "-m", "authproxy", "run"], env=env, inherit_env=False,
                               cwd=ROOT, name="authproxy")
        base, fa = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{fa_port}"
        async with aiohttp.ClientSession() as http:
            await _wait_healthy(http, base + "/_authproxy/healthz", proc)
        status, text, cookie = await _fresh("POST", base + "/_authproxy/api/auth/login",
                                            json=dict(zip(("username", "password"), ALICE, strict=True)),
                                            headers={"X-Forwarded-Proto": "https"})
        assert status == 200, text
        sessions = [aiohttp.ClientSession() for _ in range(12)]
        try:
            sockets = [await http.ws_connect(base + "/ws", headers={"X-Forwarded-Proto": "https",
                                                                     "Cookie": f"__Host-authproxy={cookie}"})
                       for http in sessions]
            await _until_every_scrape_says(fa, len(sockets))
            workers = await _workers(proc.pid or 0, 2)
            # The supervisor restarts only a worker that died after it saw every worker listen (one that
            # dies while starting stops them all): give its watch loop (0.5 s turns) time to see it.
            await asyncio.sleep(1.5)
            os.kill(min(workers), signal.SIGKILL)
            survivors = 0
            for ws in sockets:
                try:
                    await ws.send_str("hello")
                    survivors += (await ws.receive(timeout=3)).data == "hello"
                except (aiohttp.ClientError, ConnectionError):
                    pass
            assert 0 < survivors < len(sockets), survivors   # the sockets were on both workers
            await _workers(proc.pid or 0, 2, exclude=min(workers))   # restarted
            await _until_every_scrape_says(fa, survivors)
            samples = await _scrape(fa)
            assert value(samples, "authproxy_sign_ins_total", site="technitium", outcome="success") == 1
        finally:
            for http in sessions:
                await http.close()


async def _workers(supervisor: int, count: int, exclude: int = 0, timeout: float = 15) -> set[int]:
    deadline = time.monotonic() + timeout
    while len(pids := _children(supervisor) - {exclude}) < count:
        assert time.monotonic() < deadline, f"{supervisor} has children {pids}, expected {count}"
        await asyncio.sleep(0.05)
    return pids
