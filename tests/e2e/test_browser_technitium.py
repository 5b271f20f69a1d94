"""Technitium's own web UI through authproxy, in a real browser, with placeholders instead of tokens.

Debian Chromium driven by Python Playwright (never `playwright install`). The upstream is the faithful
fake serving a Technitium-like UI (tests/fakes/technitium_ui), which keeps its token the way the real
UI does (handoff cookie, localStorage, Bearer on every call, single-use tokens for downloads). The
gateway runs with TRUST_PROXY and the browser sends `X-Forwarded-Proto: https`, so the Secure cookies
are kept on http://127.0.0.1 as they would be behind a TLS proxy.

Every flow ends by proving that nothing the page could read -- document.cookie, localStorage, any
response body or header of any page, popups included -- holds a real upstream token (every token the
fake ever minted) or the authproxy session cookie (outside the Set-Cookie that sets it).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Download, Page, Route

from authproxy import keys
from authproxy.sessions.ticket import decode_ticket
from authproxy.upstreams.substitute import session_placeholder
from tests.fakes.server import serving
from tests.fakes.technitium import FakeTechnitium
from tests.support.browser import ARTIFACTS, Watch, page_storage
from tests.support.gateway import Gateway, MakeGateway, MakeTlsGateway, gateway_env
from tests.support.technitium import ALICE, TOTP_SECRET, TOTP_USER

pytestmark = pytest.mark.e2e

UI_DIR = Path(__file__).resolve().parents[1] / "fakes" / "technitium_ui"
ZONES = ["example.com", "home.arpa"]
WAIT_MS = 10_000
HEX64 = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------- fixtures


@pytest.fixture
async def ui_fake() -> AsyncIterator[FakeTechnitium]:
    fake = FakeTechnitium(api_version=15, ui_dir=UI_DIR)
    fake.add_user(*ALICE, display_name="Alice Example")
    fake.add_user(*TOTP_USER, display_name="TOTP User", totp_secret=TOTP_SECRET)
    fake.totp_secret = TOTP_SECRET
    await fake.start()
    try:
        setup_token = fake.create_session(ALICE[0], type="ApiToken", token_name="test-setup")
        async with aiohttp.ClientSession() as http:
            for zone in ZONES:
                async with http.post(f"{fake.url}/api/zones/create", data={"zone": zone},
                                     headers={"Authorization": f"Bearer {setup_token}"}) as resp:
                    assert (await resp.json())["status"] == "ok"
        fake.revoke(setup_token)
        yield fake
    finally:
        await fake.close()


@pytest.fixture
async def ui_gw(make_gateway: MakeGateway, ui_fake: FakeTechnitium) -> Gateway:
    return await make_gateway(gateway_env(ui_fake.url))


# ---------------------------------------------------------------- what the page saw


async def assert_nothing_leaked(watch: Watch, context: BrowserContext, fake: FakeTechnitium) -> None:
    await watch.settle()
    tokens = set(fake.issued_tokens)
    assert tokens, "the fake minted no token: nothing was tested"
    cookies = {c["value"] for c in await context.cookies() if c["name"] == watch.cookie_name}
    session_cookies = watch.cookie_values | cookies
    assert session_cookies, "no authproxy session cookie was ever set"
    secrets = tokens | session_cookies

    for page in context.pages:
        if page.is_closed() or not page.url.startswith("http"):
            continue
        cookie, values = await page_storage(page)
        for secret in secrets:
            assert secret not in cookie, f"document.cookie on {page.url} holds a secret"
            assert all(secret not in v for v in values), f"localStorage on {page.url} holds a secret"

    assert watch.seen
    for url, _status, headers, body in watch.seen:
        for secret in tokens:
            assert secret.encode() not in body, f"a real upstream token in the body of {url}"
        for secret in session_cookies:
            assert secret.encode() not in body, f"the session cookie in the body of {url}"
        for h in headers:
            sets_session = (h["name"].lower() == "set-cookie"
                            and h["value"].startswith(f"{watch.cookie_name}="))
            for secret in tokens if sets_session else secrets:
                assert secret not in h["value"], f"a secret in header {h['name']} of {url}"


def expected_placeholder(gw: Gateway, cookie_value: str) -> str:
    ticket = decode_ticket(cookie_value, gw.app[keys.SESSIONS].keyring)
    assert ticket is not None
    return session_placeholder(ticket.key, gw.config.sites[0].name)


async def session_cookie(context: BrowserContext, gw: Gateway) -> str | None:
    name = gw.app[keys.SESSIONS].cookie_name
    values = [c["value"] for c in await context.cookies() if c["name"] == name]
    return values[0] if values else None


def real_tokens_of(fake: FakeTechnitium, username: str) -> set[str]:
    return {t for t, s in fake.sessions.items() if s.username == username and s.type == "Standard"}


async def portal_sign_in(page: Page, gw: Gateway, username: str, password: str, *,
                         screenshot: str | None = None) -> None:
    """Open the UI's address, get sent to the portal, sign in there, land in the UI with zones shown."""
    await page.goto(gw.url + "/")
    assert "/_authproxy/login" in page.url, page.url
    await page.wait_for_selector("#username")
    if screenshot:
        await page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
    await page.fill("#username", username)
    await page.fill("#password", password)
    await page.click("#submit")
    await page.wait_for_selector("body[data-zones=loaded]", timeout=WAIT_MS)


