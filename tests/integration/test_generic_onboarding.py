"""Onboarding by configuration alone, round two: the generic adapter in front of apps that need more
than one cookie (tests/fakes/generic_apps.py), each configured as the README's recipes say.

What each test proves, against a fake that behaves as the real kind of app does:
- a session cookie named per instance (`sessionid-<id>`) is taken, injected and hidden by its pattern;
- a CSRF token returned at sign-in and a constant header go on every request ([[injects]]);
- a hidden field the UI writes back blank keeps its real value (or the write is refused);
- a long-poll that sends its headers and then stays quiet longer than `timeout` is not cut (idle_timeout);
- Basic auth on every page: the login path `/` is a page, never a sign-in call;
- a UI that signs out over its WebSocket ends the authproxy session too, and an app serving its own
  login page with 200 at any path sends the person back to authproxy's sign-in;
- an app without a logout call gets its live session back at the next sign-in (logout.reuse).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from authproxy import keys
from tests.fakes.generic_apps import COOKIE, CSRF_HEADER, SUFFIX, FakeBasicApp, FakeConsole, FakeSyncApp
from tests.integration.conftest import BROWSER, LOGOUT, SESSION
from tests.support.gateway import SECRET, Gateway, GatewayClient, MakeGateway

ClientFor = Callable[[Gateway], GatewayClient]
ENV = {"TRUST_PROXY": "true", "SESSION_SECRET": SECRET, "ACCESS_LOG": "false"}

SYNC_OPTIONS = """
[sites.options.login]
path = "/rest/noauth/auth/password"
encoding = "json"
ok_status = [204]

[sites.options.credential]
from = "cookie"
name = "sessionid-*"                # the app names it sessionid-<first 5 characters of its id>

[[sites.options.injects]]            # the CSRF token the login answer carried, under its own name
as = "header"
name = "X-CSRF-Token-*"
template = "{captured}"
capture = { from = "header", name = "X-CSRF-Token-*" }

[[sites.options.injects]]            # a constant the app's UI always sends
as = "header"
name = "X-Instance"
template = "SUFFIX"

