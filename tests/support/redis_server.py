"""A real `redis-server` for tests (no fakes: pub/sub, expiry, AOF and reconnects behave as in production).

Fixtures:
    redis_server          session-scoped RedisServer (in-memory: --save '' --appendonly no)
    redis_url             function-scoped URL of that server, FLUSHALLed before the test
    redis_server_factory  function-scoped `factory(appendonly=False, password=None) -> RedisServer`
                          for tests that stop/restart/hang their own instance; all stopped at teardown

RedisServer: .url, .unix_url, .host, .port, .password, .dir, .pid, .running,
             .start() (again on the same port and dir), .stop(), .command(*args) (raw RESP, for setup),
             .process (the ManagedProcess: .signal(SIGSTOP) simulates a hung server).

The binary is `$REDIS_SERVER` or `redis-server` on PATH; when missing the tests FAIL (never skip), saying
how to install it.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.procs import ManagedProcess, free_port

__all__ = ["RedisServer", "redis_binary", "redis_server", "redis_server_factory", "redis_url"]

INSTALL_HINT = ("redis-server is required by the store tests and was not found "
                "(looked at $REDIS_SERVER, PATH and /usr/bin/redis-server). "
                "Install it with: apt-get install -y redis-server")


def redis_binary() -> str:
    """Path of the redis-server binary, or fail the test with the install command."""
    candidates = [os.environ.get("REDIS_SERVER"), shutil.which("redis-server"), "/usr/bin/redis-server"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(INSTALL_HINT, pytrace=False)


def _encode(*args: str | bytes | int) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisServer:
    """One redis-server process on 127.0.0.1:`port` (+ a unix socket in `dir`)."""

    host = "127.0.0.1"

    def __init__(self, dir: Path, *, port: int | None = None, appendonly: bool = False,
                 password: str | None = None, binary: str | None = None) -> None:
        self.dir = dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self.binary = binary or redis_binary()
        self.socket_path = self.dir / "redis.sock"
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"unix://{auth}{self.socket_path}?db=0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def _argv(self) -> list[str]:
        argv = [self.binary, "--bind", self.host, "--port", str(self.port), "--dir", str(self.dir),
                "--save", "", "--daemonize", "no", "--logfile", "",
                "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.appendonly:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart after stop()) on the same port and dir; returns once PING answers PONG."""
        if self.running:
            return self
        first = self.process is None
        for attempt in range(3):
            self.process = ManagedProcess(self._argv(), name=f"redis-{self.port}",
                                          log_path=self.dir / "redis.log").start()
            try:
                self._wait_ready(timeout)
                return self
            except RuntimeError:
                self.process.stop()
                # Lost the free_port() race with another program: pick another port (first start only).
                if not first or attempt == 2 or "Address already in use" not in self.process.log_tail():
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SIGTERM (redis flushes the AOF on a clean shutdown), SIGKILL after 5 s."""
        if self.process is not None:
            self.process.stop()

    def command(self, *args: str | bytes | int, timeout: float = 2.0) -> bytes:
        """Send one command (AUTH first when needed); returns the raw first reply line, e.g. b'+OK'."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            payload = _encode("AUTH", self.password) if self.password else b""
            sock.sendall(payload + _encode(*args))
            reader = sock.makefile("rb")
            if self.password:
                reader.readline()
            return reader.readline().rstrip(b"\r\n")

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        last = b""
        while time.monotonic() < deadline:
            if not self.process.running:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}\n"
                                   f"{self.process.log_tail()}")
            try:
                last = self.command("PING", timeout=0.5)
                if last == b"+PONG":  # not "-LOADING ..." while the AOF is replayed
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"redis-server on port {self.port} not ready after {timeout} s "
                           f"(last reply {last!r})\n{self.process.log_tail()}")

    def __repr__(self) -> str:
        return f"<RedisServer port={self.port} pid={self.pid} appendonly={self.appendonly}>"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One in-memory redis-server for the whole run."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared server, emptied (FLUSHALL) before the test; restarted if a test stopped it."""
    redis_server.start()
    reply = redis_server.command("FLUSHALL")
    assert reply == b"+OK", reply
    return redis_server.url


@pytest.fixture
def redis_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisServer]]:
    """`factory(*, appendonly=False, password=None)` -> a started private RedisServer."""
    servers: list[RedisServer] = []

    def make(*, appendonly: bool = False, password: str | None = None) -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis-own"), appendonly=appendonly, password=password)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
