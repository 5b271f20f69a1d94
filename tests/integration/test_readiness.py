"""/_authproxy/readyz is public: one round of upstream checks per READY_CACHE seconds however many ask,
and which check failed only for a trusted peer asking for itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from authproxy.web.health import READY_CACHE
from tests.fakes.technitium import FakeTechnitium
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env

READYZ = "/_authproxy/readyz"


async def ready(url: str, *, source: str = "127.0.0.1", headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    """readyz asked from `source` (a loopback address of this machine), without any forwarded header."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.get(url + READYZ, headers=headers or {}) as resp:
        return resp.status, await resp.json(), resp


async def test_concurrent_readiness_checks_share_one_round_per_interval(
        make_gateway: MakeGateway, technitium: FakeTechnitium) -> None:
    gw = await make_gateway(gateway_env(technitium.url))
    before = len(technitium.requests_to("/"))
    results = await asyncio.gather(*(ready(gw.url) for _ in range(20)))
    assert {status for status, _, _ in results} == {200}
    assert len(technitium.requests_to("/")) == before + 1          # 20 calls, one probe
    for _ in range(10):
        assert (await ready(gw.url))[0] == 200
    assert len(technitium.requests_to("/")) == before + 1          # still the same round
    await asyncio.sleep(READY_CACHE + 0.1)
    assert (await ready(gw.url))[0] == 200
    assert len(technitium.requests_to("/")) == before + 2          # a new round once it is old
    resp = (await ready(gw.url))[2]
    assert resp.headers["Cache-Control"] == "no-store"


async def test_which_check_failed_is_told_only_to_trusted_peers_asking_for_themselves(
        make_gateway: MakeGateway, technitium: FakeTechnitium,
        client_for: Callable[[Gateway], GatewayClient]) -> None:
    gw = await make_gateway(gateway_env(technitium.url, TRUSTED_PROXIES="127.0.0.2/32"))
    checks = {"store": "ok", "upstream:technitium": "ok"}
    assert (await ready(gw.url, source="127.0.0.2"))[:2] == (200, {"status": "ok", "checks": checks})
    assert (await ready(gw.url, source="127.0.0.1"))[:2] == (200, {"status": "ok"})  # not trusted
    for relayed in (
        {"X-Forwarded-For": "203.0.113.9"},
        {"X-Forwarded-Proto": "https"},
        {"Forwarded": "for=x"},
        {"X-Real-IP": "203.0.113.9"},
        {"Via": "1.1 caddy"},
    ):
        # the trusted proxy passing on a client's request: the client sees the status only
        assert (await ready(gw.url, source="127.0.0.2", headers=relayed))[:2] == (200, {"status": "ok"})

    await technitium.close()
    await asyncio.sleep(READY_CACHE + 0.1)
    status, body, _ = await ready(gw.url, source="127.0.0.1")
    assert (status, body) == (503, {"status": "unavailable"})
    status, body, _ = await ready(gw.url, source="127.0.0.2")
    assert status == 503 and body["checks"] == {"store": "ok", "upstream:technitium": "unavailable"}
    c = client_for(gw)
    page = await c.request("GET", READYZ, headers={"Accept": "text/html"})
    assert page.status == 503 and await page.json() == {"status": "unavailable"}
