"""/_authproxy/metrics on the real app and real sockets: where it is served, what it counts, and that no
label ever carries a user name, an address or a path. Parsed with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from authproxy.metrics import version
from tests.fakes.technitium import FakeTechnitium
from tests.integration.test_forward_auth import proxy_headers
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env
from tests.support.technitium import ALICE

FA_SECRET = "forward-auth-secret-" + "m" * 40
HEADER = "X-Authproxy-Secret"
ORIGINAL = "https://dns.example.com/api/zones/list"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def scrape(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> Samples:
    async with http.get(url + "/_authproxy/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    assert "alice" not in text and "zones" not in text and "127.0.0.1" not in text
    return parse(text)


async def _get(http: aiohttp.ClientSession, url: str, headers: object = None) -> tuple[int, bytes]:
    async with http.get(url, headers=headers, allow_redirects=False) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.read()


async def test_counts_sign_ins_decisions_proxying_store_and_cache(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession,
        client_for: Callable[[Gateway], GatewayClient]) -> None:
    gw = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_PORT="0", LOGIN_MAX_FAILURES="2"))
    fa = gw.forward_auth_url
    before = await scrape(http_client, fa)
    assert value(before, "authproxy_build_info", version=version(),
                 python=__import__("platform").python_version()) == 1
    assert value(before, "authproxy_sessions_live") == 0
    client = client_for(gw)
    assert (await client.login(ALICE[0], "wrong")).status == 401
    assert (await client.login(ALICE[0], "wrong")).status == 401
    assert (await client.login(ALICE[0], "wrong")).status == 429
    assert (await client_for(gw).login("mallory", "x")).status == 429   # so is the client's network
    # Verify: asked to sign in without a session; a malformed description of the request refused.
    status, _ = await _get(http_client, fa + "/_authproxy/verify/caddy",
                           CIMultiDict([*proxy_headers("caddy", ORIGINAL)]))
    assert status == 401
    status, _ = await _get(http_client, fa + "/_authproxy/verify/nginx",
                           CIMultiDict([*proxy_headers("nginx", ORIGINAL)]))
    assert status == 401
    status, _ = await _get(http_client, fa + "/_authproxy/verify/caddy",
                           CIMultiDict([*proxy_headers("caddy", "https://dns.example.com/bad path")]))
    assert status == 400
    after = await scrape(http_client, fa)
    assert value(after, "authproxy_sign_ins_total", site="technitium", outcome="failure") == 2
    assert value(after, "authproxy_sign_ins_total", site="technitium", outcome="throttled") == 2
    assert value(after, "authproxy_sign_ins_throttled_total", site="technitium") == 2
    assert value(after, "authproxy_sign_ins_total", site="technitium", outcome="success") == 0
    assert value(after, "authproxy_verify_decisions_total", proxy="caddy", outcome="sign_in") == 1
    assert value(after, "authproxy_verify_decisions_total", proxy="nginx", outcome="sign_in") == 1
    assert value(after, "authproxy_verify_decisions_total", proxy="caddy", outcome="bad_request") == 1
    assert total(after, "authproxy_store_latency_seconds_count") > 0
    assert value(after, "authproxy_store_errors_total", op="get") == 0


async def test_a_session_is_counted_through_proxy_verify_and_cache(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession,
        client_for: Callable[[Gateway], GatewayClient]) -> None:
    gw = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_PORT="0"))
    fa = gw.forward_auth_url
    client = client_for(gw)
    assert (await client.login(*ALICE)).status == 200
    for _ in range(3):
        resp = await client.request("GET", "/api/zones/list")
        await resp.read()
        assert resp.status == 200
    headers = CIMultiDict([*proxy_headers("caddy", ORIGINAL),
                           ("Cookie", f"__Host-authproxy={client.cookie}")])
    for _ in range(4):
        assert (await _get(http_client, fa + "/_authproxy/verify/caddy", headers))[0] == 200
    samples = await scrape(http_client, fa)
    assert value(samples, "authproxy_sign_ins_total", site="technitium", outcome="success") == 1
    assert value(samples, "authproxy_proxied_requests_total", site="technitium", code="2xx") == 3
    assert value(samples, "authproxy_upstream_latency_seconds_count", site="technitium") == 3
    assert value(samples, "authproxy_verify_decisions_total", proxy="caddy", outcome="allow") == 4
    hits = value(samples, "authproxy_session_cache_hits_total")
    misses = value(samples, "authproxy_session_cache_misses_total")
    assert hits + misses == 7 and hits >= 5, (hits, misses)
    assert value(samples, "authproxy_sessions_live") == 1
    assert value(samples, "authproxy_websockets_open") == 0
    assert value(samples, "authproxy_store_latency_seconds_count", op="set") >= 1


async def test_an_upstream_that_does_not_answer_is_counted(
        make_gateway: MakeGateway, http_client: aiohttp.ClientSession,
        client_for: Callable[[Gateway], GatewayClient]) -> None:
    gw = await make_gateway(gateway_env("http://127.0.0.1:9", FORWARD_AUTH_PORT="0", AUTH_MODE="none",
                                        UPSTREAM_SERVICE_TOKEN="t" * 64))
    client = client_for(gw)
    resp = await client.request("GET", "/api/zones/list")
    assert resp.status == 502
    samples = await scrape(http_client, gw.forward_auth_url)
    assert value(samples, "authproxy_upstream_errors_total", site="technitium", kind="unreachable") == 1
    assert value(samples, "authproxy_proxied_requests_total", site="technitium", code="5xx") == 0


async def test_served_only_where_verify_is(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession) -> None:
    json_accept = {"Accept": "application/json"}
    # The forward-auth listener: served there; the public listener answers 404 like any unknown endpoint.
    gw = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_PORT="0"))
    unknown = await _get(http_client, gw.url + "/_authproxy/no-such-endpoint", json_accept)
    assert unknown[0] == 404
    assert await _get(http_client, gw.url + "/_authproxy/metrics", json_accept) == unknown
    assert await _get(http_client, gw.url + "/_authproxy/metrics",
                      {**json_accept, HEADER: FA_SECRET}) == unknown
    await scrape(http_client, gw.forward_auth_url)
    # The shared secret on the public listener: only with it (a browser gets the 404).
    gw = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_SECRET=FA_SECRET))
    unknown = await _get(http_client, gw.url + "/_authproxy/no-such-endpoint", json_accept)
    for wrong in ({}, {HEADER: "nope"}, {HEADER: FA_SECRET[:-1]}):
        assert await _get(http_client, gw.url + "/_authproxy/metrics", {**json_accept, **wrong}) == unknown
    samples = await scrape(http_client, gw.url, {HEADER: FA_SECRET})
    assert value(samples, "authproxy_sessions_live") == 0
    # The listener with a secret as well: the secret is asked there too.
    gw = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_PORT="0", FORWARD_AUTH_SECRET=FA_SECRET))
    assert (await _get(http_client, gw.forward_auth_url + "/_authproxy/metrics"))[0] == 404
    await scrape(http_client, gw.forward_auth_url, {HEADER: FA_SECRET})
    # Neither: not served anywhere.
    gw = await make_gateway(gateway_env(technitium.url))
    unknown = await _get(http_client, gw.url + "/_authproxy/no-such-endpoint", json_accept)
    assert await _get(http_client, gw.url + "/_authproxy/metrics", json_accept) == unknown
    await asyncio.sleep(0)
