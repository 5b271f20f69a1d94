"""Fail closed with a clear answer, never hang, recover by itself: Redis down, upstream down, health."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from aiohttp import web

from tests.fakes.technitium import FakeTechnitium
from tests.integration.conftest import BROWSER, LOGIN, SESSION
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env
from tests.support.redis_server import RedisServer

HEALTHZ = "/_authproxy/healthz"
READYZ = "/_authproxy/readyz"


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A URL whose TCP connect never completes (listen backlog full), like a firewalled upstream."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for c in fillers:
            c.close()
        server.close()


@pytest.fixture
async def mute_upstream() -> AsyncIterator[str]:
    """Accepts connections and reads requests, but never answers."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await reader.read(65536)
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for w in writers:
            w.close()
        await server.wait_closed()


async def timed(coro: object) -> tuple[float, object]:
    start = time.monotonic()
    result = await coro  # type: ignore[misc]
    return time.monotonic() - start, result


# ---- the session store -------------------------------------------------------------------------------

async def test_redis_down_fails_closed_with_503_and_recovers(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    redis_server_factory: Callable[..., RedisServer],
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    redis = redis_server_factory(appendonly=True)
    gw = await make_gateway(gateway_env(technitium.url, REDIS_URL=redis.url, SESSION_CACHE_TTL="0"))
    c = client_for(gw)
    assert (await c.login("alice", "alice-pass")).status == 200
    redis.stop()

    api = await c.request("GET", "/api/zones/list")
    body = await api.json()
    assert api.status == 503 and body["error"] == "store_unavailable" and api.headers["Retry-After"] == "5"
    assert "redis" not in body["message"].lower() or "://" not in body["message"]
    page = await c.request("GET", "/zones.html", headers=BROWSER)
    text = await page.text()
    assert page.status == 503 and page.content_type == "text/html" and "Temporarily unavailable" in text
    assert "Traceback" not in text
    login = await c.login("alice", "alice-pass")
    assert login.status == 503 and (await login.json())["error"] == "store_unavailable"
    session = await c.request("GET", SESSION)
    assert session.status == 503
    ready = await c.http.get(c.base + READYZ)  # asked directly (monitoring), not through the TLS proxy
    assert ready.status == 503 and (await ready.json())["checks"]["store"] == "unavailable"
    assert (await c.request("GET", HEALTHZ)).status == 200
    assert len(technitium.requests_to("/api/zones/list")) == 0  # nothing went upstream unauthenticated

    redis.start()  # same port, same AOF: the session is still there
    for _ in range(50):
        resp = await c.request("GET", "/api/zones/list")
        if resp.status != 503:
            break
        await asyncio.sleep(0.1)
    assert resp.status == 200, await resp.text()
    for _ in range(50):  # readiness is re-checked READY_CACHE seconds after the last round at the latest
        ready = await c.request("GET", READYZ)
        if ready.status == 200:
            break
        await asyncio.sleep(0.1)
    assert ready.status == 200


async def test_a_hung_redis_answers_503_within_a_second(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    redis_server_factory: Callable[..., RedisServer],
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    """The first request waits the store timeout (0.5 s); the circuit is open after it, so the next
    ones, a sign-in (several store calls) included, get their 503 at once."""
    redis = redis_server_factory()
    gw = await make_gateway(gateway_env(technitium.url, REDIS_URL=redis.url, SESSION_CACHE_TTL="0"))
    c = client_for(gw)
    assert (await c.login("alice", "alice-pass")).status == 200
    assert redis.process is not None
    redis.process._signal_group(redis.process.pid or 0, signal.SIGSTOP)
    try:
        elapsed, resp = await timed(c.request("GET", SESSION))
        assert resp.status == 503  # type: ignore[attr-defined]
        assert elapsed <= 1.0
        elapsed, resp = await timed(c.request("GET", SESSION))
        assert resp.status == 503 and elapsed < 0.2  # type: ignore[attr-defined]
        other = GatewayClient(base=c.base, http=c.http)
        elapsed, resp = await timed(other.login("alice", "alice-pass"))
        assert resp.status == 503 and elapsed < 0.2  # type: ignore[attr-defined]
    finally:
        redis.process._signal_group(redis.process.pid or 0, signal.SIGCONT)
    for _ in range(50):
        resp = await c.request("GET", SESSION)
        if resp.status == 200:
            break
        await asyncio.sleep(0.1)
    assert (await resp.json())["authenticated"] is True  # type: ignore[attr-defined]


# ---- the upstream ------------------------------------------------------------------------------------

async def test_upstream_down_gives_a_clear_502_and_recovers(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    await client.login("alice", "alice-pass")
    port = technitium.port
    await technitium.close()
    elapsed, api = await timed(client.request("GET", "/api/zones/list"))
    assert api.status == 502 and elapsed < 2  # type: ignore[attr-defined]
    body = await api.json()  # type: ignore[attr-defined]
    assert body == {"error": "upstream_unavailable",
                    "message": "technitium is not answering right now; try again in a moment."}
    page = await client.request("GET", "/zones.html", headers=BROWSER)
    assert page.status == 502 and "Upstream unavailable" in await page.text()
    # A login while it is down: a clear 502, and it is not counted as a failed attempt.
    other = GatewayClient(base=client.base, http=client.http)
    for _ in range(6):
        login = await other.login("alice", "alice-pass")
        assert login.status == 502 and (await login.json())["error"] == "upstream_unavailable"
    form = await other.request("POST", LOGIN, data={"username": "alice", "password": "x"}, headers=BROWSER)
    assert form.status == 502 and "not answering" in await form.text()
    ready = await client.http.get(client.base + READYZ)  # asked directly: the checks are shown
    assert ready.status == 503 and (await ready.json())["checks"]["upstream:technitium"] == "unavailable"

    # It comes back on the same port: the session was kept, the person just carries on.
    technitium._runner = None
    technitium._host = "127.0.0.1"
    from aiohttp import web

    technitium._runner = web.AppRunner(technitium.app, access_log=None, shutdown_timeout=0.5)
    await technitium._runner.setup()
    await web.TCPSite(technitium._runner, "127.0.0.1", port).start()
    api = await client.request("GET", "/api/zones/list")
    assert api.status == 200 and (await api.json())["status"] == "ok"
    for _ in range(50):  # readiness is re-checked READY_CACHE seconds after the last round at the latest
        ready = await client.request("GET", READYZ)
        if ready.status == 200:
            break
        await asyncio.sleep(0.1)
    assert ready.status == 200
    assert (await other.login("alice", "alice-pass")).status == 200


async def test_an_unreachable_upstream_answers_within_the_connect_timeout(
        make_gateway: MakeGateway, blackhole: str, client_for: Callable[[Gateway], GatewayClient]) -> None:
    gw = await make_gateway({"AUTH_MODE": "none", "UPSTREAM_URL": blackhole, "UPSTREAM_TYPE": "technitium",
                             "UPSTREAM_SERVICE_TOKEN": "s" * 64, "UPSTREAM_CONNECT_TIMEOUT": "0.5s",
                             "SESSION_SECRET": "z" * 40, "ACCESS_LOG": "false"})
    c = client_for(gw)
    elapsed, resp = await timed(c.request("GET", "/api/zones/list"))
    assert resp.status == 502 and 0.4 < elapsed < 1.5  # type: ignore[attr-defined]
    elapsed, ready = await timed(c.request("GET", READYZ))
    assert ready.status == 503 and elapsed < 2.5  # type: ignore[attr-defined]


async def test_a_mute_upstream_answers_within_the_read_timeout(
    make_gateway: MakeGateway, mute_upstream: str, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    gw = await make_gateway(
        {
            "AUTH_MODE": "none",
            "UPSTREAM_URL": mute_upstream,
            "UPSTREAM_TYPE": "technitium",
            "UPSTREAM_SERVICE_TOKEN": "s" * 64,
            "UPSTREAM_TIMEOUT": "0.5s",
            "SESSION_SECRET": "z" * 40,
            "ACCESS_LOG": "false",
        }
    )
    c = client_for(gw)
    elapsed, resp = await timed(c.request("GET", "/api/zones/list"))
    assert resp.status == 502 and elapsed < 1.5  # type: ignore[attr-defined]


async def test_healthz_and_readyz(client: GatewayClient) -> None:
    health = await client.request("GET", HEALTHZ)
    assert health.status == 200 and await health.json() == {"status": "ok"}
    ready = await client.http.get(client.base + READYZ)  # from a trusted peer, not relayed: every check
    assert ready.status == 200
    assert await ready.json() == {"status": "ok", "checks": {"store": "ok", "upstream:technitium": "ok"}}


async def test_an_upstream_answer_that_breaks_off_mid_body_is_a_502(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient]) -> None:
    """A Technitium /api/ answer is read whole (to check expiry and hide tokens); when the upstream drops
    the connection half-way, the browser gets a clear 502, not a 500 or a cut-off JSON."""
    fake = FakeTechnitium(api_version=15)
    fake.add_user("alice", "alice-pass")

    @web.middleware
    async def broken(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        if request.path != "/api/broken":
            return await handler(request)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 5000
        await response.prepare(request)
        await response.write(b'{"status":"ok","response":{')
        assert request.transport is not None
        request.transport.abort()
        return response

    fake.app.middlewares.append(broken)
    await fake.start()
    try:
        client = client_for(await make_gateway(gateway_env(fake.url)))
        assert (await client.login("alice", "alice-pass")).status == 200
        resp = await client.request("GET", "/api/broken", headers={"Accept": "application/json"})
        assert resp.status == 502 and (await resp.json())["error"] == "upstream_unavailable"
        assert (await client.request("GET", "/api/user/session/get")).status == 200   # still signed in
    finally:
        await fake.close()
