"""The upstream token stays alive exactly as long as the authproxy session does.

Technitium forgets a Standard session `sessionTimeoutSeconds` after its last use (60 s at the
least). Here that is shorter than authproxy's idle timeout and nobody clicks: authproxy must touch
the upstream session itself, and stop once its own session is over. Time is driven by hand: one
FakeClock for the fake Technitium, the session store and the manager, and the keepalive's timers.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest

from authproxy.config.schema import SessionConfig, SiteConfig, ThrottleConfig
from authproxy.crypto import Keyring, Secret
from authproxy.login.keepalive import UpstreamKeepalive
from authproxy.login.passthrough import LoginInput, PassthroughLogin
from authproxy.login.regulation import Regulator
from authproxy.routing import Site
from authproxy.sessions.manager import CHANNEL, LoadedSession, SessionManager
from authproxy.sessions.memory import MemoryStore
from authproxy.upstreams.technitium import TechnitiumAdapter
from tests.fakes.technitium import FakeClock, FakeTechnitium

UPSTREAM_TIMEOUT = 60.0   # the user's Technitium session timeout
IDLE_TIMEOUT = 600.0      # authproxy's


class ManualTimers:
    """loop.call_later, but fired when the test moves the clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.queue: list[tuple[float, int, asyncio.TimerHandle, Callable[[], None]]] = []
        self.seq = itertools.count()

    def __call__(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        handle = asyncio.get_running_loop().call_later(10**6, lambda: None)  # a real, cancellable handle
        heapq.heappush(self.queue, (self.clock() + delay, next(self.seq), handle, callback))
        return handle

    async def advance(self, seconds: float, keepalive: UpstreamKeepalive) -> None:
        end = self.clock() + seconds
        while self.queue and self.queue[0][0] <= end:
            due, _, handle, callback = heapq.heappop(self.queue)
            if handle.cancelled():
                continue
            handle.cancel()
            self.clock.now = max(self.clock.now, due)
            callback()
            while keepalive._tasks:
                await asyncio.sleep(0.01)
        self.clock.now = end


@dataclass
class World:
    clock: FakeClock
    timers: ManualTimers
    fake: FakeTechnitium
    store: MemoryStore
    sessions: SessionManager
    keepalive: UpstreamKeepalive
    login: PassthroughLogin
    site: Site

    async def sign_in(self, user: str, password: str) -> LoadedSession:
        loaded, _ = await self.login.sign_in(self.site, LoginInput(user, password, None), "127.0.0.1")
        return loaded

    def upstream_alive(self, token: str) -> bool:
        session = self.fake.sessions.get(token)
        return session is not None and session.last_seen + UPSTREAM_TIMEOUT >= self.clock()

    def token(self, loaded: LoadedSession) -> str:
        return loaded.session.credentials[self.site.name].secret


@pytest.fixture
async def world() -> AsyncIterator[World]:
    clock = FakeClock()
    fake = FakeTechnitium(clock=clock)
    await fake.start()
    fake.add_user("bob", "bob-pass", session_timeout=int(UPSTREAM_TIMEOUT))
    store = MemoryStore(clock=clock)
    await store.start()
    sessions = SessionManager(store=store, keyring=Keyring([Secret("k" * 40)]),
                              config=SessionConfig(idle_timeout=IDLE_TIMEOUT, cache_ttl=0), clock=clock)
    sessions.start()
    timers = ManualTimers(clock)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        site = Site(
            config=SiteConfig(name="dns", upstream_url=fake.url, type="technitium"),
            adapter=TechnitiumAdapter(SiteConfig(name="dns", upstream_url=fake.url, type="technitium"), http),
        )
        keepalive = UpstreamKeepalive(sessions, lambda name: site.adapter, timer=timers)
        store.subscribe(CHANNEL, keepalive.invalidated)
        login = PassthroughLogin(sessions, Regulator(store, ThrottleConfig()), keepalive)
        yield World(clock, timers, fake, store, sessions, keepalive, login, site)
        await keepalive.close()
    await store.close()
    await fake.close()


async def test_an_idle_person_keeps_the_upstream_session_while_authproxy_keeps_theirs(world: World) -> None:
    loaded = await world.sign_in("bob", "bob-pass")
    token = world.token(loaded)
    assert loaded.session.credentials["dns"].upstream_ttl == UPSTREAM_TIMEOUT   # read from profile/get

    for _ in range(8):                                        # 8 minutes, no request from the person
        await world.timers.advance(UPSTREAM_TIMEOUT, world.keepalive)
        assert world.upstream_alive(token)
    assert len(world.fake.requests_to("/api/user/session/get")) >= 8


async def test_the_keepalive_stops_when_the_authproxy_session_ends(world: World) -> None:
    loaded = await world.sign_in("bob", "bob-pass")
    token = world.token(loaded)
    await world.timers.advance(UPSTREAM_TIMEOUT, world.keepalive)
    assert world.upstream_alive(token)

    await world.store.delete(loaded.store_key)              # as the store's idle TTL would
    touches = len(world.fake.requests_to("/api/user/session/get"))
    await world.timers.advance(3 * UPSTREAM_TIMEOUT, world.keepalive)
    assert len(world.fake.requests_to("/api/user/session/get")) == touches
    assert not world.upstream_alive(token)                  # left to lapse upstream
    assert not world.keepalive._timers


async def test_logout_cancels_at_once(world: World) -> None:
    loaded = await world.sign_in("bob", "bob-pass")
    assert world.keepalive._timers
    await world.sessions.destroy(loaded)                    # publishes on the sessions channel
    while world.keepalive._tasks:
        await asyncio.sleep(0.01)
    assert not world.keepalive._timers


async def test_an_upstream_that_revoked_the_token_ends_that_credential(world: World) -> None:
    loaded = await world.sign_in("bob", "bob-pass")
    world.fake.revoke(world.token(loaded))
    await world.timers.advance(UPSTREAM_TIMEOUT, world.keepalive)
    assert await world.store.get(loaded.store_key) is None  # its only credential: the session ends
    assert not world.keepalive._timers


async def test_no_keepalive_when_the_upstream_outlives_the_idle_timeout(world: World) -> None:
    """Technitium's default 1800 s is longer than a 600 s idle timeout: forwarded requests suffice."""
    world.fake.add_user("carol", "carol-pass", session_timeout=1800)
    await world.sign_in("carol", "carol-pass")
    assert not world.keepalive._timers
