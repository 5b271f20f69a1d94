"""The real-app fixtures start qBittorrent-nox 4.5.2 and transmission-daemon 3.00 as Appendix A says.

Why: every e2e test of the qBittorrent/Transmission adapters stands on these fixtures; this pins the
upstream behaviour they rely on (login answers, cookies, Host check, ban, 401/409 dance) so a changed
package or a broken fixture shows up here first, with a clear message.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.apps import QBittorrentApp, TransmissionApp, start_qbittorrent, start_transmission

pytestmark = pytest.mark.e2e


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """No cookie jar (it ignores IP hosts anyway), no redirects: tests send cookies explicitly."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, str, aiohttp.ClientResponse]:
    kwargs.setdefault("allow_redirects", False)
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.text(), resp


async def qbt_login(
    http: aiohttp.ClientSession, app: QBittorrentApp, password: str | None = None
) -> tuple[str, str]:
    """(body, Set-Cookie) of one form-encoded login."""
    status, text, resp = await call(
        http,
        "POST",
        app.url + "/api/v2/auth/login",
        data={"username": app.username, "password": app.password if password is None else password},
    )
    assert status == 200, text
    return text, resp.headers.get("Set-Cookie", "")


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


# ======================================================================================= qBittorrent


async def test_qbittorrent_login_ok_sets_sid(
    qbittorrent: QBittorrentApp, http: aiohttp.ClientSession
) -> None:
    text, cookie = await qbt_login(http, qbittorrent)
    assert text == "Ok."
    assert (
        cookie.startswith("SID=")
        and "HttpOnly" in cookie
        and "path=/" in cookie
        and "SameSite=Strict" in cookie
    )
    sid = cookie.split(";", 1)[0].removeprefix("SID=")
    assert len(sid) == 32

    status, text, _ = await call(
        http, "GET", qbittorrent.url + "/api/v2/app/version", headers={"Cookie": f"SID={sid}"}
    )
    assert (status, text) == (200, "v4.5.2")
    status, _, _ = await call(
        http, "POST", qbittorrent.url + "/api/v2/auth/logout", headers={"Cookie": f"SID={sid}"}
    )
    assert status == 200
    status, _, _ = await call(
        http, "GET", qbittorrent.url + "/api/v2/app/version", headers={"Cookie": f"SID={sid}"}
    )
    assert status == 403


async def test_qbittorrent_rejections(qbittorrent: QBittorrentApp, http: aiohttp.ClientSession) -> None:
    text, cookie = await qbt_login(http, qbittorrent, password="wrong")
    assert (text, cookie) == ("Fails.", "")  # HTTP 200, not 401

    status, text, _ = await call(http, "GET", qbittorrent.url + "/api/v2/app/version")
    assert (status, text) == (403, "Forbidden")
    status, _, _ = await call(
        http, "GET", qbittorrent.url + "/api/v2/app/version", headers={"Cookie": "SID=bogus"}
    )
    assert status == 403

    # Host header validation: a port in Host must equal the WebUI port; no port is fine.
    wrong_port = qbittorrent.port + 1 if qbittorrent.port < 65535 else qbittorrent.port - 1
    status, text, _ = await call(
        http, "GET", qbittorrent.url + "/api/v2/app/version", headers={"Host": f"127.0.0.1:{wrong_port}"}
    )
    assert (status, text) == (401, "Unauthorized")
    status, _, _ = await call(
        http, "GET", qbittorrent.url + "/api/v2/app/version", headers={"Host": "proxy.example"}
    )
    assert status == 403  # passed the Host check, then "not logged in"
    assert "Invalid Host header, port mismatch" in qbittorrent.log_path.read_text()

    # CSRF: Origin must match Host (or X-Forwarded-Host), scheme ignored; applies to login too.
    status, _, _ = await call(
        http,
        "POST",
        qbittorrent.url + "/api/v2/auth/login",
        data={"username": qbittorrent.username, "password": qbittorrent.password},
        headers={"Origin": "http://evil.example"},
    )
    assert status == 401
    status, text, _ = await call(
        http,
        "POST",
        qbittorrent.url + "/api/v2/auth/login",
        data={"username": qbittorrent.username, "password": qbittorrent.password},
        headers={"Origin": "https://proxy.example:8443", "X-Forwarded-Host": "proxy.example:8443"},
    )
    assert (status, text) == (200, "Ok.")


