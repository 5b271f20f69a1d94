"""A real browser's WebSocket through authproxy: Chromium's own client against the bridge.

Browsers are strict about the opening handshake (accept key, subprotocol, extensions) and about
frames, so this is the check that the hand-made 101 and the byte relay are right for the client
that matters. The page is the Technitium-like UI (served through the gateway, so the socket is
same-origin); the upstream is FakeTechnitium with a token-checking WebSocket endpoint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import BrowserContext

from tests.fakes.ws_upstream import SocketUpstream, running_socket_upstream
from tests.support.gateway import Gateway, MakeGateway, gateway_env
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
  window.wsClosed = new Promise((resolve) => { ws.onclose = (e) => resolve({code: e.code, reason: e.reason}); });
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error("error")); });
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


async def test_chromium_talks_through_the_bridge_and_is_closed_on_logout(
        make_gateway: MakeGateway, upstream: SocketUpstream, context: BrowserContext) -> None:
    gw: Gateway = await make_gateway(gateway_env(upstream.url))
    page = await context.new_page()
    await page.goto(gw.url + "/")
    await page.wait_for_selector("#username")
    await page.fill("#username", ALICE[0])
    await page.fill("#password", ALICE[1])
    await page.click("#submit")
    await page.wait_for_selector("body[data-zones=loaded]", timeout=WAIT_MS)

    ws_url = gw.url.replace("http://", "ws://") + "/ws"
    got: dict[str, Any] = await page.evaluate(OPEN_AND_TALK, ws_url)
    assert got == {"protocol": "v2.echo", "extensions": "", "text": "héllo", "binaryOk": True}
    [handshake] = upstream.handshakes
    assert handshake.headers["Authorization"] == f"Bearer {next(iter(upstream.live_tokens()))}"
    assert handshake.headers["Origin"] == upstream.origin

    # The page signs out through the portal API; its socket is closed with 4001 within seconds.
    status = await page.evaluate("""async () => (await fetch("/_authproxy/api/auth/logout",
                                      {method: "POST", headers: {"Accept": "application/json"}})).status""")
    assert status == 200
    closed = await page.evaluate("() => Promise.race([window.wsClosed, new Promise((r) => setTimeout(() => r(null), 5000))])")
    assert closed == {"code": 4001, "reason": "session ended"}
