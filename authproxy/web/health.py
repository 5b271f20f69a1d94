"""Liveness (the process answers) and readiness (the store and every upstream answer).

Readiness is public (a load balancer asks it without a cookie), so it must be cheap whoever calls it
and tell strangers no more than up or down: its result is kept for READY_CACHE seconds and concurrent
calls share one round of checks (every upstream is asked at most once per READY_CACHE, however many
ask), and which check failed is shown only to a peer in TRUSTED_PROXIES (loopback by default) asking
for itself, not on behalf of a client (no X-Forwarded-*, Forwarded, X-Real-IP or Via: a front proxy
relaying anyone's request adds them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from authproxy import keys
from authproxy.errors import StoreError

READY_TIMEOUT = 2.0
READY_CACHE = 2.0
NO_STORE = {"Cache-Control": "no-store"}
_RELAYED = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded", "X-Real-IP", "Via")


@dataclass
class Readiness:
    """The last round of checks, and the round under way (shared by every caller while it runs)."""

    ttl: float = READY_CACHE
    checks: dict[str, str] = field(default_factory=dict)
    checked_at: float | None = None
    running: asyncio.Task[dict[str, str]] | None = None

    async def current(self, app: web.Application) -> dict[str, str]:
        now = asyncio.get_running_loop().time()
        if self.checked_at is not None and now - self.checked_at < self.ttl:
            return self.checks
        if self.running is None:
            self.running = asyncio.create_task(self._check(app))
        # shield: one caller giving up (a probe's timeout) must not cancel the round the others wait for
        return await asyncio.shield(self.running)

    async def _check(self, app: web.Application) -> dict[str, str]:
        try:
            checks = await _checks(app)
            self.checks, self.checked_at = checks, asyncio.get_running_loop().time()
            return checks
        finally:
            self.running = None

    async def close(self) -> None:
        if self.running is not None:
            self.running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.running


READINESS: web.AppKey[Readiness] = web.AppKey("authproxy.readiness", Readiness)


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"}, headers=NO_STORE)


async def _upstream_ok(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(
            url, timeout=aiohttp.ClientTimeout(total=READY_TIMEOUT), allow_redirects=False
        ) as resp:
            return resp.status < 500
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _checks(app: web.Application) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(app[keys.STORE].ping(), READY_TIMEOUT)
        checks["store"] = "ok"
    except (StoreError, TimeoutError):
        checks["store"] = "unavailable"
    sites = app[keys.ROUTER].sites
    http = app[keys.HTTP]
    results = await asyncio.gather(*(_upstream_ok(http, s.config.upstream_url + "/") for s in sites))
    for site, ok in zip(sites, results, strict=True):
        checks[f"upstream:{site.name}"] = "ok" if ok else "unavailable"
    return checks


def _may_see_checks(request: web.Request) -> bool:
    """A trusted peer asking for itself (monitoring), not a front proxy relaying someone's request."""
    return request.app[keys.TRUSTED_PEERS](request) and not any(h in request.headers for h in _RELAYED)


async def readyz(request: web.Request) -> web.StreamResponse:
    checks = await request.app[READINESS].current(request.app)
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, object] = {"status": "ok" if ready else "unavailable"}
    if _may_see_checks(request):
        body["checks"] = checks
    return web.json_response(body, status=200 if ready else 503, headers=NO_STORE)


def setup(app: web.Application, prefix: str) -> None:
    app[READINESS] = Readiness()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[READINESS].close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get(f"{prefix}/healthz", healthz)
    app.router.add_get(f"{prefix}/readyz", readyz)
