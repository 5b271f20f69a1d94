"""One contract for every SessionStore: memory, SQLite (a real file) and Redis (a real redis-server).

The shared tests take the `store` / `open_store` fixtures, parametrized over the three backends; the
backend-specific tests at the end cover what only one of them can do (persistence across a reopen or a
Redis restart, Redis down or hung, URL forms, cross-process pub/sub over one SQLite file).
TTLs are short (0.2-0.4 s) to keep the suite fast; margins are generous against a loaded machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from authproxy.errors import ConfigError, StoreError
from authproxy.sessions.memory import MemoryStore
from authproxy.sessions.redis import RedisStore, _redact_url, _SentinelSpec
from authproxy.sessions.sqlite import SQLiteStore
from authproxy.sessions.store import SessionStore
from tests.support.procs import ManagedProcess, free_port, wait_for_port
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "s3cr3t:p@ss/word"

OpenStore = Callable[..., Awaitable[SessionStore]]


@dataclass
class Backend:
    """How to open (another) store on one backend; `shared` = several instances see each other."""

    kind: str
    make: Callable[..., SessionStore]
    shared: bool
    opened: list[SessionStore] = field(default_factory=list)


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    kind: str = request.param
    if kind == "memory":
        return Backend(kind, lambda **kw: MemoryStore(**kw), shared=False)
    if kind == "sqlite":
        db = tmp_path / "state" / "sessions.sqlite3"
        return Backend(kind, lambda **kw: SQLiteStore(db, **{"poll_interval": 0.1, **kw}), shared=True)
    url: str = request.getfixturevalue("redis_cluster_url" if kind == "redis-cluster" else "redis_url")
    return Backend(kind, lambda **kw: RedisStore(url, **kw), shared=True)


@pytest.fixture
async def open_store(backend: Backend) -> AsyncIterator[OpenStore]:
    """`await open_store(**kwargs)` -> a started store on this backend; all closed at teardown."""

    async def open_(**kwargs: Any) -> SessionStore:
        store = backend.make(**kwargs)
        backend.opened.append(store)
        await store.start()
        return store

    yield open_
    for store in reversed(backend.opened):
        await store.close()


@pytest.fixture
async def store(open_store: OpenStore) -> SessionStore:
    return await open_store()


class Inbox:
    """A subscriber callback that records messages and lets a test wait for them."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 3.0) -> list[str]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages


# -- the contract --------------------------------------------------------------------------------


async def test_implements_protocol(store: SessionStore, backend: Backend) -> None:
    assert isinstance(store, SessionStore)
    assert store.name == backend.kind.removesuffix("-cluster")


async def test_get_set_overwrite(store: SessionStore) -> None:
    assert await store.get("missing") is None
    await store.set("k", b"one", 10)
    assert await store.get("k") == b"one"
    await store.set("k", b"two", 10)
    assert await store.get("k") == b"two"
    blob = bytes(range(256)) * 4
    await store.set("blob", blob, 10)
    assert await store.get("blob") == blob


async def test_set_ttl_expires_and_overwrite_replaces_ttl(store: SessionStore) -> None:
    await store.set("short", b"x", 0.2)
    await store.set("renewed", b"x", 0.2)
    await store.set("renewed", b"y", 10)
    await asyncio.sleep(0.35)
    assert await store.get("short") is None
    assert await store.ttl("short") is None
    assert await store.get("renewed") == b"y"


async def test_expire_slides_and_reports_missing(store: SessionStore) -> None:
    await store.set("s", b"x", 0.3)
    await asyncio.sleep(0.15)
    assert await store.expire("s", 0.4) is True
    await asyncio.sleep(0.25)  # past the original 0.3 s
    assert await store.get("s") == b"x"
    assert await store.expire("missing", 10) is False
    await asyncio.sleep(0.3)  # past the slid expiry
    assert await store.expire("s", 10) is False
    assert await store.get("s") is None


