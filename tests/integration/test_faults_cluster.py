"""Three authproxy replicas on a real Redis Cluster (3 masters + 3 replicas, cluster-node-timeout 1 s):
a master (the one holding a sign-in failure count) is killed (SIGKILL) under steady load. authproxy
answers 503 for the sessions whose slot it served until its replica takes over, then serves again;
nothing else is ever answered (no 500, no "signed out" for a live session), and every sign-in, sign-out
and failure count it acknowledged survives the failover (writes wait for a replica: WAIT)."""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio
import redis

from authproxy.config.loader import load_config
from authproxy.crypto import Keyring
from authproxy.sessions.ticket import decode_ticket
from tests.fakes.technitium import FakeTechnitium
from tests.support.procs import ManagedProcess, free_port, wait_for_port
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer
from tests.support.replicas import Replicas
from tests.support.technitium import ALICE

PASSWORD = "sentinel-s3cret"
BOB = ("bob", "bob-pass")
FAILOVER_BOUND = 10.0  # cluster-node-timeout 1 s + election + rediscovery, on a loaded 2-core machine


def _keys(cluster: RedisCluster, node: RedisServer, pattern: str) -> list[bytes]:
    """The keys matching `pattern` on one node, if it is a master that still runs."""
    if not node.running:
        return []
    with cluster.client(node) as c:
        if c.info("replication")["role"] != "master":
            return []
        return list(c.keys(pattern))


def _slots(cluster: RedisCluster, master: RedisServer) -> set[int]:
    row = next(r for r in cluster.topology() if int(r["port"]) == master.port)
    slots: set[int] = set()
    for span in row["slots"].split():
        lo, _, hi = span.partition("-")
        slots.update(range(int(lo), int(hi or lo) + 1))
    return slots


def _slot(cluster: RedisCluster, key: str) -> int:
    with cluster.client() as c:
        return int(c.execute_command("CLUSTER", "KEYSLOT", key))


def _store_key(cookie: str) -> str:
    """The Redis key of a session cookie's session (the replicas' SESSION_SECRET is "s" * 40)."""
    config = load_config({"UPSTREAM_URL": "http://127.0.0.1:9", "UPSTREAM_TYPE": "technitium",
                          "TRUST_PROXY": "true", "SESSION_SECRET": "s" * 40})
    ticket = decode_ticket(cookie, Keyring(config.session.secrets))
    assert ticket is not None
    kind, _, rest = ticket.store_key.partition(":")
    return f"authproxy:{kind}:{{{rest}}}"  # on a Cluster, the id is a hash tag (s:{id}, m:{id}: one slot)


def _replication(server: RedisServer) -> dict[str, Any]:
    with redis.Redis(host=server.host, port=server.port, password=server.password, socket_timeout=2) as c:
        info: dict[str, Any] = c.info("replication")
        return info


Log = list[tuple[float, int, bool | None, str]]  # (time, status, authenticated, cookie)


async def under_load(replicas: Replicas, live: list[str], fault: Callable[[], None], *,
                     sign_ins: bool) -> tuple[float, Log]:
    """Six checkers (random live cookies, round robin over the replicas) and, with `sign_ins`, a sign-in
    every 50 ms (its cookie joins `live` when answered 200); `fault()` after 1 s; the load goes on until
    2 s without a failure (at most FAILOVER_BOUND + 10 s). Returns when the fault happened and the log."""
    log: Log = []
    stop = asyncio.Event()
    rng = random.Random(16)
    count = len(replicas.procs)

    async def checker() -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            cookie = rng.choice(live)
            status, authenticated = await replicas.check(n % count, cookie)
            log.append((time.monotonic(), status, authenticated, cookie))

    async def signer() -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            # A sign-in the failover cut short (503) keeps its attempt counted (the refund could not be
            # written): after LOGIN_MAX_FAILURES of them, 429 until the window ends. Fail-safe, allowed.
            status, cookie = await replicas.sign_in(n % count, ALICE, client_ip=f"198.51.100.{n % 250 + 1}")
            assert status in (200, 503, 429), status
            if cookie:
                live.append(cookie)
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(checker()) for _ in range(6)]
    if sign_ins:
        tasks.append(asyncio.create_task(signer()))
    await asyncio.sleep(1.0)
    fault_at = time.monotonic()
    fault()
    while time.monotonic() - fault_at < FAILOVER_BOUND + 10:
        await asyncio.sleep(0.2)
        last_bad = max((t for t, s, _, _ in log if t > fault_at and s != 200), default=fault_at)
        if time.monotonic() - last_bad > 2.0 and time.monotonic() - fault_at > 3.0:
            break
    stop.set()
    await asyncio.gather(*tasks)
    return fault_at, log


@pytest_asyncio.fixture
async def replicas(process_factory: Callable[..., ManagedProcess], tmp_path: Path) -> AsyncIterator[Replicas]:
    r = Replicas(process_factory, tmp_path)
    try:
        yield r
    finally:
        await r.close()


