"""AUTH_MODE=otp in a real browser (headless Chromium): a protected page sends it to the login page,
"Send me a code" posts the request, the code read from the webhook receiver goes into the code field,
and the browser lands on the page it asked for, served with the site's service credential, which it
never sees."""

from __future__ import annotations

import pytest
from playwright.async_api import BrowserContext

from authproxy import keys
from tests.fakes.technitium import FakeTechnitium
from tests.fakes.webhook import WebhookReceiver
from tests.integration.test_otp import otp_env
from tests.support.browser import Watch
from tests.support.gateway import MakeGateway

pytestmark = pytest.mark.e2e
WAIT_MS = 10_000


async def test_send_me_a_code_then_the_code_lands_on_the_page(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    context: BrowserContext,
) -> None:
    env = otp_env(technitium, webhook_receiver.discord_url)
    gw = await make_gateway(env)
    watch = Watch(context, gw.app[keys.SESSIONS].cookie_name)
    page = await context.new_page()
    await page.goto(gw.url + "/?x=1")
    assert "/_authproxy/login?rd=" in page.url
    await page.click("#send-code")
    await page.wait_for_selector("#notice:not([hidden])", timeout=WAIT_MS)
    assert "OTP sent to Discord webhook" in (await page.text_content("#notice") or "")
    await page.fill("#otp", webhook_receiver.code())
    async with page.expect_navigation(timeout=WAIT_MS):
        await page.click("#submit")
    assert page.url == gw.url + "/?x=1"
    # The page's own script calls the API with the session cookie.
    answer = await page.evaluate("() => fetch('/api/zones/list').then(r => r.json())")
    assert answer["status"] == "ok"
    seen = technitium.requests_to("/api/zones/list")[-1]
    assert seen.headers["Authorization"] == f"Bearer {env['TECHNITIUM_TOKEN']}"
    await watch.settle()
    for _url, _status, headers, body in watch.seen:
        assert env["TECHNITIUM_TOKEN"].encode() not in body
        assert env["TECHNITIUM_TOKEN"] not in str(headers)
