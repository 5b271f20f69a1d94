"""Headless Chromium on a page that speaks /api/current the way TrueNAS's web UI does (login form ->
auth.login_ex with reconnect_token -> dashboard calls -> auth.generate_token), through authproxy's own
TLS: the in-band sign-in is checked against the TrueNAS fake, the read-only person's write is refused
by TrueNAS and shown as such, and no real TrueNAS token reaches the browser (socket frames, HTTP
answers, localStorage)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, WebSocket

from tests.fakes.clock import OffsetClock
from tests.fakes.truenas import FakeTrueNAS
from tests.integration.test_truenas import truenas_env
from tests.support.gateway import MakeTlsGateway

pytestmark = pytest.mark.e2e
WAIT_MS = 10_000


@pytest.fixture
async def nas() -> AsyncIterator[FakeTrueNAS]:
    async with FakeTrueNAS(clock=OffsetClock()) as fake:
        fake.add_user("reader", "reader-pw", roles=["READONLY_ADMIN"])
        fake.add_user("olga", "olga-pw", otp=True)
        yield fake


@pytest.mark.parametrize("who", ["reader", "olga"])
async def test_the_ui_signs_in_in_band_and_never_sees_a_token(
    make_tls_gateway: MakeTlsGateway, nas: FakeTrueNAS, browser: Browser, who: str
) -> None:
    gw = await make_tls_gateway(truenas_env(nas, TRUST_PROXY="false"))
    context = await browser.new_context(ignore_https_errors=True)
    frames: list[str] = []
    bodies: list[bytes] = []

    def on_socket(ws: WebSocket) -> None:
        ws.on("framereceived", lambda payload: frames.append(str(payload)))
        ws.on("framesent", lambda payload: frames.append(str(payload)))

    async def on_response(response: object) -> None:
        with contextlib.suppress(Exception):   # redirects and aborted loads have no body
            bodies.append(await response.body())  # type: ignore[attr-defined]

    try:
        page = await context.new_page()
        page.on("websocket", on_socket)
        page.on("response", on_response)
        await page.goto(gw.url + "/ui/")
        await page.fill("#username", who)
        await page.fill("#password", f"{who}-pw")
        if who == "olga":
            await page.fill("#otp", nas.code_for("olga"))
        await page.click("#submit")
        await page.wait_for_selector("body[data-state=dashboard]", timeout=WAIT_MS)
        dashboard = json.loads(await page.text_content("#dashboard") or "{}")
        stored = await page.evaluate("() => localStorage.getItem('ngx-webstorage|token')")
    finally:
        await context.close()
    expected_write = "EACCES" if who == "reader" else "ok"
    assert dashboard == {"user": who, "host": "fake-nas", "datasets": 1, "write": expected_write}
    assert nas.issued_tokens, "authproxy's own upstream sockets minted tokens"
    seen = "\n".join(frames) + "".join(b.decode("latin-1") for b in bodies) + str(stored)
    for token in nas.issued_tokens:
        assert token not in seen
    assert "provisioning_uri" not in "\n".join(frames)
    assert json.loads(stored)
