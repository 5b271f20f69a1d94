"""Headless Chromium for the browser tests: Debian's `chromium` driven by Python Playwright.

Never `playwright install` (no browser download here). The gateway under test runs with TRUST_PROXY
and the context sends `X-Forwarded-Proto: https`, so the Secure cookies are kept on http://127.0.0.1
as they would be behind a TLS proxy. `Watch` records every response any page received, so a test can
prove no secret reached the browser.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Response, async_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` "
                    "(never `playwright install`: Playwright drives that browser, no browser is downloaded)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(extra_http_headers={"X-Forwarded-Proto": "https"}, accept_downloads=True)
    try:
        yield ctx
    finally:
        await ctx.close()


class Watch:
    """Every response any page of the context received: URL, status, headers and body (read at once)."""

    def __init__(self, context: BrowserContext, cookie_name: str) -> None:
        self.cookie_name = cookie_name
        self.seen: list[tuple[str, int, list[dict[str, str]], bytes]] = []
        self.cookie_values: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        context.on("response", self._on_response)

    def _on_response(self, response: Response) -> None:
        self._tasks.append(asyncio.ensure_future(self._grab(response)))

    async def _grab(self, response: Response) -> None:
        try:
            headers = [{"name": h["name"], "value": h["value"]} for h in await response.headers_array()]
        except Exception:  # noqa: BLE001 - a download popup closes at once; keep what the event carried
            headers = [{"name": k, "value": v} for k, v in response.headers.items()]
        try:
            body = await response.body()
        except Exception:  # noqa: BLE001 - redirects and downloads have no body to read
            body = b""
        for h in headers:
            if h["name"].lower() == "set-cookie" and h["value"].startswith(f"{self.cookie_name}="):
                value = h["value"].split(";", 1)[0].split("=", 1)[1].strip('"')
                if value:  # not the clearing `=""`
                    self.cookie_values.add(value)
        self.seen.append((response.url, response.status, headers, body))

    async def settle(self) -> None:
        while self._tasks:
            tasks, self._tasks = self._tasks, []
            await asyncio.gather(*tasks)

    def statuses(self, path: str) -> list[int]:
        return [status for url, status, _, _ in self.seen if url.split("?", 1)[0].endswith(path)]


async def page_storage(page: Page) -> tuple[str, list[str]]:
    cookie, values = await page.evaluate(
        "() => [document.cookie, Object.keys(localStorage).map(k => localStorage.getItem(k))]")
    return str(cookie), [str(v) for v in values]
