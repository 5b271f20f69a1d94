"""Two authproxy processes on one Redis (and on a Redis Cluster), the in-process session cache ON (2 s):
what one replica answers about a sign-out, a "sign out everywhere" or a sign-in throttle is already true
on the other when the first has answered. Measured: the other replica is asked right after each answer
and must agree on its very first one (the README quotes the measured gap)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from tests.fakes.technitium import FakeTechnitium
from tests.support.procs import ManagedProcess
from tests.support.redis_server import RedisServer
from tests.support.replicas import COOKIE, FORWARDED, LOGOUT, Replicas
from tests.support.technitium import ALICE


@pytest_asyncio.fixture(params=["redis", "redis-cluster"])
async def pair(process_factory: Callable[..., ManagedProcess], tmp_path: Path, technitium: FakeTechnitium,
               redis_server_factory: Callable[..., RedisServer],
               request: pytest.FixtureRequest) -> AsyncIterator[Replicas]:
    url = (request.getfixturevalue("redis_cluster_url") if request.param == "redis-cluster"
           else redis_server_factory().url)
    r = Replicas(process_factory, tmp_path)
    try:
        await r.start(2, technitium.url, REDIS_URL=url, SESSION_CACHE_TTL="2s",
                      LOGIN_MAX_FAILURES="3")
        yield r
    finally:
        await r.close()


async def test_sign_out_on_one_replica_holds_on_the_other_before_the_answer(pair: Replicas) -> None:
    gaps = []
    for n in range(10):
        status, cookie = await pair.sign_in(n % 2, ALICE)
        assert status == 200 and cookie
        for i in (0, 1, 0, 1):  # both caches hold it
            assert await pair.check(i, cookie) == (200, True)
        assert await pair.sign_out(n % 2, cookie) == 200
        answered = time.monotonic()
        assert await pair.check(1 - n % 2, cookie) == (200, False)   # the first answer already agrees
        gaps.append(time.monotonic() - answered)
    print(f"sign-out agreed on the other replica at its first answer; that answer came "
          f"{max(gaps) * 1000:.1f} ms (max) after the sign-out's")


async def test_sign_out_everywhere_ends_sessions_cached_by_the_other(pair: Replicas) -> None:
    cookies = []
    for i in range(4):
        status, cookie = await pair.sign_in(i % 2, ALICE)
        assert status == 200 and cookie
        cookies.append(cookie)
        assert await pair.check(1 - i % 2, cookie) == (200, True)
    async with pair.client.post(pair.bases[0] + LOGOUT, json={"everywhere": True},
                                headers={**FORWARDED, "Cookie": f"{COOKIE}={cookies[0]}"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["otherSessionsEnded"] == 3
    for cookie in cookies:
        assert await pair.check(1, cookie) == (200, False)


async def test_sign_in_failures_count_across_replicas(pair: Replicas) -> None:
    wrong = (ALICE[0], "not-her-password")
    statuses = [(await pair.sign_in(i % 2, wrong))[0] for i in range(3)]  # A, B, A: 3 failures in all
    assert statuses == [401, 401, 401], statuses
    assert (await pair.sign_in(1, wrong))[0] == 429   # B knows about A's two
    assert (await pair.sign_in(0, ALICE))[0] == 429   # even the right password waits now
