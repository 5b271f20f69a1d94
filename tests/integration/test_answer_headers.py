"""Answer headers: Strict-Transport-Security on HTTPS only, no shared caching of what a credential
fetched, and `Server: authproxy` on every answer (also aiohttp's own 400 for a malformed request)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fakes.technitium import FakeTechnitium
from tests.integration.conftest import BROWSER, HEARTBEAT, LOGIN, ME, SESSION
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, MakeTlsGateway, gateway_env

ClientFor = Callable[[Gateway], GatewayClient]
HSTS = "Strict-Transport-Security"
YEAR = "max-age=31536000"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeTechnitium]:
    """The Technitium fake, plus `/answer?set=Name:value&size=N`: an answer with the headers the test
    names and N bytes of body (over 64 KiB, the proxy streams it instead of sending it in one write)."""
    fake = FakeTechnitium(api_version=15)
    fake.add_user("alice", "alice-pass")

    @web.middleware
    async def answer(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path != "/answer":
            return await handler(request)
        headers = [tuple(item.split(":", 1)) for item in request.query.getall("set", ())]
        response = web.Response(body=b"x" * int(request.query.get("size", "4")), content_type="text/plain")
        for name, value in headers:
            response.headers.add(name.strip(), value.strip())
        return response

    fake.app.middlewares.append(answer)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


async def signed_in(make_gateway: MakeGateway, client_for: ClientFor, fake: FakeTechnitium,
                    **env: str) -> GatewayClient:
    c = client_for(await make_gateway(gateway_env(fake.url, **env)))
    login = await c.login("alice", "alice-pass")
    assert login.status == 200
    assert login.headers["Cache-Control"] == "no-store"   # the answer that carries the session
    return c


# Every kind of answer: authproxy's pages, API, static files, errors, redirects; proxied, whole and streamed.
OWN = [
    ("GET", "/_authproxy/login", {}),
    ("GET", SESSION, {}),
    ("GET", ME, {}),
    ("POST", HEARTBEAT, {}),
    ("GET", "/_authproxy/static/portal.css", {}),
    ("GET", "/_authproxy/healthz", {}),
    ("GET", "/_authproxy/readyz", {}),
    ("GET", "/_authproxy/no-such-thing", {}),
    ("POST", LOGIN, {"json": {"username": "alice"}}),
]
PROXIED = [
    ("GET", "/answer", {}),
    ("GET", "/answer?size=200000", {}),
    ("GET", "/api/zones/list", {}),
]


async def answers(
    c: GatewayClient, steps: list[tuple[str, str, dict[str, Any]]]
) -> list[aiohttp.ClientResponse]:
    out = []
    for method, path, kw in steps:
        resp = await c.request(method, path, **kw)
        await resp.read()
        out.append(resp)
    return out


async def test_https_answers_carry_hsts_and_plain_http_ones_never(
        make_gateway: MakeGateway, client_for: ClientFor, upstream: FakeTechnitium) -> None:
    c = await signed_in(make_gateway, client_for, upstream)  # X-Forwarded-Proto: https from a trusted proxy
    for resp in await answers(c, OWN + PROXIED):
        assert resp.headers.getall(HSTS, []) == [YEAR], (resp.url, resp.status)
    c.cookie = None
    to_login = await c.request("GET", "/zones.html", headers=BROWSER)   # raised as an HTTPFound
    assert to_login.status == 302 and to_login.headers[HSTS] == YEAR

    c.headers = {}   # the same requests over plain http (the proxy says nothing, or http)
    for resp in await answers(c, OWN) + await answers(c, [("GET", "/zones.html", {"headers": BROWSER})]):
        assert HSTS not in resp.headers, (resp.url, resp.status)
    c.headers = {"X-Forwarded-Proto": "http"}
    assert HSTS not in (await c.request("GET", "/_authproxy/login")).headers


async def test_an_untrusted_peer_saying_https_gets_no_hsts(
        make_gateway: MakeGateway, client_for: ClientFor, upstream: FakeTechnitium) -> None:
    c = client_for(await make_gateway(gateway_env(upstream.url, TRUSTED_PROXIES="127.0.0.2/32")))
    for resp in await answers(c, OWN):
        assert HSTS not in resp.headers, (resp.url, resp.status)


@pytest.mark.parametrize(("env", "value"), [
    ({"HSTS_MAX_AGE": "0"}, None),
    ({"HSTS_MAX_AGE": "1d", "HSTS_INCLUDE_SUBDOMAINS": "true"}, "max-age=86400; includeSubDomains"),
])
async def test_hsts_follows_its_settings(
    make_gateway: MakeGateway,
    client_for: ClientFor,
    upstream: FakeTechnitium,
    env: dict[str, str],
    value: str | None,
) -> None:
    c = await signed_in(make_gateway, client_for, upstream, **env)
    for resp in await answers(c, OWN + PROXIED):
        assert resp.headers.getall(HSTS, []) == ([value] if value else []), (resp.url, resp.status)


async def test_authproxy_serving_tls_itself_sends_hsts_but_not_to_forward_auth(
        make_tls_gateway: MakeTlsGateway, upstream: FakeTechnitium) -> None:
    gw = await make_tls_gateway({"UPSTREAM_URL": upstream.url, "UPSTREAM_TYPE": "technitium",
                                 "SESSION_SECRET": "s" * 40, "ACCESS_LOG": "false", "TRUST_PROXY": "true",
                                 "FORWARD_AUTH_SECRET": "f" * 40})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as http:
        async with http.get(gw.url + "/_authproxy/login") as page:
            assert page.status == 200 and page.headers[HSTS] == YEAR
        # /verify answers the front proxy, whose own headers are the public host's: unchanged.
        async with http.get(gw.url + "/_authproxy/verify/caddy", headers={
                "X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "dns.example",
                "X-Forwarded-Uri": "/", "Accept": "text/html", "X-Authproxy-Secret": "f" * 40},
                allow_redirects=False) as verify:
            assert verify.status in (302, 403) and HSTS not in verify.headers


async def test_the_upstreams_hsts_and_server_never_pass(
        make_gateway: MakeGateway, client_for: ClientFor, upstream: FakeTechnitium) -> None:
    c = await signed_in(make_gateway, client_for, upstream)
    path = "/answer?set=Strict-Transport-Security:max-age=5;includeSubDomains;preload&set=Server:Kestrel/9.0"
    for size in ("4", "200000"):
        resp = await c.request("GET", f"{path}&size={size}")
        assert resp.status == 200 and resp.headers.getall(HSTS) == [YEAR]
        assert resp.headers.getall("Server") == ["authproxy"]
        c.headers = {}
        plain = await c.request("GET", f"{path}&size={size}")
        assert (
            plain.status == 200
            and HSTS not in plain.headers
            and plain.headers.getall("Server") == ["authproxy"]
        )
        c.headers = {"X-Forwarded-Proto": "https"}


@pytest.mark.parametrize(("sets", "sent"), [
    ([], "private"),
    (["Cache-Control:public, max-age=600"], "private, max-age=600"),
    (["Cache-Control:s-maxage=60"], "private"),
    (["Cache-Control:no-store"], "no-store"),
    (["Cache-Control:private, max-age=5"], "private, max-age=5"),
    (["Cache-Control:max-age=5", "Cache-Control:public"], "private, max-age=5"),
])
async def test_proxied_answers_are_private_to_the_person(
        make_gateway: MakeGateway, client_for: ClientFor, upstream: FakeTechnitium,
        sets: list[str], sent: str) -> None:
    c = await signed_in(make_gateway, client_for, upstream)
    query = "".join(f"&set={s}" for s in sets)
    for size in ("4", "200000"):
        resp = await c.request("GET", f"/answer?size={size}{query}")
        assert resp.status == 200 and resp.headers.getall("Cache-Control") == [sent]


async def test_every_answer_says_server_authproxy_also_aiohttps_own_400(
        make_gateway: MakeGateway, client_for: ClientFor, upstream: FakeTechnitium) -> None:
    c = await signed_in(make_gateway, client_for, upstream)
    for resp in await answers(c, OWN + PROXIED):
        assert resp.headers.getall("Server") == ["authproxy"], (resp.url, resp.status)
    host, port = c.base.split("://", 1)[1].split(":")
    for raw in (b"GARBAGE\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",   # over MAX_HEADER_SIZE
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        head = (await asyncio.wait_for(reader.read(65536), 5)).split(b"\r\n\r\n", 1)[0].decode("latin-1")
        writer.close()
        assert head.startswith(("HTTP/1.1 400 ", "HTTP/1.0 400 ")), head
        assert "\r\nServer: authproxy\r\n" in head + "\r\n" and "aiohttp" not in head.lower(), head
