"""The cross-site rule of the reverse proxy, header by header, against the real gateway and FakeTechnitium.

Technitium takes every API call as a GET (`/api/zones/create?zone=...` creates the zone), so each case
asks exactly that and then looks at the fake's zones: a refusal must mean the upstream never acted.
The browsers' headers are written out as they send them (Chromium's, Safari's before Fetch Metadata);
tests/e2e/test_browser_technitium.py has real Chromium do the same.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from tests.fakes.technitium import FakeTechnitium
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env

# What a browser sends when it loads a page (Safari: Accept and Upgrade-Insecure-Requests, no Sec-Fetch-*).
PAGE = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "Upgrade-Insecure-Requests": "1"}
CHROMIUM_PAGE = {**PAGE, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-User": "?1"}
_zone = itertools.count()


def own(client: GatewayClient, path: str = "/") -> str:
    return client.origin + path


# (why, headers or a function of the client that gives them, refused?)
CASES = [
    ("curl -b jar (the README's script)", {"Accept": "*/*", "User-Agent": "curl/8.5.0"}, False),
    ("a script's JSON call", {"Accept": "application/json"}, False),
    (
        "a client sending its own Bearer",
        {"Accept": "application/json", "Authorization": "Bearer " + "a" * 64},
        False,
    ),
    ("no header at all", {}, False),
    ("Safari < 16.4 following a link on a no-referrer page", PAGE, True),
    ("only an HTML Accept", {"Accept": PAGE["Accept"]}, True),
    ("only Upgrade-Insecure-Requests", {"Upgrade-Insecure-Requests": "1"}, True),
    ("Chromium opening a link from outside the browser", {**CHROMIUM_PAGE, "Sec-Fetch-Site": "none"}, True),
    ("Chromium navigating from another site", {**CHROMIUM_PAGE, "Sec-Fetch-Site": "cross-site"}, True),
    ("Chromium navigating from a sibling subdomain", {**CHROMIUM_PAGE, "Sec-Fetch-Site": "same-site"}, True),
    ("Chromium: the UI opens a download window", {**CHROMIUM_PAGE, "Sec-Fetch-Site": "same-origin"}, False),
    (
        "Chromium: the UI's fetch",
        {"Accept": "*/*", "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},
        False,
    ),
    ("Safari: the UI's link (its Referer)", lambda c: {**PAGE, "Referer": own(c, "/index.html")}, False),
    ("Safari: the UI's form (its Origin)", lambda c: {**PAGE, "Origin": own(c)}, False),
    (
        "Safari: the UI's XHR",
        lambda c: {
            "Accept": "application/json, text/javascript, */*; q=0.01",
            "X-Requested-With": "XMLHttpRequest",
            "Referer": own(c),
        },
        False,
    ),
    (
        "Safari: a link on the http:// site",
        lambda c: {**PAGE, "Referer": "http://" + c.base.split("://")[1] + "/"},
        True,
    ),
    ("Safari: a link on another site", {**PAGE, "Referer": "https://evil.example/"}, True),
]


@pytest.mark.parametrize(("why", "headers", "refused"), CASES, ids=[c[0] for c in CASES])
async def test_the_api_acts_only_for_scripts_and_its_own_pages(
        gw: Gateway, client: GatewayClient, technitium: FakeTechnitium,
        why: str, headers: object, refused: bool) -> None:
    assert (await client.login("alice", "alice-pass")).status == 200
    sent = headers(client) if callable(headers) else headers
    zone = f"z{next(_zone)}.example"
    resp = await client.request("GET", f"/api/zones/create?zone={zone}", headers=sent)
    body = await resp.text()
    if refused:
        assert resp.status == 403, body
        assert "cross_site" in body or "another site" in body
        assert zone not in technitium.zones
        assert technitium.requests_to("/api/zones/create") == []
    else:
        assert resp.status == 200, body
        assert zone in technitium.zones


async def test_a_page_load_outside_the_api_is_no_refusal(gw: Gateway, client: GatewayClient) -> None:
    """Only the API is guarded: a bookmark or a link (any referrer policy) still opens the UI."""
    assert (await client.login("alice", "alice-pass")).status == 200
    for headers in (PAGE, {**CHROMIUM_PAGE, "Sec-Fetch-Site": "none"}, {**PAGE, "Referer": "https://dash.example/"}):
        resp = await client.request("GET", "/", headers=headers)
        assert resp.status in (200, 302), (headers, resp.status)   # 302: the UI's one-time token handoff


async def test_in_auth_mode_none_a_page_load_cannot_use_the_service_token(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        technitium: FakeTechnitium) -> None:
    """AUTH_MODE=none needs no cookie at all: only this rule stands between a link and the API."""
    service = technitium.create_session("alice", type="ApiToken", token_name="service")
    gw = await make_gateway(gateway_env(technitium.url, AUTH_MODE="none", UPSTREAM_SERVICE_TOKEN=service))
    client = client_for(gw)
    refused = await client.request("GET", "/api/zones/create?zone=linked.example", headers=PAGE)
    assert refused.status == 403 and "linked.example" not in technitium.zones
    script = await client.request("GET", "/api/zones/create?zone=scripted.example", headers={"Accept": "*/*"})
    assert script.status == 200 and "scripted.example" in technitium.zones


async def test_the_uis_own_sign_in_and_sign_out_refuse_a_page_load(
        gw: Gateway, client: GatewayClient, technitium: FakeTechnitium) -> None:
    """authproxy answers Technitium's api/user/login and logout itself; Technitium takes them as GETs,
    so a link could sign the person in as someone else (login CSRF) or out."""
    login = "/api/user/login?user=alice&pass=alice-pass"
    for headers in (PAGE, {**CHROMIUM_PAGE, "Sec-Fetch-Site": "none"}):
        resp = await client.request("GET", login, headers=headers)
        assert (await resp.json())["status"] == "error"
        assert client.cookie is None and not technitium.sessions
    # The UI's own call signs in ...
    resp = await client.request("GET", login, headers={"Accept": "*/*", "Sec-Fetch-Site": "same-origin",
                                                       "Sec-Fetch-Mode": "cors"})
    assert (await resp.json())["status"] == "ok" and client.cookie
    # ... a link cannot sign out ...
    resp = await client.request("GET", "/api/user/logout", headers=PAGE)
    assert (await resp.json())["status"] == "error"
    assert (await client.request("GET", "/_authproxy/api/auth/session")).status == 200
    # ... the UI's own call can.
    resp = await client.request("GET", "/api/user/logout", headers={"Referer": own(client, "/")})
    assert (await resp.json())["status"] == "ok"


async def test_origins_are_compared_with_the_default_port_dropped(
        gw: Gateway, client: GatewayClient, technitium: FakeTechnitium) -> None:
    """A proxy may name the host with its port (`X-Forwarded-Host: dns.example.com:443`); the browser's
    Origin never has the default port. Same origin all the same; another port or scheme is not."""
    assert (await client.login("alice", "alice-pass")).status == 200

    async def create(zone: str, host: str, **headers: str) -> int:
        resp = await client.request("POST", f"/api/zones/create?zone={zone}",
                                    headers={"X-Forwarded-Host": host, **headers})
        return resp.status

    assert await create("a.example", "dns.example.com:443", Origin="https://dns.example.com") == 200
    assert await create("b.example", "dns.example.com", Origin="https://dns.example.com:443") == 200
    assert await create("c.example", "dns.example.com:443", Referer="https://dns.example.com/zones") == 200
    assert await create("d.example", "dns.example.com", Origin="http://dns.example.com") == 403
    assert await create("e.example", "dns.example.com:443", Origin="http://dns.example.com:443") == 403
    assert await create("f.example", "dns.example.com", Origin="https://dns.example.com:8443") == 403
    assert sorted(z for z in technitium.zones if z.endswith(".example")) == [
        "a.example",
        "b.example",
        "c.example",
    ]
