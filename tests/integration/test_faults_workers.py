"""WORKERS=2 faults on a real `authproxy run`: the supervisor killed with SIGKILL takes its workers with it
(PR_SET_PDEATHSIG), a second instance refuses to serve beside live workers (SO_REUSEPORT would let it),
and a worker killed with SIGKILL is restarted while the other keeps answering."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.fakes.technitium import FakeTechnitium
from tests.integration.test_cli import ROOT, _wait_healthy, base_env
from tests.support.procs import ManagedProcess, free_port


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(x) for x in text.split()}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _env(tmp_path: Path, technitium: FakeTechnitium, port: int) -> dict[str, str]:
    return base_env(UPSTREAM_URL=technitium.url, UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                    AUTHPROXY_DATA_DIR=str(tmp_path / "data"), PORT=str(port), HOST="127.0.0.1",
                    SESSION_SECRET="s" * 40, WORKERS="2", SHUTDOWN_TIMEOUT="1", LOG_FORMAT="text")


async def _workers(supervisor: int, count: int, timeout: float = 10) -> set[int]:
    deadline = time.monotonic() + timeout
    while len(pids := _children(supervisor)) < count:
        assert time.monotonic() < deadline, f"{supervisor} has children {pids}, expected {count}"
        await asyncio.sleep(0.05)
    return pids


async def test_workers_die_with_their_supervisor_and_nobody_serves_beside_them(
        tmp_path: Path, technitium: FakeTechnitium, process_factory: Callable[..., ManagedProcess]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = process_factory([sys.executable, "-m", "authproxy", "run"], env=_env(tmp_path, technitium, port),
                           inherit_env=False, cwd=ROOT, name="authproxy")
    async with aiohttp.ClientSession() as http:
        await _wait_healthy(http, f"{base}/_authproxy/healthz", proc)
        workers = await _workers(proc.pid or 0, 2)

        second = process_factory([sys.executable, "-m", "authproxy", "run"],
                                 env=_env(tmp_path, technitium, port), inherit_env=False, cwd=ROOT,
                                 name="authproxy-second")
        deadline = time.monotonic() + 20
        while second.running:
            assert time.monotonic() < deadline, second.log_tail()
            await asyncio.sleep(0.05)
        assert second.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}: it is in use" in second.log_tail()

        os.kill(proc.pid or 0, signal.SIGKILL)   # only the supervisor
        started = time.monotonic()
        while any(_alive(w) for w in workers):
            assert time.monotonic() - started < 5, f"workers {workers} outlived their supervisor"
            await asyncio.sleep(0.02)
        gone_after = time.monotonic() - started
        try:
            async with http.get(f"{base}/_authproxy/healthz") as resp:
                raise AssertionError(f"still served after the supervisor died: {resp.status}")
        except aiohttp.ClientConnectorError:
            pass
    print(f"workers gone {gone_after:.2f} s after the supervisor's SIGKILL")


async def test_a_dead_worker_is_restarted_while_the_other_serves(
        tmp_path: Path, technitium: FakeTechnitium, process_factory: Callable[..., ManagedProcess]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = process_factory([sys.executable, "-m", "authproxy", "run"], env=_env(tmp_path, technitium, port),
                           inherit_env=False, cwd=ROOT, name="authproxy")
    statuses: list[int | str] = []
    # A new connection per request: SO_REUSEPORT spreads them over the workers, dead or alive.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        await _wait_healthy(http, f"{base}/_authproxy/healthz", proc)
        before = await _workers(proc.pid or 0, 2)
        # Both workers listen (a worker that dies while the service starts stops it all, by design).
        deadline = time.monotonic() + 20
        while proc.log_tail(20000).count("authproxy ready") < 2:
            assert time.monotonic() < deadline, proc.log_tail()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)   # the supervisor counts the second one (it polls every 0.5 s at most)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        replaced: set[int] = set()
        while time.monotonic() - started < 8:
            try:
                async with http.get(f"{base}/_authproxy/healthz") as resp:
                    statuses.append(resp.status)
            except aiohttp.ClientError as exc:
                statuses.append(type(exc).__name__)
            replaced = _children(proc.pid or 0) - before
            if replaced and len(statuses) > 20:
                break
            await asyncio.sleep(0.02)
        assert replaced, f"no new worker after 8 s\n{proc.log_tail()}"
        restarted_after = time.monotonic() - started
        assert proc.running
        await _wait_healthy(http, f"{base}/_authproxy/healthz", proc)
        # The new worker listens too: every one of a burst of new connections is answered.
        for _ in range(20):
            async with http.get(f"{base}/_authproxy/healthz") as resp:
                assert resp.status == 200
    assert "a worker died; restarting it" in proc.log_tail(20000)
    failures = [s for s in statuses if s != 200]
    # The kernel may have queued a connection or two on the dying worker's socket; nothing more.
    assert len(failures) <= 2, statuses
    print(f"worker restarted after {restarted_after:.2f} s; {len(statuses)} requests, failures {failures}")