async def zone_names(page: Page) -> list[str]:
    return await page.locator("#tableZonesBody tr td:first-child").all_inner_texts()


# ---------------------------------------------------------------- flows


async def test_portal_sign_in_lands_in_the_ui_already_signed_in(
        ui_gw: Gateway, ui_fake: FakeTechnitium, context: BrowserContext) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    watch = Watch(context, ui_gw.app[keys.SESSIONS].cookie_name)
    page = await context.new_page()

    await portal_sign_in(page, ui_gw, *ALICE, screenshot="technitium-portal-login.png")

    assert page.url == ui_gw.url + "/"
    assert await page.text_content("#mnuUserDisplayName") == "Alice Example"
    assert await zone_names(page) == ZONES
    await page.screenshot(path=str(ARTIFACTS / "technitium-ui-signed-in.png"), full_page=True)

    # The UI holds this session's placeholder: 64 hex like a real token, but not a real one.
    cookie = await session_cookie(context, ui_gw)
    assert cookie is not None
    stored = await page.evaluate("() => localStorage.getItem('token')")
    assert stored == expected_placeholder(ui_gw, cookie)
    assert HEX64.fullmatch(stored) and stored not in ui_fake.issued_tokens
    # It got it from the one-time handoff cookie (and deleted that), not from an admin/admin try.
    assert ui_watch_handoff(watch) == [302, 200]
    assert "token=" not in (await page_storage(page))[0]
    assert not [r for r in ui_fake.requests_to("/api/user/login") if r.form and r.form.get("user") == "admin"]
    # What reached the upstream was alice's real token, injected by the gateway.
    (real,) = real_tokens_of(ui_fake, "alice")
    zones_call = ui_fake.requests_to("/api/zones/list")[-1]
    assert zones_call.headers["Authorization"] == f"Bearer {real}"

    # A reload keeps working from localStorage (the handoff is not repeated).
    await page.reload()
    await page.wait_for_selector("body[data-zones=loaded]", timeout=WAIT_MS)
    assert ui_watch_handoff(watch) == [302, 200, 200]

    await assert_nothing_leaked(watch, context, ui_fake)


def ui_watch_handoff(watch: Watch) -> list[int]:
    """Statuses of the signed-in UI page loads (`/`): 302 = the handoff that set `token=<placeholder>`."""
    out = []
    for url, status, headers, _ in watch.seen:
        if not re.fullmatch(r"http://127\.0\.0\.1:\d+/", url):
            continue
        location = next((h["value"] for h in headers if h["name"].lower() == "location"), "")
        if "/_authproxy/login" in location:
            continue  # not signed in yet: sent to the portal
        handoff = any(h["name"].lower() == "set-cookie" and h["value"].startswith("token=") for h in headers)
        assert handoff == (status == 302)
        out.append(status)
    return out