[sites.options.hide]
json = [{ pointer = "/gui/apiKey", paths = ["/rest/config"] }]
set_cookies = ["CSRF-Token-*"]
""".replace("SUFFIX", SUFFIX)


@pytest.fixture
async def sync_app() -> AsyncIterator[FakeSyncApp]:
    async with FakeSyncApp() as app:
        yield app


@pytest.fixture
async def console() -> AsyncIterator[FakeConsole]:
    async with FakeConsole() as app:
        yield app


async def _gateway(make_gateway: MakeGateway, tmp_path: Path, url: str, options: str, *,
                   site: str = "", env: dict[str, str] | None = None) -> Gateway:
    config = tmp_path / "authproxy.toml"
    config.write_text(f'[[sites]]\nname = "app"\ntype = "generic"\nupstream_url = "{url}"\n{site}\n{options}',
                      encoding="utf-8")
    return await make_gateway({**ENV, **(env or {})}, config_file=config)


async def _signed_in(gw: Gateway, client_for: ClientFor, user: str, password: str) -> GatewayClient:
    client = client_for(gw)
    resp = await client.login(user, password)
    assert resp.status == 200, await resp.text()
    return client


# ======================================================================= cookie patterns, injects


async def test_a_per_instance_cookie_and_a_captured_csrf_token_go_on_every_request(
        make_gateway: MakeGateway, sync_app: FakeSyncApp, client_for: ClientFor, tmp_path: Path) -> None:
    gw = await _gateway(make_gateway, tmp_path, sync_app.url, SYNC_OPTIONS)
    client = await _signed_in(gw, client_for, "admin", "sync-pass")
    [sid] = sync_app.sessions
    loaded = await gw.app[keys.SESSIONS].load(client.cookie or "")
    assert loaded is not None
    assert loaded.session.credentials["app"].secret == sid

    # The browser sends forged copies of everything authproxy injects; the app sees only the real ones.
    resp = await client.request("GET", "/rest/echo", headers={
        "Cookie": f"{client.cookie_name}={client.cookie}; {COOKIE}=forged; sessionid-ZZZZZ=other; theme=dark",
        CSRF_HEADER: "forged-csrf", "X-Instance": "forged"})
    assert resp.status == 200, await resp.text()
    seen = await resp.json()
    assert seen["cookies"] == {COOKIE: sid, "theme": "dark"}
    assert seen["csrf"] == sync_app.sessions[sid] and seen["instance"] == SUFFIX

    # A write needs the CSRF header too: it is there without the browser knowing the token.
    config = await (await client.request("GET", "/rest/config")).json()
    config["gui"]["theme"] = "dark"
    put = await client.request("PUT", "/rest/config", json=config)
    assert put.status == 200, await put.text()
    text = await put.text() + json.dumps(dict(put.headers))
    assert sid not in text and sync_app.sessions[sid] not in text


async def test_the_upstream_session_cookie_never_reaches_the_browser_whatever_its_suffix(
        make_gateway: MakeGateway, sync_app: FakeSyncApp, client_for: ClientFor, tmp_path: Path) -> None:
    """The app sends its session and CSRF cookies again with its config; both are dropped by their
    `prefix*` patterns, and other cookies pass."""
    gw = await _gateway(make_gateway, tmp_path, sync_app.url, SYNC_OPTIONS)
    client = await _signed_in(gw, client_for, "admin", "sync-pass")
    resp = await client.request("GET", "/rest/config")
    assert resp.status == 200
    assert [c.split("=", 1)[0] for c in resp.headers.getall("Set-Cookie", [])] == ["ui-lang"]


# ======================================================================= hidden field written back


async def test_a_blanked_secret_survives_the_ui_saving_the_whole_config(
        make_gateway: MakeGateway, sync_app: FakeSyncApp, client_for: ClientFor, tmp_path: Path) -> None:
    gw = await _gateway(make_gateway, tmp_path, sync_app.url, SYNC_OPTIONS)
    client = await _signed_in(gw, client_for, "admin", "sync-pass")
    read = await client.request("GET", "/rest/config")
    config = await read.json()
    assert config["gui"]["apiKey"] is None          # hidden from the browser
    config["gui"]["theme"] = "dark"                 # the person changes the theme, the UI saves it all
    saved = await client.request("PUT", "/rest/config", json=config)
    assert saved.status == 200, await saved.text()
    assert sync_app.config["gui"] == {"theme": "dark", "apiKey": "real-api-key-1"}
    assert (await saved.json())["gui"]["apiKey"] is None   # the answer is hidden as well

    # A key the person sets on purpose goes on as sent.
    config["gui"]["apiKey"] = "chosen-new-key"
    assert (await client.request("PUT", "/rest/config", json=config)).status == 200
    assert sync_app.config["gui"]["apiKey"] == "chosen-new-key"


async def test_write_back_refuse_stops_the_write_with_a_clear_error(
        make_gateway: MakeGateway, sync_app: FakeSyncApp, client_for: ClientFor, tmp_path: Path) -> None:
    options = SYNC_OPTIONS.replace('set_cookies = ["CSRF-Token-*"]', 'set_cookies = ["CSRF-Token-*"]\n'
                                   'write_back = "refuse"')
    gw = await _gateway(make_gateway, tmp_path, sync_app.url, options)
    client = await _signed_in(gw, client_for, "admin", "sync-pass")
    config = await (await client.request("GET", "/rest/config")).json()
    resp = await client.request("PUT", "/rest/config", json=config)
    assert resp.status == 409
    body = await resp.json()
    assert body["error"] == "hidden_field" and "/gui/apiKey" in body["message"]
    assert sync_app.config["gui"]["apiKey"] == "real-api-key-1"


# ======================================================================= long-poll


async def test_a_long_poll_quiet_for_longer_than_timeout_is_not_cut_between_chunks(
        make_gateway: MakeGateway, sync_app: FakeSyncApp, client_for: ClientFor, tmp_path: Path) -> None:
    """The app holds /rest/events open (60 s in real life): headers at once, then silence. `timeout`
    (here 0.4 s) bounds the wait for the headers only; `idle_timeout` (here 1.5 s) the silence between
    chunks, so gaps of 0.8 s pass, and one of 2.5 s does not (the connection is dropped, never a clean
    end that would pass a cut answer off as whole)."""
    gw = await _gateway(make_gateway, tmp_path, sync_app.url, SYNC_OPTIONS,
                        site='timeout = "0.4s"\nidle_timeout = "1.5s"')
    client = await _signed_in(gw, client_for, "admin", "sync-pass")
    sync_app.event_gaps = [0.8, 0.8]
    for method, body in (("GET", None), ("POST", b"{}")):   # the lean client, and aiohttp's (a body)
        started = time.monotonic()
        resp = await client.request(method, "/rest/events", data=body)
        assert resp.status == 200
        assert await resp.read() == b'{"id":0}\n{"id":1}\n', method
        assert time.monotonic() - started >= 1.6

    sync_app.event_gaps = [0.1, 2.5]
    resp = await client.request("GET", "/rest/events")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


# ======================================================================= Basic on any page


async def test_basic_on_any_page_with_login_path_slash_serves_the_home_page(
        make_gateway: MakeGateway, client_for: ClientFor, tmp_path: Path) -> None:
    async with FakeBasicApp() as app:
        gw = await _gateway(make_gateway, tmp_path, app.url, """
[sites.options.login]
method = "GET"
path = "/"
encoding = "basic"
[sites.options.credential]
from = "basic"
""")
        client = await _signed_in(gw, client_for, "ops", "basic-pass")
        for method in ("GET", "POST"):
            resp = await client.request(method, "/", headers=BROWSER)
            assert resp.status == 200, (method, await resp.text())
            assert f"{method} /" in await resp.text()
            assert "WWW-Authenticate" not in resp.headers


# ======================================================================= WebSocket UI, 200 login page

CONSOLE_OPTIONS = """
[sites.options.login]
path = "/login"
username_field = "user"
ok_status = [303]

[sites.options.credential]
from = "cookie"
name = "console_sid"

[sites.options.expiry]
html_marker = "<title>Console login</title>"

