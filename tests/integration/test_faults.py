"""Faults under steady load, measured, on real processes: Redis killed / hung / restarted, the network to
Redis slowed or silent (a TCP relay), authproxy killed with SIGKILL (SQLite and Redis, 1 and 2 workers),
the upstream hung and gone. For each: how long until authproxy fails closed, what it answers, how long
until it serves again once the fault is healed, and how many acknowledged sessions were lost.

Every row asserts what must hold (no 500, no 200 for a session it could not check, no session lost with
persistence on) and bounds the times; the measured table is printed at the end of the module (run with
-s) and copied into the README ("What happens when things fail").
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from tests.fakes.technitium import FakeTechnitium
from tests.support.procs import ManagedProcess
from tests.support.redis_server import RedisServer
from tests.support.relay import TcpRelay
from tests.support.replicas import COOKIE, FORWARDED, Replicas
from tests.support.technitium import ALICE

Outcome = int | str  # an HTTP status, or "refused" / "timeout" / "error" when none came
Probe = Callable[[int, str], Awaitable[tuple[Outcome, bool | None]]]


@dataclass
class Row:
    fault: str
    setup: str
    fail_closed: float | None = None
    answers: set[Outcome] = field(default_factory=set)
    recovered: float | None = None
    lost: int = 0
    sessions: int = 0

    def markdown(self) -> str:
        def secs(value: float | None) -> str:
            return "—" if value is None else f"{value:.2f} s"
        answers = ", ".join(str(a) for a in sorted(self.answers, key=str))
        return (f"| {self.fault} | {self.setup} | {secs(self.fail_closed)} | {answers} | "
                f"{secs(self.recovered)} | {self.lost} of {self.sessions} |")


ROWS: list[Row] = []


@pytest.fixture(scope="module", autouse=True)
def table() -> Iterator[None]:
    yield
    if ROWS:
        print("\n| fault | setup | fails closed after | answers during the fault | serves again after the "
              "fix | sessions lost |\n|---|---|---|---|---|---|")
        print("\n".join(row.markdown() for row in ROWS))


@pytest_asyncio.fixture
async def replicas(process_factory: Callable[..., ManagedProcess], tmp_path: Path) -> AsyncIterator[Replicas]:
    r = Replicas(process_factory, tmp_path)
    try:
        yield r
    finally:
        await r.close()


async def _session_probe(replicas: Replicas, i: int, cookie: str) -> tuple[Outcome, bool | None]:
    try:
        return await replicas.check(i, cookie)
    except aiohttp.ClientConnectionError:
        return "refused", None
    except TimeoutError:
        return "timeout", None


async def measure(row: Row, replicas: Replicas, cookies: list[str], inject: Callable[[], Awaitable[None]],
                  heal: Callable[[], Awaitable[None]], *, probe: Probe | None = None, hold: float = 0.5,
                  fails: bool = True) -> list[tuple[float, Outcome, bool | None]]:
    """Load (4 checkers) for 0.3 s, inject, wait for the first failure (when `fails`), hold the fault
    `hold` s, heal, wait for 0.6 s of nothing but 200, then count the sessions that no longer check out."""
    ask = probe or (lambda i, c: _session_probe(replicas, i, c))
    log: list[tuple[float, Outcome, bool | None]] = []
    stop = asyncio.Event()
    n = len(replicas.procs)

    async def checker(k: int) -> None:
        for j in itertools.count(k):
            if stop.is_set():
                return
            outcome, authenticated = await ask(j % n, cookies[j % len(cookies)])
            log.append((time.monotonic(), outcome, authenticated))
            if outcome == "refused":
                await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(checker(k)) for k in range(4)]
    try:
        await asyncio.sleep(0.3)
        t_fault = time.monotonic()
        await inject()
        deadline = t_fault + 5
        while fails and time.monotonic() < deadline and not any(t > t_fault and o != 200 for t, o, _ in log):
            await asyncio.sleep(0.01)
        first_bad = min((t for t, o, _ in log if t > t_fault and o != 200), default=None)
        row.fail_closed = None if first_bad is None else first_bad - t_fault
        await asyncio.sleep(hold)
        t_heal = time.monotonic()
        await heal()
        deadline = t_heal + 15
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            last_bad = max((t for t, o, _ in log if o != 200), default=0.0)
            if time.monotonic() - max(last_bad, t_heal) > 0.6:
                break
        last_bad = max((t for t, o, _ in log if o != 200), default=t_heal)
        good_after = min((t for t, o, _ in log if t > max(last_bad, t_heal) and o == 200), default=None)
        row.recovered = None if good_after is None else max(0.0, good_after - t_heal)
        row.answers = {o for t, o, _ in log if t_fault < t < t_heal + (row.recovered or 0)} - {200} or {200}
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    row.sessions = len(cookies)
    row.lost = sum([await _session_probe(replicas, 0, c) != (200, True) for c in cookies])
    ROWS.append(row)
    assert 500 not in {o for _, o, _ in log}, row
    assert all(a is True for _, o, a in log if o == 200), f"a live session was answered signed out: {row}"
    assert row.recovered is not None and row.recovered < 10, row
    assert row.lost == 0, row
    return log


async def _signed_in(replicas: Replicas, count: int) -> list[str]:
    cookies = []
    for i in range(count):
        status, cookie = await replicas.sign_in(i % len(replicas.procs), ALICE)
        assert status == 200 and cookie, status
        cookies.append(cookie)
    return cookies


async def test_redis_faults(redis_server_factory: Callable[..., RedisServer], technitium: FakeTechnitium,
                            replicas: Replicas) -> None:
    redis = redis_server_factory(appendonly=True)
    relay = await TcpRelay(redis.host, redis.port).start()
    try:
        await replicas.start(2, technitium.url, REDIS_URL=f"redis://127.0.0.1:{relay.port}/0",
                             SESSION_CACHE_TTL="0")
        cookies = await _signed_in(replicas, 8)
        assert redis.process is not None
        setup = "Redis (AOF), 2 replicas, cache off"

        async def kill() -> None:
            assert redis.process is not None
            redis.process.signal(signal.SIGKILL)

        async def start() -> None:
            await asyncio.to_thread(redis.start)

        async def stop() -> None:
            await asyncio.to_thread(redis.stop)

        async def hang() -> None:
            assert redis.process is not None
            redis.process.signal(signal.SIGSTOP)

        async def resume() -> None:
            assert redis.process is not None
            redis.process.signal(signal.SIGCONT)

        async def slow() -> None:
            relay.delay = 0.1

        async def slower() -> None:
            relay.delay = 1.0

        async def fast() -> None:
            relay.delay = 0.0

        async def silent() -> None:
            relay.hang()

        async def flowing() -> None:
            relay.flow()

        await measure(Row("Redis killed (SIGKILL), then started", setup), replicas, cookies, kill, start)
        row = Row("Redis hung (SIGSTOP), then SIGCONT", setup)
        await measure(row, replicas, cookies, hang, resume)
        assert row.fail_closed is not None and row.fail_closed <= 1.0, row
        await measure(Row("Redis restarted (SIGTERM, start)", setup), replicas, cookies, stop, start)
        row = Row("network to Redis +100 ms per packet", setup)
        log = await measure(row, replicas, cookies, slow, fast, fails=False)
        assert row.answers == {200}, row
        row = Row("network to Redis +1 s per packet", setup)
        await measure(row, replicas, cookies, slower, fast)
        assert row.answers == {503}, row
        row = Row("network to Redis silent (packets held)", setup)
        await measure(row, replicas, cookies, silent, flowing)
        assert row.answers == {503} and row.fail_closed is not None and row.fail_closed <= 1.0, row
        assert log
    finally:
        await relay.close()


@pytest.mark.parametrize(("store", "workers"), [("sqlite", 1), ("sqlite", 2), ("redis", 1), ("redis", 2)])
async def test_authproxy_killed(store: str, workers: int, redis_server_factory: Callable[..., RedisServer],
                                technitium: FakeTechnitium, replicas: Replicas) -> None:
    env = {"WORKERS": str(workers), "SESSION_CACHE_TTL": "0"}
    if store == "redis":
        env["REDIS_URL"] = redis_server_factory(appendonly=True).url
    await replicas.start(1, technitium.url, **env)
    cookies = await _signed_in(replicas, 6)
    proc = replicas.procs[0]

    async def kill() -> None:
        proc._signal_group(proc.pid or 0, signal.SIGKILL)  # every process of the instance, as `docker kill`

    async def start() -> None:
        proc.start()

    row = Row("authproxy killed (SIGKILL), then started",
              f"{'SQLite' if store == 'sqlite' else 'Redis (AOF)'}, WORKERS={workers}")
    await measure(row, replicas, cookies, kill, start, hold=0.3)
    assert row.answers == {"refused"}, row


async def test_upstream_faults(technitium: FakeTechnitium, replicas: Replicas) -> None:
    relay = await TcpRelay("127.0.0.1", technitium.port).start()
    try:
        await replicas.start(1, f"http://127.0.0.1:{relay.port}", UPSTREAM_TIMEOUT="1s",
                             UPSTREAM_CONNECT_TIMEOUT="1s")
        cookies = await _signed_in(replicas, 4)

        async def proxied(i: int, cookie: str) -> tuple[Outcome, bool | None]:
            headers = {**FORWARDED, "Cookie": f"{COOKIE}={cookie}", "Accept": "application/json"}
            try:
                url = replicas.bases[i] + "/api/zones/list"
                async with replicas.client.get(url, headers=headers) as resp:
                    await resp.read()
                    return resp.status, True if resp.status == 200 else None
            except aiohttp.ClientConnectionError:
                return "refused", None

        async def hang() -> None:
            relay.hang()

        async def flowing() -> None:
            relay.flow()

        setup = "upstream behind a relay, UPSTREAM_TIMEOUT=1s"
        row = Row("upstream hung (no answer)", setup)
        await measure(row, replicas, cookies, hang, flowing, probe=proxied, hold=1.2)
        assert row.answers <= {502, 504}, row
        row = Row("upstream gone (connections refused)", setup)
        await measure(row, replicas, cookies, relay.down, relay.up, probe=proxied)
        assert row.answers == {502}, row
    finally:
        await relay.close()