async def test_replace_never_brings_back_a_deleted_or_expired_key(store: SessionStore) -> None:
    assert await store.replace("never", b"x", 10) is False
    assert await store.get("never") is None
    await store.set("k", b"old", 0.3)
    assert await store.replace("k", b"new", 10) is True   # overwrites value and TTL
    assert await store.get("k") == b"new"
    assert (await store.ttl("k") or 0) > 5
    await store.delete("k")
    assert await store.replace("k", b"zombie", 10) is False
    assert await store.get("k") is None
    await store.set("short", b"x", 0.2)
    await asyncio.sleep(0.3)
    assert await store.replace("short", b"zombie", 10) is False
    assert await store.get("short") is None


async def test_set_if_absent_is_a_lock(store: SessionStore) -> None:
    assert await store.set_if_absent("lock", b"a", 0.2) is True
    assert await store.set_if_absent("lock", b"b", 10) is False
    assert await store.get("lock") == b"a"
    await asyncio.sleep(0.3)
    assert await store.set_if_absent("lock", b"c", 10) is True
    assert await store.get("lock") == b"c"
    results = await asyncio.gather(*(store.set_if_absent("race", b"%d" % i, 10) for i in range(10)))
    assert results.count(True) == 1


async def test_delete_counts_existing(store: SessionStore) -> None:
    await store.set("a", b"1", 10)
    await store.set("b", b"2", 10)
    await store.set("gone", b"3", 0.1)
    await asyncio.sleep(0.2)
    assert await store.delete("a", "b", "missing", "gone") == 2
    assert await store.get("a") is None
    assert await store.delete() == 0
    assert await store.delete("a") == 0


async def test_incr_counts_within_a_fixed_window(store: SessionStore) -> None:
    assert [await store.incr("c", 0.4) for _ in range(3)] == [1, 2, 3]
    left = await store.ttl("c")
    assert left is not None and 0 < left <= 0.4
    await asyncio.sleep(0.25)
    assert await store.incr("c", 0.4) == 4  # does not extend the window...
    await asyncio.sleep(0.25)
    assert await store.incr("c", 0.4) == 1  # ...which ended 0.4 s after the first incr
    assert await store.get("c") == b"1"
    counts = await asyncio.gather(*(store.incr("burst", 10) for _ in range(20)))
    assert sorted(counts) == list(range(1, 21))


async def test_incr_by_an_amount_and_refunds_that_never_create_a_counter(store: SessionStore) -> None:
    assert await store.incr("r", 0.4, -1) == 0  # a refund on nothing leaves nothing
    assert await store.get("r") is None
    assert await store.incr("r", 0.4, 3) == 3
    await asyncio.sleep(0.25)
    assert await store.incr("r", 0.4, -1) == 2
    assert await store.incr("r", 0.4, -2) == 0
    assert await store.incr("r", 0.4) == 1  # back from zero: still the first window...
    await asyncio.sleep(0.25)
    assert await store.get("r") is None  # ...which ended 0.4 s after the first incr
    assert await store.incr("r", 0.4, -1) == 0


async def test_ttl_reports_seconds_left(store: SessionStore) -> None:
    assert await store.ttl("missing") is None
    await store.set("k", b"v", 10)
    left = await store.ttl("k")
    assert left is not None and 9 < left <= 10
    assert await store.expire("k", 100)
    left = await store.ttl("k")
    assert left is not None and 99 < left <= 100


async def test_keys_lists_live_keys_under_a_prefix_only(store: SessionStore) -> None:
    await store.set("s:one", b"1", 30)
    await store.set("s:two_%", b"2", 30)
    await store.set("s:gone", b"3", 0.05)
    await store.set("m:one", b"4", 30)
    await store.set("sx", b"5", 30)
    await asyncio.sleep(0.15)
    assert sorted(await store.keys("s:")) == ["s:one", "s:two_%"]
    assert await store.keys("s:two_") == ["s:two_%"]   # `_` and `%` are not wildcards
    assert await store.keys("nothing:") == []


