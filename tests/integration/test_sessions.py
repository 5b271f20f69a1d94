"""How sessions end (idle, absolute, upstream invalid-token, logout), stay alive (heartbeat) and survive
a restart of authproxy (SQLite file store, real Redis)."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from yarl import URL

from authproxy import keys
from authproxy.config.schema import SessionConfig
from authproxy.crypto import Keyring, Secret
from authproxy.sessions.manager import LoadedSession, SessionManager
from authproxy.sessions.model import Credential, Identity
from authproxy.sessions.redis import RedisStore
from authproxy.sessions.sqlite import SQLiteStore
from authproxy.sessions.store import SessionStore
from tests.fakes.technitium import FakeClock, FakeTechnitium
from tests.integration.conftest import BROWSER, HEARTBEAT, LOGOUT, SESSION, Audit
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env


async def authenticated(client: GatewayClient) -> bool:
    resp = await client.request("GET", SESSION)
    return bool((await resp.json())["authenticated"])


async def api_status(client: GatewayClient) -> tuple[int, str | None]:
    resp = await client.request("GET", "/api/zones/list")
    body = await resp.json()
    return resp.status, body.get("error") if resp.status != 200 else body.get("status")


# ---- idle and absolute expiry (real time, small values) --------------------------------------------------

async def test_idle_timeout_ends_a_quiet_session_and_activity_slides_it(
        make_gateway: MakeGateway, technitium: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient],
        audit: Audit) -> None:
    gw = await make_gateway(gateway_env(technitium.url, SESSION_IDLE_TIMEOUT="1s", SESSION_MAX_AGE="1h"))
    busy, quiet = client_for(gw), client_for(gw)
    assert (await busy.login("alice", "alice-pass")).status == 200
    assert (await quiet.login("alice", "alice-pass")).status == 200
    assert await api_status(quiet) == (200, "ok")  # now in the hot cache too
    for _ in range(6):  # 1.8 s of activity, well past the 1 s idle timeout
        await asyncio.sleep(0.3)
        assert await api_status(busy) == (200, "ok")
    assert await api_status(quiet) == (401, "unauthenticated")
    assert not await authenticated(quiet)
    await asyncio.sleep(1.2)
    assert await api_status(busy) == (401, "unauthenticated")
    expiry = audit.lines("expiry")
    assert {(x["user"], x["site"], x["outcome"]) for x in expiry} == {("alice", "technitium", "idle_timeout")}
    assert len(expiry) == 2  # one line per session, not one per stale request


async def test_absolute_lifetime_ends_even_a_busy_session(
        make_gateway: MakeGateway, technitium: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient],
        audit: Audit) -> None:
    gw = await make_gateway(gateway_env(technitium.url, SESSION_IDLE_TIMEOUT="1s", SESSION_MAX_AGE="1.5s"))
    c = client_for(gw)
    resp = await c.login("alice", "alice-pass")
    body = await resp.json()
    assert body["expiresAt"] - time.time() < 1.6
    deadline = time.monotonic() + 1.1
    while time.monotonic() < deadline:
        assert await api_status(c) == (200, "ok")
        assert (await c.request("POST", HEARTBEAT)).status == 200
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.6)
    assert await api_status(c) == (401, "unauthenticated")
    assert (await c.request("POST", HEARTBEAT)).status == 401
    [line] = audit.lines("expiry")
    assert (line["user"], line["outcome"]) == ("alice", "max_age")


# ---- the upstream says the token is dead -----------------------------------------------------------------

async def test_upstream_invalid_token_ends_the_session_for_api_clients(
        client: GatewayClient, technitium: FakeTechnitium, audit: Audit) -> None:
    await client.login("alice", "alice-pass")
    [token] = technitium.sessions
    technitium.revoke(token)
    resp = await client.request("GET", "/api/zones/list")
    assert resp.status == 401
    assert (await resp.json())["error"] == "session_expired"
    assert not await authenticated(client)
    [line] = audit.lines("expiry")
    assert (line["user"], line["site"], line["outcome"]) == ("alice", "technitium", "upstream_invalid")


async def test_upstream_invalid_token_sends_the_browser_to_the_login_page(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    await client.login("alice", "alice-pass")
    technitium.expire_all()  # the upstream's own sliding expiry
    # A page load of the API from the UI's own page (its Referer): one without would be refused.
    resp = await client.request("GET", "/api/dashboard/stats/get?type=LastHour",
                                headers={**BROWSER, "Referer": client.origin + "/"})
    assert resp.status == 302
    location = URL(resp.headers["Location"])
    assert location.path == "/_authproxy/login"
    assert (
        location.query["rd"] == "/api/dashboard/stats/get?type=LastHour" and location.query["expired"] == "1"
    )
    page = await client.request("GET", str(location), headers=BROWSER)
    assert "Your session has ended" in await page.text()
    # The session is gone, so the next navigation goes to the login page too (no loop through upstream).
    calls = len(technitium.requests)
    again = await client.request("GET", "/", headers=BROWSER)
    assert again.status == 302 and len(technitium.requests) == calls


# ---- logout --------------------------------------------------------------------------------------------

async def test_logout_ends_the_upstream_session_and_clears_the_cookie(
        client: GatewayClient, technitium: FakeTechnitium, audit: Audit) -> None:
    await client.login("alice", "alice-pass")
    [token] = technitium.sessions
    old = client.cookie
    resp = await client.request("POST", LOGOUT)
    assert resp.status == 200 and await resp.json() == {"authenticated": False, "loggedOut": True}
    set_cookie = resp.headers["Set-Cookie"]
    assert set_cookie.startswith(('__Host-authproxy=""', "__Host-authproxy=;"))
    assert "Max-Age=0" in set_cookie and "Secure" in set_cookie and "Path=/" in set_cookie
    client.cookie = None  # what a browser does with Max-Age=0
    assert token not in technitium.sessions  # dead at the upstream, not just forgotten here
    [call] = technitium.requests_to("/api/user/logout")
    assert call.headers["Authorization"] == f"Bearer {token}"
    # Replaying the old cookie gets nothing.
    client.cookie = old
    assert await api_status(client) == (401, "unauthenticated")
    [line] = audit.lines("logout")
    assert (line["user"], line["outcome"]) == ("alice", "success")


async def test_form_logout_redirects_to_the_login_page(client: GatewayClient) -> None:
    await client.login("alice", "alice-pass")
    resp = await client.request("POST", LOGOUT, data={}, headers=BROWSER)
    assert resp.status == 303 and resp.headers["Location"] == "/_authproxy/login?logged_out=1"
    assert "Max-Age=0" in resp.headers["Set-Cookie"]
    page = await client.request("GET", resp.headers["Location"], headers=BROWSER)
    assert "You have signed out." in await page.text()


async def test_logout_still_works_when_the_upstream_is_down(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    await client.login("alice", "alice-pass")
    await technitium.close()
    started = time.monotonic()
    resp = await client.request("POST", LOGOUT)
    assert resp.status == 200 and time.monotonic() - started < 5
    assert not await authenticated(client)


async def test_cross_site_logout_is_refused(client: GatewayClient) -> None:
    await client.login("alice", "alice-pass")
    resp = await client.request("POST", LOGOUT, headers={"Origin": "https://evil.example"})
    assert resp.status == 403
    assert await authenticated(client)


async def test_sign_out_everywhere_ends_every_session_of_the_account(
        gw: Gateway, technitium: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient],
        audit: Audit) -> None:
    technitium.add_user("bob", "bob-pass")
    phone, laptop, tablet, bob = (client_for(gw) for _ in range(4))
    for person in (phone, laptop, tablet):
        assert (await person.login("alice", "alice-pass")).status == 200
    assert (await bob.login("bob", "bob-pass")).status == 200
    assert await api_status(laptop) == (200, "ok")  # cached too

    # A plain sign-out ends its own session only.
    assert await (await tablet.request("POST", LOGOUT, json={})).json() == \
        {"authenticated": False, "loggedOut": True}
    assert await authenticated(laptop)
    # Bad input changes nothing: 400, still signed in.
    for body in (
        {"json": {"everywhere": "yes"}},
        {"data": b"{", "headers": {"Content-Type": "application/json"}},
        {"data": {"everywhere": "maybe"}},
    ):
        resp = await phone.request("POST", LOGOUT, **body)
        assert resp.status == 400, body
        assert (await resp.json())["error"] in ("bad_request", "bad_json")
    assert await authenticated(phone) and await authenticated(laptop)

    resp = await phone.request("POST", LOGOUT, json={"everywhere": True})
    assert resp.status == 200
    assert await resp.json() == {"authenticated": False, "loggedOut": True, "otherSessionsEnded": 1}
    assert "Max-Age=0" in resp.headers["Set-Cookie"]
    assert await api_status(laptop) == (401, "unauthenticated")
    assert not await authenticated(laptop)
    assert await api_status(bob) == (200, "ok")
    everywhere = [line for line in audit.lines("logout") if line["outcome"] == "everywhere"]
    assert [(line["user"], line["site"], line["sessions_ended"]) for line in everywhere] == \
        [("alice", "technitium", 1)]
    assert audit.lines("expiry") == []  # ended, not expired


async def test_the_sign_out_page_offers_sign_out_everywhere(
        gw: Gateway, client_for: Callable[[Gateway], GatewayClient]) -> None:
    phone, laptop = client_for(gw), client_for(gw)
    for person in (phone, laptop):
        assert (await person.login("alice", "alice-pass")).status == 200
    page = await (await phone.request("GET", "/_authproxy/logout", headers=BROWSER)).text()
    assert '<button type="submit" name="everywhere" value="1">Sign out everywhere</button>' in page
    resp = await phone.request("POST", LOGOUT, data={"everywhere": "1"}, headers=BROWSER)
    assert resp.status == 303 and resp.headers["Location"] == "/_authproxy/login?logged_out=1"
    assert not await authenticated(laptop)


# ---- heartbeat -----------------------------------------------------------------------------------------

async def test_heartbeat_keeps_the_session_alive(make_gateway: MakeGateway, technitium: FakeTechnitium,
                                                 client_for: Callable[[Gateway], GatewayClient]) -> None:
    gw = await make_gateway(gateway_env(technitium.url, SESSION_IDLE_TIMEOUT="1s"))
    c = client_for(gw)
    anon = await c.request("POST", HEARTBEAT)
    assert anon.status == 401 and (await anon.json())["error"] == "session_expired"
    await c.login("alice", "alice-pass")
    for _ in range(5):
        await asyncio.sleep(0.35)
        resp = await c.request("POST", HEARTBEAT)
        assert resp.status == 200
        body = await resp.json()
        assert body["authenticated"] is True and body["idleExpiresAt"] > time.time() + 0.5
    assert await authenticated(c)


async def test_heartbeat_touches_the_upstream_token_before_it_would_expire(
        client: GatewayClient, gw: Gateway, technitium: FakeTechnitium) -> None:
    await client.login("alice", "alice-pass")
    clock = FakeClock()
    gw.app[keys.SESSIONS].clock = clock  # authproxy's view of time, moved together with the fake's
    # Not due yet: no upstream call.
    before = len(technitium.requests_to("/api/user/session/get"))
    assert (await client.request("POST", HEARTBEAT)).status == 200
    assert len(technitium.requests_to("/api/user/session/get")) == before
    # 20 of the upstream's 30 minutes later, with the person idle in an open tab: keepalive is due.
    for step in (1200, 1200):
        clock.advance(step)
        technitium.advance(step)
        resp = await client.request("POST", HEARTBEAT)
        assert resp.status == 200, await resp.text()
    assert len(technitium.requests_to("/api/user/session/get")) == before + 2
    # 40 minutes after login, the upstream token is still alive because the heartbeat touched it.
    assert await api_status(client) == (200, "ok")


async def test_heartbeat_notices_a_dead_upstream_token(client: GatewayClient, gw: Gateway,
                                                      technitium: FakeTechnitium) -> None:
    await client.login("alice", "alice-pass")
    clock = FakeClock()
    gw.app[keys.SESSIONS].clock = clock
    clock.advance(1000)
    technitium.expire_all()
    resp = await client.request("POST", HEARTBEAT)
    assert resp.status == 401 and (await resp.json())["error"] == "session_expired"
    assert not await authenticated(client)


# ---- restarts ------------------------------------------------------------------------------------------

async def test_sessions_survive_a_restart_with_the_sqlite_store(
        make_gateway: MakeGateway, technitium: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient],
        tmp_path: object) -> None:
    env = gateway_env(technitium.url)
    del env["SESSION_SECRET"]  # the generated secret in the data directory must survive too
    first = await make_gateway(env)
    c = client_for(first)
    assert (await c.login("alice", "alice-pass")).status == 200
    data_dir = first.config.server.data_dir
    secret_file = data_dir / "session_secret"
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(data_dir / "sessions.sqlite3").st_mode) == 0o600
    await first.stop()

    second = await make_gateway(env)
    c2 = client_for(second)
    c2.cookie = c.cookie
    assert await authenticated(c2)
    assert await api_status(c2) == (200, "ok")
    assert (await c2.request("POST", LOGOUT)).status == 200


async def test_sessions_survive_a_restart_with_redis(
        make_gateway: MakeGateway, technitium: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient],
        redis_url: str) -> None:
    env = gateway_env(technitium.url, REDIS_URL=redis_url)
    first = await make_gateway(env)
    c = client_for(first)
    assert (await c.login("alice", "alice-pass")).status == 200
    await first.stop()
    second = await make_gateway(env)
    c2 = client_for(second)
    c2.cookie = c.cookie
    assert await authenticated(c2)
    assert await api_status(c2) == (200, "ok")


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_logout_on_one_replica_ends_the_session_on_the_other_before_it_answers(
        store: str, make_gateway: MakeGateway, technitium: FakeTechnitium,
        client_for: Callable[[Gateway], GatewayClient], request: pytest.FixtureRequest) -> None:
    """Two workers on one SQLite file (one data directory), or two replicas on one Redis; the upstream's
    logout fails, so its token would still work: the very next request on the other one is refused."""
    env = gateway_env(technitium.url)
    if store == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    one, two = client_for(await make_gateway(env)), client_for(await make_gateway(env))
    technitium.logout_fails = True
    await one.login("alice", "alice-pass")
    two.cookie = one.cookie
    assert await api_status(two) == (200, "ok")  # cached on replica two now
    assert (await one.request("POST", LOGOUT)).status == 200
    assert await api_status(two) == (401, "unauthenticated")
    assert len(technitium.sessions) == 1  # not thanks to the upstream


# ---- revocation across workers, at the session manager ------------------------------------------------

def _gated(store_class: type[SessionStore]) -> type[SessionStore]:
    """`store_class` whose next session GET reads the row at once but hands it back only when `gate`
    opens: a logout elsewhere can land between the two."""

    class Gated(store_class):  # type: ignore[valid-type,misc]
        gate: asyncio.Event | None = None
        read = asyncio.Event()

        async def get(self, key: str) -> bytes | None:
            value: bytes | None = await super().get(key)
            gate = self.gate
            if gate is not None and key.startswith("s:"):
                self.gate = None
                self.read.set()
                await gate.wait()
            return value

    return Gated


@pytest.fixture(params=["sqlite", "redis"])
async def workers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[SessionManager]]:
    """Two session managers, each with its own store instance on one SQLite file (an event poll too
    slow to matter) or one Redis; cached copies live 2 s on a fake clock. The second one's store is gated."""
    if request.param == "sqlite":
        path = tmp_path / "sessions.sqlite3"
        stores = [SQLiteStore(path, poll_interval=60.0), _gated(SQLiteStore)(path, poll_interval=60.0)]
    else:
        url = request.getfixturevalue("redis_url")
        stores = [RedisStore(url), _gated(RedisStore)(url)]
    clock = FakeClock(1_000_000.0)
    config = SessionConfig(idle_timeout=600, max_age=3600, cache_ttl=2.0)
    managers = []
    for store in stores:
        await store.start()
        manager = SessionManager(store=store, keyring=Keyring([Secret("k" * 40)]), config=config, clock=clock)
        manager.start()
        managers.append(manager)
    yield managers
    for store in stores:
        await store.close()


