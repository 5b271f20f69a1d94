"""Liveness (the process answers) and readiness (the store and every upstream answer)."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from authproxy import keys
from authproxy.errors import StoreError

READY_TIMEOUT = 2.0


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def _upstream_ok(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=READY_TIMEOUT), allow_redirects=False) as resp:
            return resp.status < 500
    except (aiohttp.ClientError, TimeoutError):
        return False


async def readyz(request: web.Request) -> web.StreamResponse:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(request.app[keys.STORE].ping(), READY_TIMEOUT)
        checks["store"] = "ok"
    except (StoreError, TimeoutError):
        checks["store"] = "unavailable"
    sites = request.app[keys.ROUTER].sites
    results = await asyncio.gather(*(_upstream_ok(request.app[keys.HTTP], s.config.upstream_url + "/") for s in sites))
    for site, ok in zip(sites, results, strict=True):
        checks[f"upstream:{site.name}"] = "ok" if ok else "unavailable"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ok" if ready else "unavailable", "checks": checks},
                             status=200 if ready else 503)


def setup(app: web.Application, prefix: str) -> None:
    app.router.add_get(f"{prefix}/healthz", healthz)
    app.router.add_get(f"{prefix}/readyz", readyz)