async def test_a_master_killed_under_load_costs_503s_for_the_failover_only(
        redis_cluster: RedisCluster, technitium: FakeTechnitium, replicas: Replicas) -> None:
    await replicas.start(3, technitium.url, REDIS_URL=redis_cluster.url, SESSION_CACHE_TTL="0",
                         LOGIN_MAX_FAILURES="3")
    technitium.add_user(*BOB)
    wrong = (BOB[0], "not-his-password")
    bob_ip = "203.0.113.7"
    assert [(await replicas.sign_in(i, wrong, client_ip=bob_ip))[0] for i in (0, 1)] == [401, 401]  # 2 of 3
    acked: list[str] = []
    for i in range(24):
        status, cookie = await replicas.sign_in(i % 3, ALICE, client_ip=f"192.0.2.{i + 1}")
        assert status == 200 and cookie
        acked.append(cookie)
    signed_out = acked[:4]
    for i, cookie in enumerate(signed_out):
        assert await replicas.sign_out(i % 3, cookie) == 200
    live = acked[4:]

    # The master that holds bob's failure count: a failover must not forget it.
    counters = [k.decode() for n in redis_cluster.nodes for k in _keys(redis_cluster, n, "authproxy:t:{u:*")]
    assert len(set(counters)) == 1, counters
    victim = redis_cluster.master_of(counters[0])
    assert victim.process is not None
    victim_slots = _slots(redis_cluster, victim)
    process = victim.process
    killed_at, log = await under_load(replicas, live, lambda: process.signal(signal.SIGKILL), sign_ins=True)

    after = [(t - killed_at, s, a) for t, s, a, _ in log if t > killed_at]
    statuses = {s for _, s, _, _ in log}
    assert statuses <= {200, 503}, statuses
    assert all(a is True for _, s, a, _ in log if s == 200), "an acknowledged session was answered signed out"
    bad = [t for t, s, _ in after if s != 200]
    # Only the sessions on the dead master's slots were refused: the others were served throughout.
    refused = {c for _, s, _, c in log if s != 200}
    elsewhere = [c for c in refused if _slot(redis_cluster, _store_key(c)) not in victim_slots]
    assert not elsewhere, f"{len(elsewhere)} session(s) on a live master refused"
    outage = max(bad, default=0.0)
    assert outage <= FAILOVER_BOUND, f"503s until {outage:.1f} s after the kill"
    assert after and after[-1][1] == 200
    # Every sign-in and sign-out that was answered 200 holds, on every replica.
    for cookie in live:
        for i in range(3):
            assert await replicas.check(i, cookie) == (200, True)
    for cookie in signed_out:
        assert await replicas.check(0, cookie) == (200, False)
    assert (await replicas.sign_in(2, wrong, client_ip=bob_ip))[0] == 401  # the third failure
    assert (await replicas.sign_in(0, BOB, client_ip=bob_ip))[0] == 429    # locked out: the count held
    print(f"cluster master killed: {len(bad)} of {len(after)} checks answered 503, the last "
          f"{outage:.2f} s after the kill; {len(live)} acknowledged sessions all kept")


async def test_sentinel_failover_under_load(
        redis_server_factory: Callable[..., RedisServer], technitium: FakeTechnitium, replicas: Replicas,
        tmp_path: Path, process_factory: Callable[..., ManagedProcess]) -> None:
    """A master and its replica behind one Sentinel (down-after 1 s): the master killed under load, the
    authproxy replicas follow the promoted one; acknowledged sessions survive."""
    master = redis_server_factory(password=PASSWORD)
    replica = redis_server_factory(password=PASSWORD)
    assert replica.command("CONFIG", "SET", "masterauth", PASSWORD) == b"+OK"
    assert replica.command("REPLICAOF", master.host, str(master.port)) == b"+OK"
    deadline = time.monotonic() + 10
    while _replication(replica).get("master_link_status") != "up":
        assert time.monotonic() < deadline, "the replica never synced"
        await asyncio.sleep(0.05)
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
                    f"sentinel auth-pass mymaster {PASSWORD}\n"
                    "sentinel down-after-milliseconds mymaster 1000\n"
                    "sentinel failover-timeout mymaster 5000\n")
    sentinel = process_factory([master.binary, str(conf), "--sentinel"], name="redis-sentinel")
    wait_for_port("127.0.0.1", port, timeout=10, process=sentinel)
    url = f"redis+sentinel://:{PASSWORD}@127.0.0.1:{port}/mymaster?wait_replicas=1"  # writes: WAIT 1
    await replicas.start(2, technitium.url, REDIS_URL=url, SESSION_CACHE_TTL="0")
    live: list[str] = []
    for i in range(10):
        status, cookie = await replicas.sign_in(i % 2, ALICE)
        assert status == 200 and cookie
        live.append(cookie)
    assert master.process is not None
    process = master.process
    killed_at, log = await under_load(replicas, live, lambda: process.signal(signal.SIGKILL), sign_ins=False)
    statuses = {s for _, s, _, _ in log}
    assert statuses <= {200, 503}, statuses
    assert all(a is True for _, s, a, _ in log if s == 200)
    bad = [t - killed_at for t, s, _, _ in log if t > killed_at and s != 200]
    outage = max(bad, default=0.0)
    assert outage <= FAILOVER_BOUND + 5, outage  # Sentinel: down-after 1 s + its election + redis-py
    assert _replication(replica)["role"] == "master"
    for cookie in live:
        assert await replicas.check(0, cookie) == (200, True)
    print(f"sentinel master killed: {len(bad)} checks answered 503, the last {outage:.2f} s after the kill")
