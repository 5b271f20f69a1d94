"""Real qBittorrent-nox and transmission-daemon instances for tests (pytest plugin).

Why real binaries: their login quirks (Host-port check, CSRF on Origin, the 409 session-id dance, IP bans
after failed logins) are exactly what the proxy must survive, and fakes would only encode our guesses.
Configuration: qbittorrent-nox 4.5.2 and transmission-daemon 3.00 as Debian ships them, set up below.

Each fixture is function-scoped: qBittorrent bans 127.0.0.1 after 5 failed logins and Transmission locks
everyone out after 100 failed attempts, so state must never leak from one test into the next. Every
process is started on free 127.0.0.1 ports, remembered by PID and stopped by that PID in the fixture's
teardown, also when the test fails. A missing binary is a test failure naming the apt package (never a
skip: a skipped e2e suite looks green).

Use ``start_qbittorrent`` / ``start_transmission`` directly for non-default settings, e.g.
``start_qbittorrent(tmp_path, preferences={"WebUI\\\\LocalHostAuth": "false"})``, and stop the result
yourself (or use the fixtures, which do it for you).

Processes are ``tests.support.procs.ManagedProcess`` (own session, SIGTERM then SIGKILL, stopped at exit
even after Ctrl-C) and ports come from ``procs.free_port``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.procs import ManagedProcess, free_port

__all__ = [
    "QBittorrentApp",
    "TransmissionApp",
    "qbittorrent",
    "qbittorrent_password_hash",
    "start_qbittorrent",
    "start_transmission",
    "transmission",
]

QBITTORRENT_BINARY = "qbittorrent-nox"
TRANSMISSION_BINARY = "transmission-daemon"
DEFAULT_USERNAME = "admin"
DEFAULT_QBT_PASSWORD = "qbt-test-password"
DEFAULT_TR_PASSWORD = "tr-test-password"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
START_ATTEMPTS = 3  # a free port can be taken between probing and binding; retry with new ones


# --------------------------------------------------------------------------------------------------------
# private process / port helpers
# --------------------------------------------------------------------------------------------------------


def _require_binary(name: str, apt_package: str) -> str:
    """Return the binary's path or fail the test with the package to install (never skip)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name!r} is not installed: run `apt-get install -y {apt_package}` "
            f"(Debian package {apt_package!r}); the e2e tests need the real binary.",
            pytrace=False,
        )
    return path


def _free_ports(count: int) -> list[int]:
    """Distinct free ports (``free_port`` may hand out the same one twice in a row)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _tail(path: Path, limit: int = 3000) -> str:
    """Last bytes of a log file, for failure messages."""
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "<no log>"


def _http_status(
    port: int, method: str, path: str, *, headers: Mapping[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str]] | None:
    """One plain HTTP request; None when nothing answers yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    except OSError:
        return None
    except http.client.HTTPException:
        return None
    finally:
        conn.close()


def _spawn(argv: list[str], *, log_path: Path, home: Path) -> ManagedProcess:
    """Start argv with output in log_path; HOME points into the tmp dir so no dotfile lands elsewhere."""
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local"),
        "XDG_CACHE_HOME": str(home / ".cache"),
    }
    return ManagedProcess(argv, env=env, log_path=log_path).start()


def _qbt_ready(port: int, log_path: Path) -> bool:
    """The log line proves *our* qbittorrent-nox owns the port; the request proves it serves HTTP."""
    listening = f"Now listening on IP: 127.0.0.1, port: {port}"
    return (
        listening in _tail(log_path, 100_000) and _http_status(port, "GET", "/api/v2/app/version") is not None
    )


def _tr_ready(port: int, rpc_path: str, headers: Mapping[str, str]) -> bool:
    """Only Transmission answers 409 with X-Transmission-Session-Id: proves the port is ours.

    With auth on, ``headers`` must carry the right credentials: unauthenticated probes count toward the
    100-failure lock-out.
    """
    answer = _http_status(port, "POST", rpc_path, headers=headers, body=b'{"method":"session-get"}')
    return answer is not None and "x-transmission-session-id" in answer[1]


