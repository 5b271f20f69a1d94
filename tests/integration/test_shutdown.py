"""Graceful stop of a real `authproxy run` (SIGTERM, as `docker stop` and systemd send it), one process
and WORKERS=2: a slow request in flight completes, an open WebSocket gets a close frame (1001), no new
connection is accepted, and the process exits within SHUTDOWN_TIMEOUT even when a request never ends.

The upstream is a FakeTechnitium (real sign-in and tokens) with the bridge's WebSocket endpoint and
two more paths: `/slow` sends its headers, waits SLOW seconds, then the rest of its body; `/hang`
sends its headers and never finishes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web

from tests.fakes.technitium import FakeTechnitium
from tests.fakes.ws_upstream import SocketUpstream
from tests.integration.conftest import LOGIN
from tests.integration.test_cli import ROOT, _wait_healthy, base_env
from tests.support.procs import ManagedProcess, free_port

ALICE = ("alice", "alice-pass")
SLOW = 1.5
FORWARDED = {"X-Forwarded-Proto": "https"}  # TRUST_PROXY from loopback: the Secure cookie is issued


@dataclass
class SlowUpstream:
    socket: SocketUpstream
    started: dict[str, asyncio.Event] = field(default_factory=lambda: {"/slow": asyncio.Event(),
                                                                       "/hang": asyncio.Event()})

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path not in self.started:
            return await handler(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(b"started ")
        self.started[request.path].set()
        await asyncio.sleep(SLOW if request.path == "/slow" else 3600)
        await resp.write(b"and finished")
        await resp.write_eof()
        return resp


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[SlowUpstream]:
    fake = FakeTechnitium(api_version=15)
    fake.add_user(*ALICE, display_name="Alice Example")
    slow = SlowUpstream(SocketUpstream(fake))
    fake.app.middlewares.append(slow.middleware)
    await fake.start()
    try:
        yield slow
    finally:
        await fake.close()


@dataclass
class Running:
    proc: ManagedProcess
    base: str
    http: aiohttp.ClientSession
    cookie: str

    async def exited_within(self, seconds: float) -> float:
        """Seconds from now until the process exited; fails after `seconds`."""
        started = time.monotonic()
        while self.proc.running:
            assert time.monotonic() - started < seconds, (
                f"still running after {seconds} s\n{self.proc.log_tail()}"
            )
            await asyncio.sleep(0.02)
        return time.monotonic() - started

    async def refuses_connections(self) -> None:
        deadline = time.monotonic() + 2.0
        while True:
            try:
                async with self.http.get(f"{self.base}/_authproxy/healthz"):
                    pass
            except aiohttp.ClientConnectorError:
                return
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def start(
    tmp_path: Path, upstream: SlowUpstream, process_factory: Callable[..., ManagedProcess]
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async def launch(workers: int, shutdown_timeout: str) -> Running:
            port = free_port()
            env = base_env(UPSTREAM_URL=upstream.socket.url, UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                           AUTHPROXY_DATA_DIR=str(tmp_path / "data"), PORT=str(port), HOST="127.0.0.1",
                           SESSION_SECRET="s" * 40, WORKERS=str(workers), SHUTDOWN_TIMEOUT=shutdown_timeout,
                           LOG_FORMAT="text")
            proc = process_factory([sys.executable, "-m", "authproxy", "run"], env=env, inherit_env=False,
                                   cwd=ROOT, name="authproxy")
            base = f"http://127.0.0.1:{port}"
            await _wait_healthy(http, f"{base}/_authproxy/healthz", proc)
            async with http.post(base + LOGIN, json=dict(zip(("username", "password"), ALICE, strict=True)),
                                 headers=FORWARDED) as resp:
                assert resp.status == 200, await resp.text()
                cookie = resp.cookies["__Host-authproxy"].value
            return Running(proc, base, http, cookie)

        yield launch


def _headers(running: Running) -> dict[str, str]:
    return {**FORWARDED, "Cookie": f"__Host-authproxy={running.cookie}"}


async def _get(running: Running, path: str) -> tuple[int, bytes]:
    async with running.http.get(running.base + path, headers=_headers(running)) as resp:
        return resp.status, await resp.read()


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_finishes_requests_and_closes_websockets(
        start: Callable[..., Awaitable[Running]], upstream: SlowUpstream, workers: int) -> None:
    running = await start(workers, "5s")
    ws = await running.http.ws_connect(running.base + "/ws", headers=_headers(running), autoping=False)
    await ws.send_str("hello")
    assert (await ws.receive(timeout=5)).data == "hello"
    slow = asyncio.create_task(_get(running, "/slow"))
    await asyncio.wait_for(upstream.started["/slow"].wait(), 5)

    os.kill(running.proc.pid, signal.SIGTERM)  # the main process only, as docker stop and systemd do
    closing = await ws.receive(timeout=5)
    assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 1001, "server shutting down")
    await running.refuses_connections()
    assert not slow.done()                               # still in flight, and then it completes
    assert await asyncio.wait_for(slow, 5) == (200, b"started and finished")
    elapsed = await running.exited_within(5.0)
    assert running.proc.returncode == 0, running.proc.log_tail()
    assert elapsed < 3.0, f"exited {elapsed:.1f} s after the last request ended"


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_request_that_never_ends_is_cut_at_shutdown_timeout(
        start: Callable[..., Awaitable[Running]], upstream: SlowUpstream, workers: int) -> None:
    running = await start(workers, "2s")
    hung = asyncio.create_task(_get(running, "/hang"))
    await asyncio.wait_for(upstream.started["/hang"].wait(), 5)

    os.kill(running.proc.pid, signal.SIGTERM)
    signalled = time.monotonic()
    elapsed = await running.exited_within(10.0)
    # Not before SHUTDOWN_TIMEOUT (the request had all of it), and not much after (an old build: 60 s
    # with one process, 10 s and more with workers).
    assert 1.8 <= elapsed < 4.5, f"exited {elapsed:.1f} s after SIGTERM with SHUTDOWN_TIMEOUT=2s"
    assert running.proc.returncode == 0, running.proc.log_tail()
    with pytest.raises(aiohttp.ClientPayloadError):    # cut, not passed off as complete
        await asyncio.wait_for(hung, 5)
    assert time.monotonic() - signalled < 5.0