async def _sign_in(manager: SessionManager) -> tuple[LoadedSession, str]:
    return await manager.create(user="alice", site="dns", identity=Identity(username="alice"),
                                credential=Credential(secret="upstream-token"), client_ip="192.0.2.1")


async def test_a_logout_or_revocation_is_in_effect_on_every_worker_when_it_returns(
        workers: list[SessionManager]) -> None:
    a, b = workers
    loaded, cookie = await _sign_in(a)
    assert await b.load(cookie) is not None            # cached on b
    await a.destroy(loaded)                             # logout on a
    assert await b.load(cookie) is None                 # no cached copy on b outlives it
    (first, one), (_, two) = await _sign_in(a), await _sign_in(a)
    assert await b.load(one) is not None and await b.load(two) is not None
    assert await a.destroy_everywhere(first) == 2       # sign out everywhere
    assert await b.load(one) is None and await b.load(two) is None


async def test_a_read_under_way_before_a_logout_serves_no_request_that_starts_after_it(
        workers: list[SessionManager]) -> None:
    a, b = workers
    _, cookie = await _sign_in(a)
    assert await b.load(cookie) is not None
    b.clock.advance(3)                                  # type: ignore[attr-defined]  # b's copy is stale
    store = b.store
    store.gate = gate = asyncio.Event()                 # type: ignore[attr-defined]
    before = asyncio.create_task(b.load(cookie))        # a request on b re-reads the session...
    await store.read.wait()                             # type: ignore[attr-defined]  # ...and has read it
    victim = await a.load(cookie)
    assert victim is not None
    await a.destroy(victim)                             # then the logout on a answers
    asyncio.get_running_loop().call_later(0.2, gate.set)
    assert await b.load(cookie) is None                 # a request that starts now must not share that read
    await before                                        # (concurrent with the logout: either answer is fair)
    assert await b.load(cookie) is None


