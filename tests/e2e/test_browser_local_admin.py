"""The local-accounts admin page in headless Chromium: the first admin's forced password change, then
users, roles, keys and sessions managed through the page's forms and buttons; no inline script (the
page runs under the portal's CSP, and any violation would show in the console), labelled controls, and
no key secret anywhere in what the browser received."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from playwright.async_api import BrowserContext, ConsoleMessage, Error, Response

from tests.fakes.echo import EchoUpstream
from tests.integration.local_support import API, FIRST, body, local_env, start_local
from tests.support.gateway import Gateway, GatewayClient, MakeGateway

KEY_SECRET = "a2V5LXNlY3JldC1mb3ItdGhlLXBhZ2U="


async def test_admin_page_manages_users_keys_and_sessions(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream, context: BrowserContext) -> None:
    gw = await make_gateway(local_env(echo_upstream.url))
    page = await context.new_page()
    console: list[str] = []
    def noted(msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            console.append(f"{msg.type}: {msg.text}")

    page.on("console", noted)
    bodies: list[str] = []
    grabbing: list[asyncio.Task[None]] = []

    async def grab(response: Response) -> None:
        try:
            bodies.append(await response.text())
        except Error:   # redirects and aborted loads have no body
            pass

    context.on("response", lambda r: grabbing.append(asyncio.ensure_future(grab(r))))

    # Not signed in: the admin page sends the browser to sign in, and back.
    await page.goto(gw.url + "/_authproxy/admin")
    assert "/_authproxy/login" in page.url
    await page.fill("#username", "admin")
    await page.fill("#password", FIRST)
    await page.click("#submit")
    await page.wait_for_url("**/_authproxy/admin")
    # The password must be changed first: the page says so and offers the form.
    await page.wait_for_selector("#error:not([hidden])")
    assert "password" in (await page.text_content("#error") or "").lower()
    await page.fill("#current-password", FIRST)
    await page.fill("#next-password", "the admin's own password")
    await page.click("#change-password button")
    await page.wait_for_selector("body[data-ready='1']")
    assert await page.is_hidden("#change-password")

    # Add a user, make them an editor.
    await page.fill("#new-username", "bob")
    await page.fill("#new-password", "bob-password-123")
    await page.select_option("#new-role", "viewer")
    await page.click("#add-user button")
    row = page.locator("#users tr[data-user='bob']")
    await row.wait_for()
    await row.locator("select").select_option("editor")
    await page.locator("#status", has_text="bob is now editor").wait_for()
    assert await page.locator("#users tr[data-user='bob'] select").input_value() == "editor"

    # Add a key: listed by name, its secret never shown.
    await page.fill("#key-name", "tsig-page")
    await page.fill("#key-algorithm", "hmac-sha256")
    await page.fill("#key-secret", KEY_SECRET)
    await page.click("#add-key button")
    await page.locator("#keys tr[data-key='tsig-page']").wait_for()
    assert KEY_SECRET not in await page.content()

    # Give bob the key: the users table shows it, and so does the API.
    await page.select_option("#grant-user", label="bob")
    await page.get_by_role("checkbox", name="tsig-page").check()
    await page.click("#grant-keys button[type=submit]")
    await page.locator("#status", has_text="Keys of bob saved").wait_for()
    admin_api = client_for(gw)
    assert (await admin_api.login("admin", "the admin's own password")).status == 200
    users = (await body(await admin_api.request("GET", f"{API}/users")))["users"]
    keys_listed = (await body(await admin_api.request("GET", f"{API}/keys")))["keys"]
    assert next(u for u in users if u["username"] == "bob")["allowedKeyIds"] == [keys_listed[0]["id"]]

    # bob signs in elsewhere; the admin sees the session and ends it.
    bob = client_for(gw)
    assert (await bob.login("bob", "bob-password-123")).status == 200
    await page.reload()
    await page.wait_for_selector("body[data-ready='1']")
    session_row = page.locator("#sessions tr[data-user='bob']")
    await session_row.wait_for()
    assert "127.0.0.1" in (await session_row.text_content() or "")
    await session_row.get_by_role("button", name="End the session of bob from 127.0.0.1").click()
    await page.locator("#status", has_text="Session of bob ended").wait_for()
    assert (await body(await bob.request("GET", f"{API}/session")))["authenticated"] is False

    # Accessibility and CSP: every visible control has a label, every script is a file.
    unlabelled = await page.evaluate("""() => [...document.querySelectorAll('input, select')]
        .filter(el => el.type !== 'hidden' && !el.labels.length && !el.getAttribute('aria-label'))
        .map(el => el.id || el.name)""")
    assert unlabelled == []
    assert await page.evaluate("[...document.scripts].every(s => s.src && !s.textContent.trim())")
    assert await page.evaluate("document.querySelectorAll('table caption').length") == 3
    assert not [c for c in console if "Content Security Policy" in c or "Refused" in c], console
    await asyncio.gather(*grabbing)
    assert bodies and all(KEY_SECRET not in b for b in bodies)

    # A viewer gets 403 on the page.
    viewer_page = await (await context.browser.new_context(  # type: ignore[union-attr]
        extra_http_headers={"X-Forwarded-Proto": "https"})).new_page()
    admin = client_for(gw)
    assert (await admin.login("admin", "the admin's own password")).status == 200
    vera = {"username": "vera", "password": "vera-password-12"}
    resp = await admin.request("POST", f"{API}/users", json=vera)
    assert resp.status == 201
    await viewer_page.goto(gw.url + "/_authproxy/login?rd=%2F_authproxy%2Fadmin")
    await viewer_page.fill("#username", "vera")
    await viewer_page.fill("#password", "vera-password-12")
    async with viewer_page.expect_response(lambda r: r.url.endswith("/_authproxy/admin")) as landed:
        await viewer_page.click("#submit")
    assert (await landed.value).status == 403
    assert "admin role" in (await viewer_page.text_content("main") or "")
    await viewer_page.context.close()


async def test_a_reset_password_is_changed_in_the_browser_then_the_page_opens(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream, context: BrowserContext) -> None:
    local = await start_local(make_gateway, client_for, echo_upstream)
    resp = await local.admin.request("POST", f"{API}/users", json={
        "username": "fay", "password": "fay-temporary-pass", "role": "viewer", "mustChangePassword": True})
    assert resp.status == 201
    page = await context.new_page()
    await page.goto(local.gw.url + "/reports/today?x=1")
    assert "/_authproxy/login" in page.url
    assert "authproxy account" in (await page.text_content("main") or "")
    await page.fill("#username", "fay")
    await page.fill("#password", "fay-temporary-pass")
    await page.click("#submit")
    await page.wait_for_url("**/_authproxy/password?rd=*")
    assert [r.raw_path for r in echo_upstream.requests if r.raw_path != "/favicon.ico"] == []
    await page.fill("#current-password", "fay-temporary-pass")
    await page.fill("#next-password", "fay's very own password")
    await page.click("#change-password button")
    await page.wait_for_url("**/reports/today?x=1")
    # (the browser may ask the upstream for /favicon.ico too, once signed in)
    assert "/reports/today?x=1" in [r.raw_path for r in echo_upstream.requests]