async def test_index_add_remove_members(store: SessionStore) -> None:
    assert await store.index_members("user:alice") == set()
    await store.index_add("user:alice", "s1", 10)
    await store.index_add("user:alice", "s2", 10)
    await store.index_add("user:alice", "s2", 10)
    await store.index_add("user:bob", "s3", 10)
    assert await store.index_members("user:alice") == {"s1", "s2"}
    await store.index_remove("user:alice", "s1")
    await store.index_remove("user:alice", "never-there")
    await store.index_remove("user:nobody", "s1")
    assert await store.index_members("user:alice") == {"s2"}
    await store.index_remove("user:alice", "s2")
    assert await store.index_members("user:alice") == set()
    assert await store.index_members("user:bob") == {"s3"}


async def test_index_lives_ttl_after_last_add_and_keeps_longer_ttl(store: SessionStore) -> None:
    # Margins of 150 ms or more either side of each expiry: a loaded 2-core machine stalls that long.
    await store.index_add("short", "a", 0.6)
    await store.index_add("long", "a", 10)
    await store.index_add("long", "b", 0.3)  # must not shorten the set's life
    await store.index_add("slid", "a", 0.75)
    await asyncio.sleep(0.45)
    await store.index_add("slid", "b", 0.75)  # lives until 1.2 now
    await asyncio.sleep(0.45)
    assert await store.index_members("short") == set()
    assert await store.index_members("long") == {"a", "b"}
    assert await store.index_members("slid") == {"a", "b"}
    await asyncio.sleep(0.6)
    assert await store.index_members("slid") == set()
    await store.index_add("short", "fresh", 10)  # an expired set starts empty
    assert await store.index_members("short") == {"fresh"}