async def test_a_save_after_a_logout_never_brings_the_session_back(
        client: GatewayClient, gw: Gateway) -> None:
    """Heartbeat, keepalive and expiry handling save a copy they loaded before a slow upstream call; a
    logout (or revocation) that lands meanwhile must win."""
    await client.login("alice", "alice-pass")
    manager = gw.app[keys.SESSIONS]
    assert client.cookie is not None
    loaded = await manager.load(client.cookie)
    assert loaded is not None
    cookie = client.cookie
    assert (await client.request("POST", LOGOUT)).status == 200
    assert await manager.save(loaded) is False
    assert await manager.load(cookie) is None
    client.cookie = cookie
    assert not await authenticated(client)


async def test_a_heartbeat_for_a_session_gone_from_the_store_says_so(
    gw: Gateway, client: GatewayClient
) -> None:
    # Another replica's logout whose invalidation this one has not seen yet: the cache still holds the
    # session, but sliding its TTL finds nothing, and the heartbeat must not answer 200.
    await client.login("alice", "alice-pass")
    assert (await client.request("POST", HEARTBEAT)).status == 200
    from authproxy.sessions.ticket import decode_ticket

    assert client.cookie
    ticket = decode_ticket(client.cookie, gw.app[keys.SESSIONS].keyring)
    assert ticket is not None
    await gw.app[keys.STORE].delete(ticket.store_key)          # behind the cache's back
    beat = await client.request("POST", HEARTBEAT)
    assert beat.status == 401 and (await beat.json())["error"] == "session_expired"
    assert not await authenticated(client)