async def test_the_uis_own_login_form_with_totp(
        ui_gw: Gateway, ui_fake: FakeTechnitium, context: BrowserContext) -> None:
    watch = Watch(context, ui_gw.app[keys.SESSIONS].cookie_name)
    page = await context.new_page()
    await portal_sign_in(page, ui_gw, *ALICE)
    first_placeholder = await page.evaluate("() => localStorage.getItem('token')")
    (alice_token,) = real_tokens_of(ui_fake, "alice")

    # The UI's logout ends the authproxy session (and alice's upstream session) and shows its login form.
    await page.click("#btnLogout")
    await page.wait_for_selector("body[data-state=login]", timeout=WAIT_MS)
    assert await session_cookie(context, ui_gw) is None
    assert alice_token not in ui_fake.sessions

    # Sign in through the UI's own form: password, then the one-time code.
    await page.fill("#txtUser", TOTP_USER[0])
    await page.fill("#txtPass", TOTP_USER[1])
    await page.click("#btnLogin")
    await page.wait_for_selector("#div2FAOTP:not(.hidden)", timeout=WAIT_MS)
    assert await session_cookie(context, ui_gw) is None
    await page.fill("#txt2FATOTP", ui_fake.totp_now())
    await page.click("#btnLogin")
    await page.wait_for_selector("body[data-zones=loaded]", timeout=WAIT_MS)

    assert await page.text_content("#mnuUserDisplayName") == "TOTP User"
    assert await zone_names(page) == ZONES
    cookie = await session_cookie(context, ui_gw)
    assert cookie is not None
    placeholder = await page.evaluate("() => localStorage.getItem('token')")
    assert placeholder == expected_placeholder(ui_gw, cookie) != first_placeholder
    (real,) = real_tokens_of(ui_fake, "totpuser")
    assert ui_fake.requests_to("/api/zones/list")[-1].headers["Authorization"] == f"Bearer {real}"
    # The login answered in Technitium's envelope: first 2fa-required, then ok.
    assert watch.statuses("/api/user/login") == [200, 200]

    # A reload picks the placeholder up from localStorage: no handoff needed, still signed in.
    await page.reload()
    await page.wait_for_selector("body[data-zones=loaded]", timeout=WAIT_MS)
    assert await page.text_content("#mnuUserDisplayName") == "TOTP User"

    await assert_nothing_leaked(watch, context, ui_fake)


async def test_a_session_ended_elsewhere_brings_up_the_uis_own_login_form(
        ui_gw: Gateway, ui_fake: FakeTechnitium, context: BrowserContext) -> None:
    watch = Watch(context, ui_gw.app[keys.SESSIONS].cookie_name)
    page = await context.new_page()
    await portal_sign_in(page, ui_gw, *ALICE)
    cookie = await session_cookie(context, ui_gw)
    assert cookie is not None
    manager = ui_gw.app[keys.SESSIONS]
    loaded = await manager.load(cookie)
    assert loaded is not None
    await manager.destroy(loaded)              # signed out on another device, or revoked

    # The page still holds its placeholder; its next API call gets Technitium's own "invalid-token"
    # answer, so the UI shows its login form (not "Unable to connect to the server").
    await page.click("#btnBackupSettings")
    await page.wait_for_selector("body[data-state=login]", timeout=WAIT_MS)
    assert "Unable to connect" not in (await page.text_content("#alert") or "")
    assert watch.statuses("/api/user/createSingleUseToken") == [200]

    # And that form signs in through authproxy again.
    await page.fill("#txtUser", ALICE[0])
    await page.fill("#txtPass", ALICE[1])
    await page.click("#btnLogin")
    await page.wait_for_selector("body[data-zones=loaded]", timeout=WAIT_MS)
    assert await zone_names(page) == ZONES
    assert await session_cookie(context, ui_gw) not in (None, cookie)
    await assert_nothing_leaked(watch, context, ui_fake)