[sites.options.logout]
ws_text_contains = '"type":"logout"'
"""


async def test_a_websocket_logout_message_ends_the_authproxy_session_too(
        make_gateway: MakeGateway, console: FakeConsole, client_for: ClientFor, tmp_path: Path,
        http_client: aiohttp.ClientSession) -> None:
    gw = await _gateway(make_gateway, tmp_path, console.url, CONSOLE_OPTIONS)
    client = await _signed_in(gw, client_for, "root", "console-pass")
    headers = {**client.headers, "Cookie": f"{client.cookie_name}={client.cookie}", "Origin": client.origin}
    async with http_client.ws_connect(gw.url + "/ws", headers=headers) as ws:
        await ws.send_str('{"type":"ping"}')
        assert (await ws.receive(timeout=5)).data == 'echo:{"type":"ping"}'
        await ws.send_str('{"type":"logout","why":"menu"}')
        msg = await ws.receive(timeout=5)
        if msg.type == aiohttp.WSMsgType.TEXT:      # the app's answer may come before our close
            assert msg.data == '{"type":"logged_out"}'
            msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert console.sessions == set()
    assert (await (await client.request("GET", SESSION)).json())["authenticated"] is False
    page = await client.request("GET", "/dashboard", headers=BROWSER)
    assert page.status == 302 and "/_authproxy/login" in page.headers["Location"]


async def test_the_apps_own_login_page_at_any_path_sends_the_person_back_to_sign_in(
        make_gateway: MakeGateway, console: FakeConsole, client_for: ClientFor, tmp_path: Path) -> None:
    """The app's session died without authproxy seeing it: the app serves its login page, with 200, at
    any path. That page (html_marker) ends the credential, and the browser goes to authproxy's sign-in,
    where signing in again works."""
    gw = await _gateway(make_gateway, tmp_path, console.url, CONSOLE_OPTIONS)
    client = await _signed_in(gw, client_for, "root", "console-pass")
    assert "<title>Console</title>" in await (await client.request("GET", "/status", headers=BROWSER)).text()
    console.sessions.clear()   # ended on the app's side (its own timeout, another logout)
    page = await client.request("GET", "/status", headers=BROWSER)
    assert page.status == 302, await page.text()
    assert "/_authproxy/login" in page.headers["Location"] and "expired=1" in page.headers["Location"]
    await _signed_in(gw, client_for, "root", "console-pass")


async def test_the_apps_own_login_form_posted_while_signed_in_leads_to_a_working_sign_in(
        make_gateway: MakeGateway, console: FakeConsole, client_for: ClientFor, tmp_path: Path) -> None:
    """Without `html_marker`, the app's login page (200, at any path) reaches the browser once its
    session is gone; posting that form must not dead-end in a 403 (the login API is authproxy's to
    call): the browser goes to authproxy's sign-in, and signing in there works."""
    options = CONSOLE_OPTIONS.replace('html_marker = "<title>Console login</title>"', 'status = [401]')
    gw = await _gateway(make_gateway, tmp_path, console.url, options)
    client = await _signed_in(gw, client_for, "root", "console-pass")
    console.sessions.clear()
    page = await client.request("GET", "/status", headers=BROWSER)
    assert page.status == 200 and "Console login" in await page.text()   # the app's own page, as it is
    form = await client.request("POST", "/login", data={"user": "root", "password": "console-pass"},
                                headers={**BROWSER, "Origin": client.origin})
    assert form.status == 303, await form.text()
    assert form.headers["Location"].startswith("/_authproxy/login?rd=%2F")
    assert console.logins == 1   # the app's login API never saw the browser's call
    again = await _signed_in(gw, client_for, "root", "console-pass")
    assert "<title>Console</title>" in await (await again.request("GET", "/status", headers=BROWSER)).text()


async def test_an_app_without_logout_gets_its_live_session_back_at_the_next_sign_in(
        make_gateway: MakeGateway, console: FakeConsole, client_for: ClientFor, tmp_path: Path) -> None:
    options = CONSOLE_OPTIONS + 'reuse = true\n\n[sites.options.keepalive]\npath = "/"\n'
    gw = await _gateway(make_gateway, tmp_path, console.url, options)
    client = await _signed_in(gw, client_for, "root", "console-pass")
    assert (await client.request("POST", LOGOUT, headers={"Origin": client.origin})).status in (200, 204)
    assert console.logins == 1 and len(console.sessions) == 1   # no logout call: the session lives on

    # A wrong password opens nothing (and the app says no, as ever).
    assert (await client_for(gw).login("root", "wrong")).status == 401
    again = await _signed_in(gw, client_for, "root", "console-pass")
    assert console.logins == 1                                    # the parked session was taken back
    page = await again.request("GET", "/home", headers=BROWSER)
    assert "<title>Console</title>" in await page.text()

    # Dead on the app's side by the next sign-in: a new one is opened.
    assert (await again.request("POST", LOGOUT, headers={"Origin": again.origin})).status in (200, 204)
    console.sessions.clear()
    await _signed_in(gw, client_for, "root", "console-pass")
    assert console.logins == 2
    await asyncio.sleep(0)