async def test_publish_reaches_subscribers_of_that_channel(store: SessionStore) -> None:
    inbox, other, also = Inbox(), Inbox(), Inbox()

    def broken(message: str) -> None:
        raise RuntimeError("a failing subscriber must not stop the others")

    store.subscribe("invalidate", broken)
    store.subscribe("invalidate", inbox)
    store.subscribe("invalidate", also)
    store.subscribe("other", other)
    await store.publish("invalidate", "sess-1")
    await store.publish("invalidate", "sess-2")
    assert await inbox.wait_for(2) == ["sess-1", "sess-2"]
    assert await also.wait_for(2) == ["sess-1", "sess-2"]
    await asyncio.sleep(0.2)
    assert other.messages == []
    assert inbox.messages == ["sess-1", "sess-2"]  # delivered once


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
async def test_publish_reaches_other_instances(open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    inbox_a, inbox_b = Inbox(), Inbox()
    a.subscribe("invalidate", inbox_a)
    b.subscribe("invalidate", inbox_b)
    await a.publish("invalidate", "from-a")
    await b.publish("invalidate", "from-b")
    assert sorted(await inbox_a.wait_for(2)) == ["from-a", "from-b"]
    assert sorted(await inbox_b.wait_for(2)) == ["from-a", "from-b"]
    await b.set("shared", b"yes", 10)
    assert await a.get("shared") == b"yes"


async def test_revoke_has_reached_this_instance_when_it_returns(store: SessionStore) -> None:
    """Like publish, but nothing to wait for afterwards: logout answers right after it."""
    inbox, other = Inbox(), Inbox()
    store.subscribe("invalidate", inbox)
    store.subscribe("other", other)
    before = store.generation()
    assert before >= 0 and store.generation() == before  # steady while nothing is revoked
    await store.revoke("invalidate", "sess-1")
    assert inbox.messages == ["sess-1"]  # no waiting: it has arrived
    await store.revoke("invalidate", "sess-2")
    assert inbox.messages == ["sess-1", "sess-2"]
    await asyncio.sleep(0.3)
    assert inbox.messages == ["sess-1", "sess-2"] and other.messages == []  # once, on that channel only
    assert store.generation() >= 0


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
async def test_revoke_is_in_effect_in_every_instance_when_it_returns(open_store: OpenStore,
                                                                    backend: Backend) -> None:
    """In each other instance, the subscribers have been told or the generation has moved on, before
    revoke returns (SQLite's event poll is made slow here so only that promise can be at work)."""
    slow_poll: dict[str, Any] = {"poll_interval": 60.0} if backend.kind == "sqlite" else {}
    a, b, c = [await open_store(**slow_poll) for _ in range(3)]
    inboxes = [Inbox(), Inbox(), Inbox()]
    for store, inbox in zip((a, b, c), inboxes, strict=True):
        store.subscribe("invalidate", inbox)
    for round_ in range(3):
        seen = [b.generation(), c.generation()]
        await a.revoke("invalidate", f"sess-{round_}")
        for store, inbox, generation in zip((b, c), inboxes[1:], seen, strict=True):
            assert f"sess-{round_}" in inbox.messages or store.generation() != generation


async def test_ping_close_and_closed_store(open_store: OpenStore) -> None:
    store = await open_store()
    await store.ping()
    await store.close()
    await store.close()  # twice is fine
    with pytest.raises(StoreError):
        await store.get("k")
    with pytest.raises(StoreError):
        await store.ping()


# -- SQLite --------------------------------------------------------------------------------------


async def test_sqlite_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "data" / "sessions.sqlite3"
    first = SQLiteStore(path)
    await first.start()
    await first.set("kept", b"v", 60)
    await first.set("expiring", b"v", 0.2)
    await first.index_add("user:a", "s1", 60)
    assert await first.incr("n", 60) == 1
    await first.close()
    await asyncio.sleep(0.3)

    second = SQLiteStore(path)
    await second.start()
    try:
        assert await second.get("kept") == b"v"
        assert await second.get("expiring") is None
        assert await second.index_members("user:a") == {"s1"}
        assert await second.incr("n", 60) == 2
    finally:
        await second.close()


async def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "new-dir" / "sessions.sqlite3"
    store = SQLiteStore(path)
    await store.start()
    try:
        await store.set("k", b"v", 10)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        for file in [path, *path.parent.glob("sessions.sqlite3-*")]:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        assert (path.parent / "sessions.sqlite3-wal").exists()
        assert (path.parent / "sessions.sqlite3-gen").exists()
    finally:
        await store.close()


async def test_sqlite_tightens_a_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    path.touch(mode=0o644)
    path.chmod(0o644)
    store = SQLiteStore(path)
    await store.start()
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_sqlite_pubsub_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    store = SQLiteStore(path, poll_interval=0.1)
    await store.start()
    inbox = Inbox()
    store.subscribe("invalidate", inbox)
    child = (
        "import asyncio, sys\nfrom pathlib import Path\nfrom authproxy.sessions.sqlite import SQLiteStore\n"
        "async def main() -> None:\n"
        "    s = SQLiteStore(Path(sys.argv[1]))\n"
        "    await s.start()\n"
        "    await s.set('child', b'hello', 60)\n"
        "    await s.publish('invalidate', 'from-child')\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", child, str(path), cwd=REPO)
        assert await proc.wait() == 0
        assert await inbox.wait_for(1) == ["from-child"]
        assert await store.get("child") == b"hello"
    finally:
        await store.close()


async def test_sqlite_revocations_move_every_process_s_generation_at_once_and_lose_no_step(
        tmp_path: Path) -> None:
    """Two processes revoke 200 times each, at the same time: this process (whose event poll is too slow
    to have told it anything) sees the shared generation move by exactly 400 as soon as they are done."""
    path = tmp_path / "sessions.sqlite3"
    store = SQLiteStore(path, poll_interval=60.0)
    await store.start()
    inbox = Inbox()
    store.subscribe("invalidate", inbox)
    child = (
        "import asyncio, sys\nfrom pathlib import Path\nfrom authproxy.sessions.sqlite import SQLiteStore\n"
        "async def main() -> None:\n"
        "    s = SQLiteStore(Path(sys.argv[1]))\n"
        "    await s.start()\n"
        "    for i in range(200):\n"
        "        await s.revoke('invalidate', f'{sys.argv[2]}-{i}')\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    try:
        before = store.generation()
        procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", child, str(path), name, cwd=REPO)
                 for name in ("one", "two")]
        assert [await proc.wait() for proc in procs] == [0, 0]
        assert store.generation() == before + 400
        assert inbox.messages == []  # the poll had no part in it
        generation_file = path.with_name("sessions.sqlite3-gen")
        assert stat.S_IMODE(generation_file.stat().st_mode) == 0o600
    finally:
        await store.close()
    assert store.generation() < 0  # closed: nothing may be cached on its word


async def test_sqlite_processes_starting_together_on_a_fresh_file_all_open_it(tmp_path: Path) -> None:
    """`--workers N` start at the same instant on a new file (CI once lost one to "database is locked")."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.support.sqlite_open_race",
                                                str(tmp_path), "8", "60",
                                                cwd=REPO, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "0", err.decode()[-2000:]


async def test_sqlite_sweeps_expired_rows_and_old_events(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    store = SQLiteStore(path, poll_interval=0.05, sweep_interval=0.05, event_retention=0.0)
    await store.start()
    try:
        await store.set("old", b"x", 0.05)
        await store.index_add("idx", "m", 0.05)
        await store.publish("c", "m")
        await asyncio.sleep(0.3)
        import sqlite3

        with sqlite3.connect(path) as db:
            counts = [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                      for t in ("kv", "idx", "idx_meta", "events")]
        db.close()
        assert counts == [0, 0, 0, 0]
    finally:
        await store.close()


async def test_sqlite_unusable_path_is_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = SQLiteStore(blocker / "sessions.sqlite3")
    with pytest.raises(StoreError):
        await store.start()
    await store.close()


# -- Redis ---------------------------------------------------------------------------------------


async def test_redis_keys_and_channels_are_prefixed(redis_url: str, redis_server: RedisServer) -> None:
    mine, theirs = RedisStore(redis_url, prefix="a:"), RedisStore(redis_url, prefix="b:")
    await mine.start()
    await theirs.start()
    try:
        await mine.set("k", b"1", 10)
        assert redis_server.command("EXISTS", "a:k") == b":1"
        assert await theirs.get("k") is None
        inbox_mine, inbox_theirs = Inbox(), Inbox()
        mine.subscribe("c", inbox_mine)
        theirs.subscribe("c", inbox_theirs)
        await mine.publish("c", "hi")
        assert await inbox_mine.wait_for(1) == ["hi"]
        await asyncio.sleep(0.1)
        assert inbox_theirs.messages == []
    finally:
        await mine.close()
        await theirs.close()


async def test_redis_unix_socket_url(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory(password=PASSWORD)
    store = RedisStore(server.unix_url)
    await store.start()
    try:
        await store.set("k", b"v", 10)
        assert await store.get("k") == b"v"
    finally:
        await store.close()


async def test_redis_appendonly_data_survives_restart(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory(appendonly=True)
    store = RedisStore(server.url)
    await store.start()
    try:
        await store.set("sess", b"sealed", 60)
        await store.index_add("user:a", "sess", 60)
        server.stop()
        server.start()
        # The same store keeps working: its pooled connections died with the old process.
        assert await store.get("sess") == b"sealed"
        assert await store.index_members("user:a") == {"sess"}
        left = await store.ttl("sess")
        assert left is not None and 50 < left <= 60
    finally:
        await store.close()


async def test_redis_down_fails_fast_without_password_then_recovers(
        redis_server_factory: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="authproxy")
    server = redis_server_factory(password=PASSWORD)
    store = RedisStore(server.url, timeout=1.0)
    await store.start()
    inbox = Inbox()
    store.subscribe("inv", inbox)
    try:
        await store.set("k", b"v", 60)
        server.stop()
        connected = store.generation()
        assert connected >= 0
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.get("k"), store.ping, lambda: store.set("k", b"v", 1),
            lambda: store.incr("n", 1), lambda: store.index_add("i", "m", 1),
            lambda: store.publish("inv", "lost"), lambda: store.revoke("inv", "lost")]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreError) as caught:
                await call()
            assert time.monotonic() - started < 3
            message = (
                f"{caught.value} {caught.value!r} {caught.value.__cause__!r} {caught.value.__context__!r}"
            )
            assert PASSWORD not in message and quote(PASSWORD, safe="") not in message
            assert "s3cr3t" not in message
        assert "s3cr3t" not in repr(store)
        async with asyncio.timeout(3):  # deaf to revocations: the cache must hold nothing meanwhile
            while store.generation() >= 0:
                await asyncio.sleep(0.02)

        server.start()
        async with asyncio.timeout(1.0):  # the circuit breaker's probe (every 0.1 s) finds it back
            while True:
                with contextlib.suppress(StoreError):
                    await store.ping()
                    break
                await asyncio.sleep(0.02)
        await store.set("k", b"again", 60)
        assert await store.get("k") == b"again"
        async with asyncio.timeout(8):  # the listener reconnects on its own (backoff <= 5 s)
            while not inbox.messages:
                await store.publish("inv", "back")
                await asyncio.sleep(0.2)
        assert inbox.messages[0] == "back"
        assert store.generation() >= 0 and store.generation() != connected  # what was cached before: stale
        assert "pub/sub listener failed" in caplog.text
        assert "pub/sub listener reconnected" in caplog.text
        assert "s3cr3t" not in caplog.text
    finally:
        await store.close()


async def test_redis_revoke_waits_for_confirmations_but_not_for_a_subscriber_that_never_confirms(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A replica confirms after its subscribers ran; another program subscribed to the prefix counts in
    PUBLISH's answer but never confirms: revoke gives up after ack_timeout and says so (once a minute)."""
    import redis.asyncio as aioredis

    caplog.set_level(logging.WARNING, logger="authproxy")
    a, b = RedisStore(redis_url, ack_timeout=0.3), RedisStore(redis_url, ack_timeout=0.3)
    onlooker = aioredis.Redis.from_url(redis_url)
    pubsub = onlooker.pubsub()
    inbox = Inbox()
    b.subscribe("inv", inbox)
    try:
        await a.start()
        await b.start()
        started = time.monotonic()
        await a.revoke("inv", "one")
        assert inbox.messages == ["one"] and time.monotonic() - started < 0.25
        assert "did not confirm" not in caplog.text

        await pubsub.psubscribe("authproxy:*")
        started = time.monotonic()
        await a.revoke("inv", "two")
        await a.revoke("inv", "three")
        assert inbox.messages == ["one", "two", "three"]
        assert 0.55 <= time.monotonic() - started < 2.0
        assert caplog.text.count("1 of 3 subscribers to 'authproxy:*' did not confirm a revocation") == 1
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await onlooker.aclose()
        await a.close()
        await b.close()


async def test_redis_hung_server_times_out(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    store = RedisStore(server.url, timeout=0.3)
    await store.start()
    assert server.process is not None
    try:
        await store.set("k", b"v", 60)
        server.process.signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(StoreError):
            await store.get("k")
        assert time.monotonic() - started < 1.5
        started = time.monotonic()  # the circuit is open now: the next call fails without waiting
        with pytest.raises(StoreError, match="not tried"):
            await store.set("k", b"w", 60)
        assert time.monotonic() - started < 0.05
    finally:
        server.process.signal(signal.SIGCONT)
    try:
        async with asyncio.timeout(1.0):  # the background probe closes it as soon as Redis answers
            while True:
                with contextlib.suppress(StoreError):
                    assert await store.get("k") == b"v"
                    break
                await asyncio.sleep(0.02)
    finally:
        await store.close()


async def test_redis_start_while_down_then_comes_up(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    server.stop()
    store = RedisStore(server.url, timeout=0.5)
    started = time.monotonic()
    await store.start()  # logs, does not raise: readiness is ping()'s job
    assert time.monotonic() - started < 3
    try:
        with pytest.raises(StoreError):
            await store.ping()
        server.start()
        await store.ping()
        inbox = Inbox()
        store.subscribe("c", inbox)
        async with asyncio.timeout(8):
            while not inbox.messages:
                await store.publish("c", "up")
                await asyncio.sleep(0.2)
    finally:
        await store.close()


async def test_redis_sentinel_url(redis_server_factory: Callable[..., RedisServer], tmp_path: Path) -> None:
    master = redis_server_factory(password=PASSWORD)
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
                    f"sentinel auth-pass mymaster {PASSWORD}\n")
    sentinel = ManagedProcess([master.binary, str(conf), "--sentinel"], name="redis-sentinel",
                              log_path=tmp_path / "sentinel.log").start()
    try:
        wait_for_port("127.0.0.1", port, timeout=10, process=sentinel)
        dead = free_port()  # a dead sentinel first in the list must not matter
        url = f"redis+sentinel://:{quote(PASSWORD, safe='')}@127.0.0.1:{dead},127.0.0.1:{port}/mymaster/2"
        a, b = RedisStore(url), RedisStore(url)
        await a.start()
        await b.start()
        try:
            await a.set("k", b"v", 10)
            assert await b.get("k") == b"v"
            assert master.command("SELECT", "2") == b"+OK"
            inbox = Inbox()
            b.subscribe("c", inbox)
            await a.publish("c", "via-sentinel")
            assert await inbox.wait_for(1) == ["via-sentinel"]
            assert PASSWORD not in repr(a)
        finally:
            await a.close()
            await b.close()
    finally:
        sentinel.stop()


def test_redis_sentinel_url_parsing() -> None:
    spec = _SentinelSpec.parse("redis+sentinel://:p%40ss@h1:26380,[::1]:26381,h3/svc/3?sentinel_password=x")
    assert spec.sentinels == [("h1", 26380), ("::1", 26381), ("h3", 26379)]
    assert (spec.service_name, spec.db, spec.password, spec.username) == ("svc", 3, "p@ss", None)
    assert spec.sentinel_password == "x"
    spec = _SentinelSpec.parse("redis+sentinel://user:pw@h1:1/svc")
    assert (spec.username, spec.password, spec.db, spec.wait_replicas) == ("user", "pw", 0, 0)
    spec = _SentinelSpec.parse("redis+sentinel://h1:1/svc?wait_replicas=1&wait_timeout_ms=200")
    assert (spec.wait_replicas, spec.wait_timeout_ms) == (1, 200)
    for bad in ("redis+sentinel://h1:1", "redis+sentinel://:pw@/svc", "redis+sentinel://h:x/svc",
                "redis+sentinel://h:1/svc/notadb", "redis+sentinel://h:1/svc?bogus=1",
                "redis+sentinel://:pw@h:1/svc?wait_replicas=x"):
        with pytest.raises(ConfigError) as caught:
            _SentinelSpec.parse(bad)
        assert "pw" not in str(caught.value).replace("password", "")


def test_redis_url_validation_and_redaction() -> None:
    with pytest.raises(ConfigError) as caught:
        RedisStore("http://:hunter2@localhost")
    assert "hunter2" not in str(caught.value)
    assert _redact_url("redis://:hunter2@h:1/0") == "redis://:***@h:1/0"
    assert _redact_url("redis://u:hunter2@h/0?sentinel_password=x&db=1") == \
        "redis://u:***@h/0?sentinel_password=***&db=1"
    assert "hunter2" not in repr(RedisStore("rediss://:hunter2@h:1/0"))
    assert _redact_url("unix:///run/redis.sock?db=1") == "unix:///run/redis.sock?db=1"


def test_process_helpers_stop_what_they_start(tmp_path: Path) -> None:
    proc = ManagedProcess([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                          log_path=tmp_path / "p.log", env={"X_TEST": "1"}).start()
    assert proc.pid is not None and proc.running
    pid = proc.pid
    deadline = time.monotonic() + 5
    while "up" not in proc.log_tail() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "up" in proc.log_tail()
    assert proc.stop() == -signal.SIGTERM
    assert not proc.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", free_port(), timeout=0.1)