async def test_a_download_through_a_single_use_token(
        ui_gw: Gateway, ui_fake: FakeTechnitium, context: BrowserContext) -> None:
    watch = Watch(context, ui_gw.app[keys.SESSIONS].cookie_name)
    downloads: list[Download] = []

    def on_download(download: Download) -> None:
        downloads.append(download)

    context.on("page", lambda p: p.on("download", on_download))
    page = await context.new_page()
    await portal_sign_in(page, ui_gw, *ALICE)
    (real,) = real_tokens_of(ui_fake, "alice")
    minted_before = len(ui_fake.issued_tokens)

    await page.click("#btnBackupSettings")
    for _ in range(WAIT_MS // 50):
        if downloads:
            break
        await asyncio.sleep(0.05)
    assert downloads, "the backup download never started"
    path = await downloads[0].path()
    with zipfile.ZipFile(io.BytesIO(Path(path).read_bytes())) as zf:
        assert "dns.config" in zf.namelist()
    assert downloads[0].suggested_filename.endswith("_backup.zip")

    # The upstream minted a single-use token, but the browser only ever saw a placeholder for it ...
    single_use = ui_fake.issued_tokens[minted_before:]
    assert len(single_use) == 1
    await watch.settle()
    (answer,) = [json.loads(body) for url, _, _, body in watch.seen if url.endswith("/createSingleUseToken")]
    shown = answer["response"]["token"]
    assert HEX64.fullmatch(shown) and shown != single_use[0]
    assert shown != await page.evaluate("() => localStorage.getItem('token')")
    # ... and the download went upstream with the session's own token, the browser's `token` stripped.
    backup = ui_fake.requests_to("/api/settings/backup")[-1]
    assert backup.headers["Authorization"] == f"Bearer {real}"
    assert "token" not in backup.query
    await assert_nothing_leaked(watch, context, ui_fake)


# ---------------------------------------------------------------- another site's page


@pytest.fixture
async def other_site() -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A page on another site (http://localhost:<port>; the gateway is http://127.0.0.1:<port>)."""
    pages: dict[str, str] = {}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=pages.get(request.path, ""), content_type="text/html")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    async with serving(app, "localhost") as url:
        yield url, pages


async def test_another_sites_page_cannot_act_with_the_persons_sign_in(
        ui_gw: Gateway, ui_fake: FakeTechnitium, context: BrowserContext,
        other_site: tuple[str, dict[str, str]]) -> None:
    # Technitium takes every API call as a GET and the Lax cookie rides along on a top-level GET, so
    # without authproxy's cross-site rule this navigation would create the zone as alice.
    evil, pages = other_site
    page = await context.new_page()
    await portal_sign_in(page, ui_gw, *ALICE)
    forged = f"{ui_gw.url}/api/zones/create?zone=forged.example"
    pages["/nav"] = f'<script>location = "{forged}";</script>'
    pages["/post"] = (f'<form method="post" action="{ui_gw.url}/api/zones/create"><input name="zone" '
                      'value="posted.example"></form><script>document.forms[0].submit();</script>')
    pages["/link"] = f'<a id="go" href="{ui_gw.url}/">DNS</a>'
    for name in ("/nav", "/post"):
        async with page.expect_response(
            lambda r: r.url.startswith(ui_gw.url + "/api/zones/create")
        ) as answer:
            await page.goto(evil + name)
        response = await answer.value
        assert response.status == 403, name
        assert "another site" in await response.text()
        assert (await response.request.all_headers()).get("sec-fetch-site") == "cross-site"
    assert "forged.example" not in ui_fake.zones and "posted.example" not in ui_fake.zones
    # A link from another site (a dashboard) still opens the UI, signed in ...
    await page.goto(evil + "/link")
    await page.click("#go")
    await page.wait_for_selector("body[data-zones=loaded]", timeout=WAIT_MS)
    assert await zone_names(page) == ZONES
    # ... and the UI's own call, from its own origin, does what the forged one could not.
    status = await page.evaluate("""async () => (await fetch('api/zones/create?zone=own.example',
        {headers: {Authorization: 'Bearer ' + localStorage.getItem('token')}})).status""")
    assert status == 200 and "own.example" in ui_fake.zones


async def test_a_link_from_outside_the_browser_cannot_use_the_api(
        ui_gw: Gateway, ui_fake: FakeTechnitium, context: BrowserContext) -> None:
    """A link in a mail or a chat (or a typed URL) opens with `Sec-Fetch-Site: none`: not another
    site's page, but nothing shows the UI asked for it either, and the API acts on a GET."""
    page = await context.new_page()
    await portal_sign_in(page, ui_gw, *ALICE)
    response = await page.goto(f"{ui_gw.url}/api/zones/create?zone=mailed.example")
    assert response is not None and response.status == 403
    assert (await response.request.all_headers()).get("sec-fetch-site") == "none"
    assert "mailed.example" not in ui_fake.zones
    # The UI itself, opened the same way, is fine.
    await page.goto(ui_gw.url + "/")
    await page.wait_for_selector("body[data-zones=loaded]", timeout=WAIT_MS)


async def test_a_no_referrer_page_cannot_use_the_api_in_a_browser_without_fetch_metadata(
        make_tls_gateway: MakeTlsGateway, ui_fake: FakeTechnitium, browser: Browser,
        other_site: tuple[str, dict[str, str]]) -> None:
    """A browser without Fetch Metadata (Safari before 16.4), modelled in Chromium: a page on another
    site with `<meta name="referrer" content="no-referrer">` sends the browser to the API.

    Chromium adds `Sec-Fetch-*` below anything a Playwright route can change, so a route re-sends each
    of Chromium's API requests itself (`route.fetch`) without them: Chromium still decides everything
    else (its cookie, `Accept`, `Upgrade-Insecure-Requests`, and no `Referer`/`Origin` under the page's
    policy). The UI's own calls, stripped too, must keep working: they carry the UI's own Origin or
    Referer, which is why the gateway serves real https here (behind the usual test harness the
    browser would see http:// and name that origin).
    """
    gw = await make_tls_gateway(gateway_env(ui_fake.url, TRUST_PROXY="false"))
    context = await browser.new_context(ignore_https_errors=True)
    evil, pages = other_site
    sent: list[dict[str, str]] = []

    async def without_fetch_metadata(route: Route) -> None:
        headers = {k: v for k, v in (await route.request.all_headers()).items()
                   if not k.startswith("sec-fetch-")}
        sent.append(headers)
        await route.fulfill(response=await route.fetch(headers=headers))

    page = await context.new_page()
    await portal_sign_in(page, gw, *ALICE)
    await context.route(gw.url + "/api/**", without_fetch_metadata)
    cookie = await session_cookie(context, gw)
    forged = f"{gw.url}/api/zones/create?zone=forged.example"
    pages["/nav"] = f'<meta name="referrer" content="no-referrer"><script>location = "{forged}";</script>'
    async with page.expect_response(lambda r: r.url.startswith(forged)) as answer:
        await page.goto(evil + "/nav")
    assert (await answer.value).status == 403
    assert "forged.example" not in ui_fake.zones
    [nav] = sent
    assert not {"referer", "origin"} & nav.keys()
    assert "text/html" in nav["accept"] and nav["upgrade-insecure-requests"] == "1"
    assert f"={cookie}" in nav["cookie"]   # the browser did send the sign-in along

    # The UI, in the same browser without Fetch Metadata, lists and creates zones with its own calls.
    await page.goto(gw.url + "/")
    await page.wait_for_selector("body[data-zones=loaded]", timeout=WAIT_MS)
    assert await zone_names(page) == ZONES
    status = await page.evaluate("""async () => (await fetch('api/zones/create?zone=own.example',
        {headers: {Authorization: 'Bearer ' + localStorage.getItem('token')}})).status""")
    assert status == 200 and "own.example" in ui_fake.zones
    assert len(sent) > 2 and not any(k.startswith("sec-fetch-") for h in sent for k in h)
    await context.close()
