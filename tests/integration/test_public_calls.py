"""What a signed-out browser may still get from the upstream, and what it gets from authproxy instead.

Technitium answers `api/sso/status` for anyone: its UI asks on the login form (after its own sign-out
too) and shows a red "Unauthorized" banner on any other answer. The adapter declares such calls; they
go upstream without a credential (a token the browser sends is stripped, none is added), while every
other API call still gets authproxy's 401 and page loads the portal. The site's `/favicon.ico` is
authproxy's own icon while no one is signed in (no console error on the portal), the upstream's after.
"""

from __future__ import annotations

import aiohttp

from tests.fakes.technitium import FakeTechnitium
from tests.integration.conftest import BROWSER
from tests.support.gateway import GatewayClient, MakeGateway, gateway_env


async def test_calls_technitium_answers_for_anyone_get_its_answer_without_a_session(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    resp = await client.request("GET", "/api/sso/status", headers={"Authorization": "Bearer forged"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["status"] == "ok" and body["ssoEnabled"] is False
    seen = technitium.requests_to("/api/sso/status")[-1]
    assert "Authorization" not in seen.headers and "token" not in seen.query

    api = await client.request("GET", "/api/zones/list")
    assert api.status == 401 and (await api.json())["error"] == "unauthenticated"
    page = await client.request("GET", "/", headers=BROWSER)
    assert page.status == 302 and "/_authproxy/login" in page.headers["Location"]


async def test_favicon_is_authproxys_until_signed_in_then_the_upstreams(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    icon = await client.request("GET", "/favicon.ico")
    assert icon.status == 200 and icon.content_type == "image/x-icon"
    assert (await icon.read())[:4] == b"\x00\x00\x01\x00"
    assert technitium.requests_to("/favicon.ico") == []
    assert (await client.login("alice", "alice-pass")).status == 200
    await client.request("GET", "/favicon.ico")
    assert len(technitium.requests_to("/favicon.ico")) == 1


async def test_forward_auth_lets_the_calls_technitium_answers_for_anyone_through_without_a_credential(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession) -> None:
    gw = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_PORT="0"))

    async def check(uri: str) -> aiohttp.ClientResponse:
        headers = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "dns.test",
                   "X-Forwarded-Uri": uri, "Accept": "application/json"}
        async with http_client.get(gw.forward_auth_url + "/_authproxy/verify/caddy", headers=headers) as resp:
            await resp.read()
            return resp

    public = await check("/api/sso/status")
    assert public.status == 200 and "Authorization" not in public.headers
    assert (await check("/api/zones/list")).status == 401
