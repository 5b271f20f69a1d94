"""/_authproxy/metrics on the real app and real sockets: where it is served, what it counts, and that no
label ever carries a user name, an address or a path. Parsed with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path

import aiohttp
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from authproxy import keys
from authproxy.metrics import version
from tests.fakes.technitium import FakeTechnitium
from tests.fakes.ws_upstream import running_socket_upstream
from tests.integration.test_forward_auth import proxy_headers
from tests.integration.test_hybrid import background_token
from tests.integration.test_websocket import open_ws, until
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env
from tests.support.redis_server import RedisServer
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
    # METRICS=false: not served on the listener either, and no hooks run.
    gw = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_PORT="0", METRICS="false"))
    assert (await _get(http_client, gw.forward_auth_url + "/_authproxy/metrics"))[0] == 404
    assert keys.METRICS not in gw.app
    await asyncio.sleep(0)


# ---- the dashboard and the README name what is exported ----------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
_PROMQL_STRIP = (r'"[^"]*"', r"\{[^}]*\}", r"\b(by|without)\s*\([^)]*\)", r"\[[^\]]*\]")


def exported_names(text: str) -> tuple[set[str], set[str]]:
    """(every series name a scrape can carry, every family but the `_created` timestamps) from the
    exposition's TYPE lines."""
    names: set[str] = set()
    families: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            if family.endswith("_created"):
                continue
            families.add(family)
            names |= {family + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {family}
    return names, families


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers, groupings
    and ranges are gone, and identifiers that call (functions) or are numbers are dropped."""
    for pattern in _PROMQL_STRIP:
        expr = re.sub(pattern, " ", expr)
    return {m.group(1) for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*+)(?!\s*\()", expr)
            if not re.fullmatch(r"\d.*|e\d+", m.group(1))}


async def test_the_dashboard_and_the_readme_name_only_what_is_exported(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession) -> None:
    gw = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_PORT="0"))
    async with http_client.get(gw.forward_auth_url + "/_authproxy/metrics") as resp:
        text = await resp.text()
    names, families = exported_names(text)
    assert len(families) >= 14, families
    dashboard = json.loads((ROOT / "deploy/grafana/authproxy.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 13
    read: set[str] = set()
    for expr in exprs:
        found = metric_names(expr)
        assert found and found <= names, (expr, found - names)
        read |= found
    # Sign-ins, decisions, latency and errors are all on it.
    for needed in ("authproxy_sign_ins_total", "authproxy_verify_decisions_total",
                   "authproxy_upstream_latency_seconds_bucket", "authproxy_upstream_errors_total",
                   "authproxy_store_errors_total", "authproxy_store_latency_seconds_bucket"):
        assert needed in read, needed
    # The README's "Metrics" section names every family authproxy exports, and none it does not.
    section = README_SECTION.search((ROOT / "README.md").read_text())
    assert section is not None
    documented = {n.removesuffix("_total") for n in re.findall(r"`(authproxy_[a-z_]+)", section.group(0))}
    assert documented == {f.removesuffix("_total") for f in families}


README_SECTION = re.compile(r"^## Metrics\n.*?(?=^## )", re.MULTILINE | re.DOTALL)


def test_metric_names_reads_promql_as_meant() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (op, le) (rate(x_bucket{job=~"$job"}[5m])))') == {
        "x_bucket"}
    assert metric_names("a / clamp_min(b + c, 1e-9)") == {"a", "b", "c"}


# ---- errors, WebSockets, background tokens ---------------------------------------------------------------


async def test_a_store_that_goes_away_is_counted(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession,
        redis_server_factory: Callable[..., RedisServer],
        client_for: Callable[[Gateway], GatewayClient]) -> None:
    redis = redis_server_factory()
    gw = await make_gateway(gateway_env(technitium.url, REDIS_URL=redis.url, SESSION_CACHE_TTL="0",
                                        FORWARD_AUTH_PORT="0"))
    client = client_for(gw)
    assert (await client.login(*ALICE)).status == 200
    redis.stop()
    assert (await client.request("GET", "/api/zones/list")).status == 503
    samples = await scrape(http_client, gw.forward_auth_url)   # the scrape itself still answers
    assert value(samples, "authproxy_store_errors_total", op="get") == 1
    assert value(samples, "authproxy_store_latency_seconds_count", op="get") >= 1
    assert "authproxy_sessions_live" not in {name for name, _ in samples}   # unknown, not 0


async def test_open_websockets_are_a_gauge(
        make_gateway: MakeGateway, http_client: aiohttp.ClientSession,
        client_for: Callable[[Gateway], GatewayClient]) -> None:
    async with running_socket_upstream(ALICE) as upstream:
        gw = await make_gateway(gateway_env(upstream.url, FORWARD_AUTH_PORT="0"))
        client = client_for(gw)
        assert (await client.login(*ALICE)).status == 200
        sockets = [await open_ws(gw, client) for _ in range(2)]
        for ws in sockets:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "hello"
        assert value(await scrape(http_client, gw.forward_auth_url), "authproxy_websockets_open") == 2
        await sockets[0].close()
        await until(lambda: len(gw.app[keys.WEBSOCKETS]) == 1)
        assert value(await scrape(http_client, gw.forward_auth_url), "authproxy_websockets_open") == 1
        await sockets[1].close()


async def test_background_token_state(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession) -> None:
    safe = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_PORT="0", AUTH_MODE="hybrid",
                                          TECHNITIUM_BACKGROUND_TOKEN=background_token(technitium)))
    samples = await scrape(http_client, safe.forward_auth_url)
    assert [(dict(labels)["state"], v) for (name, labels), v in samples.items()
            if name == "authproxy_background_token_state" and v == 1] == [("safe", 1)]
    admin = technitium.create_session("alice", type="ApiToken", token_name="too-much")
    unsafe = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_PORT="0", AUTH_MODE="hybrid",
                                            TECHNITIUM_BACKGROUND_TOKEN=admin))
    samples = await scrape(http_client, unsafe.forward_auth_url)
    assert value(samples, "authproxy_background_token_state", site="technitium", state="unsafe") == 1
    assert value(samples, "authproxy_background_token_state", site="technitium", state="safe") == 0
    none = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_PORT="0"))
    samples = await scrape(http_client, none.forward_auth_url)
    assert not [k for k in samples if k[0] == "authproxy_background_token_state"]