def _wait_ready(proc: ManagedProcess, check: Callable[[], bool], timeout: float) -> bool:
    """Poll check() until it is true; False when the process died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running:
            return False
        if check():
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------------------------------------
# qBittorrent-nox
# --------------------------------------------------------------------------------------------------------


def qbittorrent_password_hash(password: str, *, salt: bytes | None = None) -> str:
    """`WebUI\\Password_PBKDF2` value: PBKDF2-HMAC-SHA512, 100000 rounds, 64-byte key, as 4.5.2 stores it."""
    salt = salt if salt is not None else os.urandom(16)
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 100_000, 64)
    return f'"@ByteArray({base64.b64encode(salt).decode()}:{base64.b64encode(key).decode()})"'


@dataclass
class QBittorrentApp:
    """A running qbittorrent-nox; ``url`` has no trailing slash (``http://127.0.0.1:PORT``)."""

    url: str
    port: int
    torrent_port: int
    username: str
    password: str
    profile_dir: Path
    config_path: Path
    log_path: Path
    """qBittorrent's own log (``qBittorrent/data/logs/qbittorrent.log``): bans and Host rejects show here."""
    stdout_path: Path
    process: ManagedProcess = field(repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def host(self) -> str:
        """The Host header value qBittorrent accepts (its port must equal the WebUI port)."""
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.running

    def stop(self) -> None:
        """Stop this instance by PID (its process group); safe to call twice."""
        self.process.stop(STOP_TIMEOUT)


def _qbt_config(
    *,
    port: int,
    torrent_port: int,
    username: str,
    password: str,
    save_dir: Path,
    preferences: Mapping[str, str],
    bittorrent: Mapping[str, str],
) -> str:
    """The qBittorrent.conf text (Qt INI, one `Group\\Key=value` per line)."""
    bt: dict[str, str] = {
        "Session\\Port": str(torrent_port),
        "Session\\Interface": "lo",
        "Session\\InterfaceName": "lo",
        "Session\\InterfaceAddress": "127.0.0.1",
        "Session\\DHTEnabled": "false",
        "Session\\LSDEnabled": "false",
        "Session\\PeXEnabled": "false",
        "Session\\DefaultSavePath": str(save_dir),
        "Session\\TempPath": str(save_dir / "temp"),
    }
    bt.update(bittorrent)
    prefs: dict[str, str] = {
        "Connection\\ResolvePeerCountries": "false",
        "General\\Locale": "en",
        "WebUI\\Address": "127.0.0.1",
        "WebUI\\Port": str(port),
        "WebUI\\Username": username,
        "WebUI\\LocalHostAuth": "true",
        "WebUI\\Password_PBKDF2": qbittorrent_password_hash(password),
    }
    prefs.update(preferences)
    lines = ["[LegalNotice]", "Accepted=true", "", "[BitTorrent]"]
    lines += [f"{k}={v}" for k, v in bt.items()]
    lines += ["", "[Network]", "PortForwardingEnabled=false", "", "[Preferences]"]
    lines += [f"{k}={v}" for k, v in prefs.items()]
    return "\n".join(lines) + "\n"


def start_qbittorrent(
    base_dir: Path,
    *,
    username: str = DEFAULT_USERNAME,
    password: str = DEFAULT_QBT_PASSWORD,
    preferences: Mapping[str, str] | None = None,
    bittorrent: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> QBittorrentApp:
    """Write a fresh profile under base_dir and start qbittorrent-nox; caller must ``stop()`` it.

    ``preferences``/``bittorrent`` override or add `[Preferences]`/`[BitTorrent]` keys verbatim, e.g.
    ``{"WebUI\\\\HostHeaderValidation": "false"}``.
    """
    binary = _require_binary(QBITTORRENT_BINARY, "qbittorrent-nox")
    failures: list[str] = []
    for attempt in range(START_ATTEMPTS):
        port, torrent_port = _free_ports(2)
        profile = base_dir / f"qbt-{port}"
        conf_dir = profile / "qBittorrent" / "config"
        conf_dir.mkdir(parents=True)
        conf_path = conf_dir / "qBittorrent.conf"
        conf_path.write_text(
            _qbt_config(
                port=port,
                torrent_port=torrent_port,
                username=username,
                password=password,
                save_dir=profile / "downloads",
                preferences=preferences or {},
                bittorrent=bittorrent or {},
            )
        )
        stdout_path = profile / "stdout.log"
        log_path = profile / "qBittorrent" / "data" / "logs" / "qbittorrent.log"
        proc = _spawn(
            [binary, f"--profile={profile}", f"--webui-port={port}"], log_path=stdout_path, home=profile
        )
        if _wait_ready(proc, functools.partial(_qbt_ready, port, log_path), timeout):
            return QBittorrentApp(
                url=f"http://127.0.0.1:{port}",
                port=port,
                torrent_port=torrent_port,
                username=username,
                password=password,
                profile_dir=profile,
                config_path=conf_path,
                log_path=log_path,
                stdout_path=stdout_path,
                process=proc,
            )
        proc.stop()
        failures.append(
            f"attempt {attempt + 1} (port {port}):\n--- stdout ---\n{_tail(stdout_path)}\n"
            f"--- qbittorrent.log ---\n{_tail(log_path)}"
        )
    pytest.fail("qbittorrent-nox did not become ready:\n" + "\n".join(failures), pytrace=False)


@pytest.fixture
def qbittorrent(tmp_path: Path) -> Iterator[QBittorrentApp]:
    """A fresh qbittorrent-nox 4.5.2 per test (failed logins ban 127.0.0.1 for the instance's lifetime)."""
    app = start_qbittorrent(tmp_path)
    try:
        yield app
    finally:
        app.stop()


# --------------------------------------------------------------------------------------------------------
# transmission-daemon
# --------------------------------------------------------------------------------------------------------


@dataclass
class TransmissionApp:
    """A running transmission-daemon; ``url`` is ``http://127.0.0.1:PORT``, ``rpc_url`` its RPC endpoint."""

    url: str
    rpc_url: str
    web_url: str
    port: int
    peer_port: int
    username: str
    password: str
    config_dir: Path
    log_path: Path
    process: ManagedProcess = field(repr=False)

    rpc_path: str = "/transmission/rpc"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def basic_auth(self) -> str:
        """The `Authorization` header value with the right credentials."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def alive(self) -> bool:
        return self.process.running

    def stop(self) -> None:
        """Stop this instance by PID (its process group); safe to call twice."""
        self.process.stop(STOP_TIMEOUT)


def start_transmission(
    base_dir: Path,
    *,
    username: str = DEFAULT_USERNAME,
    password: str = DEFAULT_TR_PASSWORD,
    settings: Mapping[str, object] | None = None,
    timeout: float = START_TIMEOUT,
) -> TransmissionApp:
    """Write settings.json under base_dir and start transmission-daemon; caller must ``stop()`` it.

    Readiness is proven with the *correct* Basic credentials (answer 409 + session id), never with an
    unauthenticated probe: those count toward the 100-failure lock-out. ``settings`` overrides keys.
    """
    binary = _require_binary(TRANSMISSION_BINARY, "transmission-daemon")
    failures: list[str] = []
    for attempt in range(START_ATTEMPTS):
        port, peer_port = _free_ports(2)
        cfg = base_dir / f"transmission-{port}"
        (cfg / "downloads").mkdir(parents=True)
        conf: dict[str, object] = {
            "rpc-enabled": True,
            "rpc-bind-address": "127.0.0.1",
            "rpc-port": port,
            "rpc-url": "/transmission/",
            "rpc-authentication-required": True,
            "rpc-username": username,
            "rpc-password": password,
            "rpc-whitelist-enabled": True,
            "rpc-whitelist": "127.0.0.1,::1",
            "rpc-host-whitelist-enabled": True,
            "rpc-host-whitelist": "",
            "peer-port": peer_port,
            "peer-port-random-on-start": False,
            "bind-address-ipv4": "127.0.0.1",
            "bind-address-ipv6": "::1",
            "dht-enabled": False,
            "lpd-enabled": False,
            "pex-enabled": False,
            "utp-enabled": False,
            "port-forwarding-enabled": False,
            "blocklist-enabled": False,
            "download-dir": str(cfg / "downloads"),
            "incomplete-dir-enabled": False,
            "watch-dir-enabled": False,
            "message-level": 2,
        }
        conf.update(settings or {})
        (cfg / "settings.json").write_text(json.dumps(conf, indent=2))
        log_path = cfg / "transmission.log"
        proc = _spawn(
            [binary, "-f", "-g", str(cfg), "-e", str(log_path)], log_path=cfg / "stdout.log", home=cfg
        )
        # Without auth nothing can be burnt; with auth, only the right credentials may knock.
        probe_headers = (
            {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}
            if conf["rpc-authentication-required"]
            else {}
        )
        rpc_path = str(conf["rpc-url"]).rstrip("/") + "/rpc"
        if _wait_ready(proc, functools.partial(_tr_ready, port, rpc_path, probe_headers), timeout):
            url = f"http://127.0.0.1:{port}"
            return TransmissionApp(
                url=url,
                rpc_url=url + rpc_path,
                web_url=url + str(conf["rpc-url"]).rstrip("/") + "/web/",
                port=port,
                peer_port=peer_port,
                username=username,
                password=password,
                config_dir=cfg,
                log_path=log_path,
                process=proc,
                rpc_path=rpc_path,
            )
        proc.stop()
        failures.append(
            f"attempt {attempt + 1} (port {port}):\n--- stdout ---\n{_tail(cfg / 'stdout.log')}\n"
            f"--- transmission.log ---\n{_tail(log_path)}"
        )
    pytest.fail("transmission-daemon did not become ready:\n" + "\n".join(failures), pytrace=False)


@pytest.fixture
def transmission(tmp_path: Path) -> Iterator[TransmissionApp]:
    """A fresh transmission-daemon 3.00 per test (100 failed attempts lock out everyone until restart)."""
    app = start_transmission(tmp_path)
    try:
        yield app
    finally:
        app.stop()
