"""The real qBittorrent 4.5.2 Web UI through authproxy in a real browser.

Sign in once at authproxy's portal with qBittorrent's own account; its own UI then opens already
signed in and renders the torrent list, while its `SID` session cookie stays server-side: the
browser only ever holds authproxy's ticket. Its own "log out" ends the authproxy session and the
upstream one.
"""

from __future__ import annotations

import aiohttp
import pytest
from playwright.async_api import BrowserContext

from authproxy import keys
from tests.support.apps import QBittorrentApp
from tests.support.browser import ARTIFACTS, Watch, page_storage
from tests.support.gateway import Gateway, MakeGateway, gateway_env

pytestmark = pytest.mark.e2e

WAIT_MS = 15_000
MAGNET = "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn=authproxy-browser-test"


@pytest.fixture
async def qbt_gw(make_gateway: MakeGateway, qbittorrent: QBittorrentApp) -> Gateway:
    return await make_gateway(gateway_env(qbittorrent.url, UPSTREAM_TYPE="qbittorrent"))


async def upstream_sid(gw: Gateway, context: BrowserContext) -> str:
    name = gw.app[keys.SESSIONS].cookie_name
    [ticket] = [c["value"] for c in await context.cookies() if c["name"] == name]
    loaded = await gw.app[keys.SESSIONS].load(ticket)
    assert loaded is not None
    return loaded.session.credentials[gw.config.sites[0].name].secret


async def sid_works_at_the_app(app: QBittorrentApp, sid: str) -> bool:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http, http.get(
            app.url + "/api/v2/app/version", headers={"Cookie": f"SID={sid}"}) as resp:
        return resp.status == 200


async def test_portal_sign_in_opens_the_qbittorrent_ui_with_the_torrent_list(
        qbt_gw: Gateway, qbittorrent: QBittorrentApp, context: BrowserContext) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    watch = Watch(context, qbt_gw.app[keys.SESSIONS].cookie_name)
    page = await context.new_page()

    await page.goto(qbt_gw.url + "/")
    assert "/_authproxy/login" in page.url                  # not signed in: authproxy's portal first
    await page.fill("#username", qbittorrent.username)
    await page.fill("#password", qbittorrent.password)
    await page.click("#submit")
    await page.wait_for_url(qbt_gw.url + "/", timeout=WAIT_MS)
    await page.wait_for_selector("#desktop", timeout=WAIT_MS)  # its own UI, not its own login form
    assert "qBittorrent" in await page.title() and await page.locator("#loginform").count() == 0

    # Add a torrent through the UI's own API call (same-origin POST, CSRF-checked), see it listed.
    status = await page.evaluate("""async (magnet) => {
        const body = new FormData(); body.append("urls", magnet); body.append("paused", "true");
        return (await fetch("api/v2/torrents/add", {method: "POST", body})).status; }""", MAGNET)
    assert status == 200
    row = page.locator("#torrentsTableDiv tr", has_text="authproxy-browser-test")
    await row.first.wait_for(timeout=WAIT_MS)
    await page.screenshot(path=str(ARTIFACTS / "qbittorrent-signed-in.png"))

    sid = await upstream_sid(qbt_gw, context)
    assert await sid_works_at_the_app(qbittorrent, sid)
    await watch.settle()
    cookie, storage = await page_storage(page)
    assert sid not in cookie and all(sid not in v for v in storage)
    assert all(c["name"] != "SID" for c in await context.cookies())
    for url, _status, headers, body in watch.seen:
        assert sid.encode() not in body, f"the upstream SID in the body of {url}"
        assert all(sid not in h["value"] for h in headers), f"the upstream SID in a header of {url}"

    # qBittorrent's own "log out" (File menu) ends authproxy's session and the upstream one.
    page.on("dialog", lambda dialog: dialog.accept())        # it asks "Are you sure?"
    await page.click("a:has-text('File')")
    await page.click("#logoutLink")
    await page.wait_for_url("**/_authproxy/login**", timeout=WAIT_MS)
    assert not await sid_works_at_the_app(qbittorrent, sid)
