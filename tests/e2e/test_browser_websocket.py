"""A real browser's WebSocket through authproxy: Chromium's own client against the bridge.

Browsers are strict about the opening handshake (accept key, subprotocol, extensions) and about
frames, so this is the check that the hand-made 101 and the byte relay are right for the client
that matters. The page is the Technitium-like UI (served through the gateway, so the socket is
same-origin); the upstream is FakeTechnitium with a token-checking WebSocket endpoint. The gateway
serves its own TLS: a handshake's `Origin` is the page's origin as the browser sees it, scheme
included, so the browser must really be on https:// (Chromium sends no Sec-Fetch-* on a socket).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, BrowserContext, async_playwright

from tests.fakes.ws_upstream import SocketUpstream, running_socket_upstream
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.gateway import Gateway, MakeTlsGateway, gateway_env
from tests.support.technitium import ALICE

pytestmark = pytest.mark.e2e

UI_DIR = Path(__file__).resolve().parents[1] / "fakes" / "technitium_ui"
WAIT_MS = 10_000

OPEN_AND_TALK = """async (url) => {
  const ws = new WebSocket(url, ["v1.echo", "v2.echo"]);
  ws.binaryType = "arraybuffer";
  const inbox = [];
  let waiting = null;
  ws.onmessage = (e) => { inbox.push(e.data); if (waiting) { waiting(); waiting = null; } };
  window.wsClosed = new Promise((resolve) => {
    ws.onclose = (e) => resolve({code: e.code, reason: e.reason});
  });
  await new Promise((resolve, reject) => {
    ws.onopen = resolve; ws.onerror = () => reject(new Error("error"));
  });
  const next = () => inbox.length ? Promise.resolve() : new Promise((resolve) => { waiting = resolve; });
  ws.send("héllo");
  await next();
  const text = inbox.shift();
  const blob = new Uint8Array(200000).map((_, i) => i % 251);
  ws.send(blob);
  await next();
  const back = new Uint8Array(inbox.shift());
  window.socket = ws;
  return {protocol: ws.protocol, extensions: ws.extensions, text: text,
          binaryOk: back.length === blob.length && back.every((b, i) => b === blob[i])};
}"""


@pytest.fixture
async def upstream() -> AsyncIterator[SocketUpstream]:
    async with running_socket_upstream(ALICE, ui_dir=UI_DIR) as up:
        yield up


async def https_context(browser: Browser) -> BrowserContext:
    """A context that takes the gateway's self-signed certificate (and sends no X-Forwarded-*)."""
    return await browser.new_context(ignore_https_errors=True)


async def test_chromium_talks_through_the_bridge_and_is_closed_on_logout(
        make_tls_gateway: MakeTlsGateway, upstream: SocketUpstream, browser: Browser) -> None:
    gw: Gateway = await make_tls_gateway(gateway_env(upstream.url, TRUST_PROXY="false"))
    context = await https_context(browser)
    page = await context.new_page()
    await page.goto(gw.url + "/")
    await page.wait_for_selector("#username")
    await page.fill("#username", ALICE[0])
    await page.fill("#password", ALICE[1])
    await page.click("#submit")
    await page.wait_for_selector("body[data-zones=loaded]", timeout=WAIT_MS)

    ws_url = gw.url.replace("https://", "wss://") + "/ws"
    got: dict[str, Any] = await page.evaluate(OPEN_AND_TALK, ws_url)
    assert got == {"protocol": "v2.echo", "extensions": "", "text": "héllo", "binaryOk": True}
    [handshake] = upstream.handshakes
    assert handshake.headers["Authorization"] == f"Bearer {next(iter(upstream.live_tokens()))}"
    assert handshake.headers["Origin"] == upstream.origin

    # The page signs out through the portal API; its socket is closed with 4001 within seconds.
    status = await page.evaluate("""async () => (await fetch("/_authproxy/api/auth/logout",
                                      {method: "POST", headers: {"Accept": "application/json"}})).status""")
    assert status == 200
    closed = await page.evaluate(
        "() => Promise.race([window.wsClosed, new Promise((r) => setTimeout(() => r(null), 5000))])"
    )
    assert closed == {"code": 4001, "reason": "session ended"}


TRY_SOCKET = """async (url) => {
  const ws = new WebSocket(url);
  const opened = await new Promise((resolve) => {
    ws.onopen = () => resolve(true); ws.onerror = () => resolve(false);
  });
  if (!opened) return "refused";
  ws.send("what does the socket say?");
  return await new Promise((resolve) => { ws.onmessage = (e) => resolve("read: " + e.data); });
}"""


async def test_a_plain_http_page_on_the_sites_host_cannot_open_its_socket(
        make_tls_gateway: MakeTlsGateway, upstream: SocketUpstream, caplog: pytest.LogCaptureFixture) -> None:
    """W2: an `http://host` page (a network attacker answering plain HTTP for the host, or any HTTP
    service there) must not open the `wss://host` site's socket: another scheme is another origin.

    Chromium itself keeps the Lax session cookie off a socket opened by the http page (schemeful
    same-site); Firefox and Safari do not, and with AUTH_MODE=none no cookie is needed at all. So the
    gateway runs with AUTH_MODE=none: authproxy's Origin check is all that stands between the page and
    the upstream. The attacker's page is served by a Playwright route on `http://127.0.0.1:<port>`
    (the gateway's own host and port), and Chromium's Local Network Access check is off: it cannot
    know that a page fulfilled by the test came from 127.0.0.1 itself, as the real one would.
    """
    caplog.set_level(logging.INFO, logger="authproxy")
    async with aiohttp.ClientSession() as http, \
            http.post(upstream.url + "/api/user/login", data={"user": ALICE[0], "pass": ALICE[1]}) as resp:
        service_token = (await resp.json())["token"]
    gw = await make_tls_gateway(gateway_env(upstream.url, TRUST_PROXY="false", AUTH_MODE="none",
                                            UPSTREAM_SERVICE_TOKEN=service_token))
    ws_url = gw.url.replace("https://", "wss://") + "/ws"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, "--disable-features=LocalNetworkAccessChecks"]
        )
        try:
            context = await https_context(browser)
            own = await context.new_page()
            await own.goto(gw.url + "/")
            assert await own.evaluate(TRY_SOCKET, ws_url) == "read: what does the socket say?"
            assert upstream.handshakes[0].headers["Authorization"] == f"Bearer {service_token}"

            plain = f"http://127.0.0.1:{gw.port}"
            await context.route(plain + "/**", lambda route: route.fulfill(body="<p>hello</p>",
                                                                           content_type="text/html"))
            page = await context.new_page()
            await page.goto(plain + "/welcome")
            assert await page.evaluate(TRY_SOCKET, ws_url) == "refused"
        finally:
            await browser.close()
    assert len(upstream.handshakes) == 1   # the http page's handshake never reached the upstream
    refusals = [r for r in caplog.records if r.getMessage() == "cross-site request refused"]
    assert len(refusals) == 1   # refused by authproxy's origin rule, not by the browser
