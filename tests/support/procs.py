"""Start and stop real third-party binaries (redis-server, nginx, Caddy, Traefik, qBittorrent) in tests.

Why a helper: every e2e fixture needs the same four things done right — a free port, waiting until the
binary really listens, a log file to show when it did not, and a stop that cannot leave an orphan even
when the test failed or pytest is interrupted.

    port = free_port()
    proc = ManagedProcess(["caddy", "run", "--config", str(cfg)], log_path=tmp_path / "caddy.log")
    proc.start()
    wait_for_port("127.0.0.1", port, timeout=10, process=proc)   # raises with the log tail on failure
    ...
    proc.stop()                                                   # SIGTERM, then SIGKILL after `timeout`

The `process_factory` fixture starts processes that are stopped automatically at teardown.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Self

import pytest

__all__ = ["ManagedProcess", "free_port", "process_factory", "wait_for_port"]

# Every running ManagedProcess, so an interrupted run (Ctrl-C, crash in a fixture) still stops them.
_LIVE: set[ManagedProcess] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it; tiny race with other programs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 10.0, *,
                  process: ManagedProcess | None = None) -> None:
    """Block until `host:port` accepts TCP connections.

    Raises TimeoutError after `timeout` s, or RuntimeError at once when `process` has exited; both carry
    the tail of the process log so the failure explains itself.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and not process.running:
            raise RuntimeError(f"{process.name} exited with {process.returncode} before listening on "
                               f"{host}:{port}\n{process.log_tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            tail = f"\n{process.log_tail()}" if process is not None else ""
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s{tail}")
        time.sleep(0.02)


class ManagedProcess:
    """One child process with a log file and a reliable stop.

    - `argv`: the command; `env` is merged over os.environ unless `inherit_env=False`; `cwd` as usual.
    - Output (stdout+stderr) goes to `log_path` (a temp file when None); `log_tail()` reads its end.
    - The child runs in its own session, so `stop()` signals its whole process group: wrappers that
      spawn children (qBittorrent, shell scripts) do not leave orphans.
    - `start()` may be called again after `stop()` (same argv, same log file, appended).
    """

    def __init__(self, argv: Sequence[str | os.PathLike[str]], *, name: str | None = None,
                 env: Mapping[str, str] | None = None, inherit_env: bool = True,
                 cwd: str | os.PathLike[str] | None = None,
                 log_path: str | os.PathLike[str] | None = None) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.cwd = cwd
        if log_path is None:
            fd, tmp = tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")
            os.close(fd)
            log_path = tmp
        self.log_path = Path(log_path)
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the running child (None before start / after stop)."""
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode if self._popen is not None else None

    def start(self) -> Self:
        """Spawn the child; returns self so `ManagedProcess(...).start()` reads well."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._close_log()
        env = {**os.environ, **self.env} if self.inherit_env else dict(self.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self._log.write(f"--- start: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self._popen = subprocess.Popen(self.argv, env=env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                       stdout=self._log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        _LIVE.add(self)
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL after `timeout` s; returns the exit code. Idempotent."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            self._signal_group(popen.pid, signal.SIGTERM)
            self._signal_group(popen.pid, signal.SIGCONT)  # a SIGSTOPped child must wake to die
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(popen.pid, signal.SIGKILL)
                popen.wait(5.0)
        else:
            # The leader exited on its own; children it left in the group must go too.
            self._signal_group(popen.pid, signal.SIGKILL)
        _LIVE.discard(self)
        self._close_log()
        return popen.returncode

    def signal(self, sig: int) -> None:
        """Send `sig` to the child only (e.g. SIGSTOP/SIGCONT to simulate a hung server)."""
        if self._popen is None or self._popen.poll() is not None:
            raise RuntimeError(f"{self.name} is not running")
        os.kill(self._popen.pid, sig)

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of the log file, for error messages."""
        try:
            text = self.log_path.read_bytes()[-max_chars:].decode(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return f"--- {self.name} log ({self.log_path}) ---\n{text}"

    def __enter__(self) -> Self:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} running={self.running}>"

    @staticmethod
    def _signal_group(pid: int, sig: int) -> None:
        try:
            os.killpg(pid, sig)  # start_new_session=True: the group id is the child's pid
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_LIVE):
        proc.stop(timeout=2.0)


@pytest.fixture
def process_factory(tmp_path: Path) -> Iterator[Callable[..., ManagedProcess]]:
    """`process_factory(argv, **ManagedProcess kwargs)` -> a started process, stopped at teardown.

    Logs default to `tmp_path/<name>.log`.
    """
    started: list[ManagedProcess] = []

    def spawn(argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> ManagedProcess:
        name = kwargs.get("name") or Path(os.fspath(argv[0])).name
        kwargs.setdefault("log_path", tmp_path / f"{name}-{len(started)}.log")
        proc = ManagedProcess(argv, **kwargs)
        started.append(proc)
        return proc.start()

    yield spawn
    for proc in reversed(started):
        proc.stop()