async def test_qbittorrent_bans_after_five_failures(
    qbittorrent: QBittorrentApp, http: aiohttp.ClientSession
) -> None:
    """Why every test gets its own instance: this ban would leak into the next test."""
    for _ in range(5):
        text, _ = await qbt_login(http, qbittorrent, password="wrong")
        assert text == "Fails."
    status, text, _ = await call(
        http,
        "POST",
        qbittorrent.url + "/api/v2/auth/login",
        data={"username": qbittorrent.username, "password": qbittorrent.password},
    )
    assert status == 403 and "banned" in text


async def test_qbittorrent_fixture_stops_and_options(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    app = start_qbittorrent(
        tmp_path, username="alice", password="pä ss:word", preferences={"WebUI\\LocalHostAuth": "false"}
    )
    try:
        assert "WebUI\\Username=alice" in app.config_path.read_text()
        # LocalHostAuth=false: 127.0.0.1 is trusted without any login.
        status, text, _ = await call(http, "GET", app.url + "/api/v2/app/version")
        assert (status, text) == (200, "v4.5.2")
        text, _ = await qbt_login(http, app)
        assert text == "Ok."  # non-ASCII password hashed the way qBittorrent checks it
    finally:
        app.stop()
    assert not app.alive() and port_closed(app.port)
    app.stop()  # idempotent


def test_missing_binary_fails_naming_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y qbittorrent-nox"):
        start_qbittorrent(tmp_path)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y transmission-daemon"):
        start_transmission(tmp_path)


# ======================================================================================= Transmission


async def test_transmission_auth_and_session_id(
    transmission: TransmissionApp, http: aiohttp.ClientSession
) -> None:
    body = json.dumps({"method": "session-get", "arguments": {"fields": ["version", "rpc-version"]}})

    status, text, resp = await call(http, "POST", transmission.rpc_url, data=body)
    assert status == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="Transmission"'
    assert "Unauthorized User" in text

    auth = {"Authorization": transmission.basic_auth}
    status, _, resp = await call(http, "POST", transmission.rpc_url, data=body, headers=auth)
    assert status == 409
    session_id = resp.headers["X-Transmission-Session-Id"]
    assert len(session_id) == 48

    status, text, _ = await call(
        http,
        "POST",
        transmission.rpc_url,
        data=body,
        headers={**auth, "X-Transmission-Session-Id": session_id},
    )
    assert status == 200
    answer = json.loads(text)
    assert answer["result"] == "success" and answer["arguments"]["version"].startswith("3.00")

    status, _, resp = await call(
        http, "POST", transmission.rpc_url, data=body, headers={**auth, "X-Transmission-Session-Id": "stale"}
    )
    assert status == 409 and resp.headers["X-Transmission-Session-Id"] == session_id

    # Every path needs Basic auth, even the redirect from "/".
    status, _, _ = await call(http, "GET", transmission.url + "/")
    assert status == 401
    status, _, resp = await call(http, "GET", transmission.url + "/", headers=auth)
    assert (status, resp.headers["Location"]) == (301, "/transmission/web/")
    status, _, _ = await call(http, "GET", transmission.web_url)
    assert status == 401
    status, _, _ = await call(http, "GET", transmission.web_url, headers=auth)
    assert status == 200


async def test_transmission_stop(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    app = start_transmission(tmp_path, username="bob", password="s3cret")
    try:
        status, _, _ = await call(
            http, "POST", app.rpc_url, data="{}", headers={"Authorization": app.basic_auth}
        )
        assert status == 409
    finally:
        app.stop()
    assert not app.alive() and port_closed(app.port)
