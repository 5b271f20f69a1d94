"""What a service manager sees of a real `authproxy run`: systemd's readiness protocol through a fake
notify socket (Type=notify), and `authproxy healthcheck` as a container HEALTHCHECK runs it.

The fake notify socket is what systemd offers: a unix datagram socket in $NOTIFY_SOCKET that learns
each sender's PID from its credentials (SO_PASSCRED), since with NotifyAccess=main (the default) only
the main process may report.
"""

from __future__ import annotations

import array
import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.technitium import FakeTechnitium
from tests.integration.test_cli import ROOT, _wait_healthy, base_env
from tests.support.procs import ManagedProcess, free_port


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def receive(sock: socket.socket, timeout: float) -> tuple[str, int]:
    """(message, sender PID) of the next datagram."""
    deadline = time.monotonic() + timeout
    creds = struct.calcsize("3i")
    while True:
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(creds))
        except BlockingIOError:
            assert time.monotonic() < deadline, "no notification"
            await asyncio.sleep(0.01)
            continue
        pid = next(array.array("i", d)[0] for level, kind, d in ancdata
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        return data.decode(), pid


def _listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:`port` (with SO_REUSEPORT, one per worker)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1] == f"0100007F:{port:04X}" and row.split()[3] == "0A")


@pytest.mark.parametrize("workers", [1, 2])
async def test_ready_once_every_listener_accepts_and_stopping_on_sigterm(
        tmp_path: Path, technitium: FakeTechnitium, notify_socket: socket.socket,
        process_factory: Callable[..., ManagedProcess], workers: int) -> None:
    port, fa_port = free_port(), free_port()
    env = base_env(UPSTREAM_URL=technitium.url, UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                   AUTHPROXY_DATA_DIR=str(tmp_path / "data"), PORT=str(port), HOST="127.0.0.1",
                   FORWARD_AUTH_PORT=str(fa_port), SESSION_SECRET="s" * 40, WORKERS=str(workers),
                   NOTIFY_SOCKET=notify_socket.getsockname())
    proc = process_factory([sys.executable, "-m", "authproxy", "run"], env=env, inherit_env=False, cwd=ROOT,
                           name="authproxy")
    message, sender = await receive(notify_socket, 20)
    assert (message, sender) == ("READY=1", proc.pid), proc.log_tail()   # the main process, nobody else
    # Every process already listens on both ports (each worker has its own SO_REUSEPORT sockets).
    assert (_listening_sockets(port), _listening_sockets(fa_port)) == (workers, workers)
    os.kill(proc.pid, signal.SIGTERM)
    message, sender = await receive(notify_socket, 10)
    assert (message, sender) == ("STOPPING=1", proc.pid)
    deadline = time.monotonic() + 10
    while proc.running:
        assert time.monotonic() < deadline, proc.log_tail()
        await asyncio.sleep(0.02)
    assert proc.returncode == 0
    with pytest.raises(BlockingIOError):  # nothing else: a worker's message would be refused by systemd
        notify_socket.recvmsg(4096)


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authproxy", "healthcheck", "--timeout", "3"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("https", [False, True])
async def test_healthcheck_follows_the_servers_own_configuration(
        tmp_path: Path, technitium: FakeTechnitium, process_factory: Callable[..., ManagedProcess],
        https: bool) -> None:
    port = free_port()
    env = base_env(UPSTREAM_URL=technitium.url, UPSTREAM_TYPE="technitium", AUTHPROXY_DATA_DIR=str(tmp_path),
                   PORT=str(port), HOST="0.0.0.0" if not https else "127.0.0.1", AUTHPROXY_PREFIX="/auth",
                   **({"HTTPS_ENABLED": "true"} if https else {"TRUST_PROXY": "true"}))
    scheme = "https" if https else "http"

    down = healthcheck(env)   # nothing listening yet
    assert down.returncode == 1
    assert f"FAILED: {scheme}://127.0.0.1:{port}/auth/healthz: ConnectionRefusedError" in down.stderr

    proc = process_factory([sys.executable, "-m", "authproxy", "run"], env=env, inherit_env=False, cwd=ROOT,
                           name="authproxy")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as http:
        await _wait_healthy(http, f"{scheme}://127.0.0.1:{port}/auth/healthz", proc)
    up = healthcheck(env)
    assert up.returncode == 0, up.stderr
    assert (
        up.stdout.strip() == f"authproxy healthcheck: ok: {scheme}://127.0.0.1:{port}/auth/healthz: HTTP 200"
    )

    proc.signal(signal.SIGSTOP)   # hung: no answer within --timeout
    try:
        hung = healthcheck(env)
    finally:
        proc.signal(signal.SIGCONT)
    assert hung.returncode == 1 and "timed out" in hung.stderr


def test_healthcheck_with_a_broken_configuration_says_unhealthy_not_2(tmp_path: Path) -> None:
    result = healthcheck(base_env(UPSTREAM_URL="http://127.0.0.1:5380", UPSTREAM_TYPE="technitium",
                                  AUTHPROXY_DATA_DIR=str(tmp_path), SHUTDOWN_TIMEOUT="soon"))
    assert result.returncode == 1   # Docker reserves 2
    assert "SHUTDOWN_TIMEOUT" in result.stderr and "Traceback" not in result.stderr
