"""Embedded session store: one SQLite file (stdlib sqlite3), shared safely by several worker processes.

Why this shape:
- One dedicated thread owns the connection, so disk I/O never blocks the event loop and sqlite3's
  thread rules hold without locks.
- WAL mode lets readers in other processes proceed while one writes; read-modify-write operations use
  `BEGIN IMMEDIATE` so concurrent processes serialise instead of deadlocking on lock upgrades.
- TTLs are wall-clock (`time.time()`) because rows outlive the process; expired rows are ignored on
  read and swept every `sweep_interval` s.
- Pub/sub across processes: `publish` appends to an `events` table (AUTOINCREMENT ids never repeat);
  every store polls for ids above the last one it saw every `poll_interval` s. This instance's own
  subscribers are called at once and skip the echo. Events older than `event_retention` s are pruned.
- Revocation cannot wait for that poll (other workers would serve a signed-out session for up to
  `poll_interval` s), and asking the database on every cache hit would undo the cache. So `revoke` also
  adds one to a shared generation: an 8-byte counter in `<file>-gen` (0600), memory-mapped by every
  process, which `generation()` reads on each cache hit (under 100 ns, no system call). Every cached session
  recorded the number it saw before its read, so after a revocation each worker re-reads each session
  once: one SELECT per active session per logout, cheaper than telling workers which one ended. The
  increment holds an flock on that file so two workers' revocations never lose a step; the number is
  one aligned 8-byte word read and written through a memoryview of unsigned 64-bit cells, which
  x86-64 and arm64 load and store whole. (WAL mode already maps a shared-memory file, `-shm`, so this
  asks nothing more of the filesystem: local, one host.)
- The file is created 0600 in a 0700 directory: it holds sealed sessions, but still nobody else's.
- Opening is serialised across processes by an flock on `<file>-open.lock`: switching a fresh file to
  WAL answers "database is locked" at once, without the busy timeout, when `--workers` start together.

Every sqlite3 error surfaces as `StoreError`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import functools
import logging
import mmap
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from authproxy.errors import StoreError
from authproxy.sessions.store import InvalidationCallback

log = logging.getLogger("authproxy.store")

T = TypeVar("T")

GENERATION_BYTES = 8  # the revocation generation: one native unsigned 64-bit word at offset 0

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key     TEXT PRIMARY KEY,
    value   BLOB NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires);
CREATE TABLE IF NOT EXISTS idx_meta (
    name    TEXT PRIMARY KEY,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idx (
    name    TEXT NOT NULL,
    member  TEXT NOT NULL,
    PRIMARY KEY (name, member)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    message TEXT NOT NULL,
    created REAL NOT NULL
);
"""


class SQLiteStore:
    """`SessionStore` in one SQLite file at `path` (created with its directory when missing)."""

    name = "sqlite"

    def __init__(self, path: Path, *, poll_interval: float = 0.5, sweep_interval: float = 60.0,
                 event_retention: float = 60.0, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval
        self.sweep_interval = sweep_interval
        self.event_retention = event_retention
        self.busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only in the worker thread
        self._poller: asyncio.Task[None] | None = None
        self._subscribers: dict[str, list[InvalidationCallback]] = {}
        self._last_event_id = 0  # worker thread only
        self._own_events: set[int] = set()  # worker thread only
        self.generation_path = self.path.with_name(self.path.name + "-gen")
        self._gen_fd = -1  # worker thread only (the flock around increments)
        self._gen_map: mmap.mmap | None = None  # worker thread: increments, and closing
        self._gen_cells: memoryview | None = None  # event loop: what generation() reads; None when closed

    def __repr__(self) -> str:
        return f"<SQLiteStore {str(self.path)!r}>"

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="authproxy-sqlite")
        try:
            await self._run(self._open)
        except BaseException:
            await self.close()
            raise
        assert self._gen_map is not None
        self._gen_cells = memoryview(self._gen_map).cast("Q")
        self._poller = asyncio.create_task(self._poll_forever(), name="authproxy-sqlite-events")

    async def close(self) -> None:
        cells, self._gen_cells = self._gen_cells, None
        if cells is not None:
            cells.release()  # the map can only close once no view holds it
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        executor = self._executor
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_conn)
        except sqlite3.Error as exc:
            log.warning("sqlite store %s: error while closing: %s", self.path, exc)
        finally:
            self._executor = None
            executor.shutdown(wait=False)

    async def ping(self) -> None:
        await self._run(lambda: self._db().execute("SELECT 1").fetchone())

    # -- key/value -------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        def op() -> bytes | None:
            row = self._db().execute("SELECT value FROM kv WHERE key = ? AND expires > ?",
                                     (key, time.time())).fetchone()
            return bytes(row[0]) if row is not None else None
        return await self._run(op)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        def op() -> None:
            self._db().execute(
                "INSERT INTO kv (key, value, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
                (key, bytes(value), time.time() + ttl))
        await self._run(op)

    async def replace(self, key: str, value: bytes, ttl: float) -> bool:
        def op() -> bool:
            now = time.time()
            cur = self._db().execute("UPDATE kv SET value = ?, expires = ? WHERE key = ? AND expires > ?",
                                     (bytes(value), now + ttl, key, now))
            return cur.rowcount > 0
        return await self._run(op)

    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        def op() -> bool:
            now = time.time()
            # One statement, hence atomic: insert, or take over a row that has already expired.
            cur = self._db().execute(
                "INSERT INTO kv (key, value, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires "
                "WHERE kv.expires <= ?",
                (key, bytes(value), now + ttl, now))
            return cur.rowcount == 1
        return await self._run(op)

    async def expire(self, key: str, ttl: float) -> bool:
        def op() -> bool:
            now = time.time()
            cur = self._db().execute("UPDATE kv SET expires = ? WHERE key = ? AND expires > ?",
                                     (now + ttl, key, now))
            return cur.rowcount == 1
        return await self._run(op)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0

        def op() -> int:
            now = time.time()
            count = 0
            with self._tx() as db:
                for key in keys:
                    row = db.execute("SELECT expires FROM kv WHERE key = ?", (key,)).fetchone()
                    if row is not None:
                        count += row[0] > now
                        db.execute("DELETE FROM kv WHERE key = ?", (key,))
            return count
        return await self._run(op)

    async def incr(self, key: str, window: float, amount: int = 1) -> int:
        def op() -> int:
            now = time.time()
            with self._tx() as db:
                row = db.execute("SELECT value, expires FROM kv WHERE key = ?", (key,)).fetchone()
                if row is None or row[1] <= now:
                    if amount < 0:
                        return 0
                    value, expires = amount, now + window
                else:
                    try:
                        value, expires = int(row[0]) + amount, row[1]
                    except ValueError:
                        raise StoreError(f"sqlite store: key {key!r} does not hold a counter") from None
                db.execute("INSERT INTO kv (key, value, expires) VALUES (?, ?, ?) "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                           "expires = excluded.expires", (key, str(value).encode(), expires))
            return value
        return await self._run(op)

    async def ttl(self, key: str) -> float | None:
        def op() -> float | None:
            now = time.time()
            row = self._db().execute("SELECT expires FROM kv WHERE key = ? AND expires > ?",
                                     (key, now)).fetchone()
            return max(0.0, float(row[0]) - now) if row is not None else None
        return await self._run(op)

    # -- index sets ------------------------------------------------------------------------------

    async def index_add(self, index: str, member: str, ttl: float) -> None:
        def op() -> None:
            now = time.time()
            with self._tx() as db:
                row = db.execute("SELECT expires FROM idx_meta WHERE name = ?", (index,)).fetchone()
                expires = now + ttl
                if row is not None and row[0] <= now:  # an expired set starts afresh
                    db.execute("DELETE FROM idx WHERE name = ?", (index,))
                elif row is not None:
                    expires = max(expires, row[0])  # keep the longer TTL
                db.execute("INSERT INTO idx_meta (name, expires) VALUES (?, ?) "
                           "ON CONFLICT (name) DO UPDATE SET expires = excluded.expires", (index, expires))
                db.execute("INSERT OR IGNORE INTO idx (name, member) VALUES (?, ?)", (index, member))
        await self._run(op)

    async def index_remove(self, index: str, member: str) -> None:
        def op() -> None:
            with self._tx() as db:
                db.execute("DELETE FROM idx WHERE name = ? AND member = ?", (index, member))
                if db.execute("SELECT 1 FROM idx WHERE name = ? LIMIT 1", (index,)).fetchone() is None:
                    db.execute("DELETE FROM idx_meta WHERE name = ?", (index,))
        await self._run(op)

    async def index_members(self, index: str) -> builtins.set[str]:
        def op() -> builtins.set[str]:
            rows = self._db().execute(
                "SELECT idx.member FROM idx JOIN idx_meta ON idx_meta.name = idx.name "
                "WHERE idx.name = ? AND idx_meta.expires > ?", (index, time.time())).fetchall()
            return {str(row[0]) for row in rows}
        return await self._run(op)

    async def keys(self, prefix: str) -> builtins.list[str]:
        def op() -> builtins.list[str]:
            # A range on the primary key (no LIKE: `_` and `%` in a prefix would be wildcards).
            rows = self._db().execute("SELECT key FROM kv WHERE key >= ? AND key < ? AND expires > ?",
                                      (prefix, prefix + "\U0010ffff", time.time())).fetchall()
            return [str(row[0]) for row in rows]
        return await self._run(op)

    # -- pub/sub ---------------------------------------------------------------------------------

    async def publish(self, channel: str, message: str) -> None:
        await self._run(self._insert_event, channel, message)
        self._dispatch(channel, message)

    def subscribe(self, channel: str, callback: InvalidationCallback) -> None:
        self._subscribers.setdefault(channel, []).append(callback)

    async def revoke(self, channel: str, message: str) -> None:
        def op() -> None:
            self._advance_generation()  # first: the promise holds even if the event cannot be written
            self._insert_event(channel, message)
        await self._run(op)
        self._dispatch(channel, message)

    def generation(self) -> int:
        cells = self._gen_cells
        return cells[0] if cells is not None else -1

    def _dispatch(self, channel: str, message: str) -> None:
        for callback in list(self._subscribers.get(channel, ())):
            try:
                callback(message)
            except Exception:
                log.exception("store subscriber for channel %r failed", channel)

    async def _poll_forever(self) -> None:
        """Deliver other processes' events; sweep expired rows now and then. Never dies on errors."""
        next_sweep = 0.0
        failing = False
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                for channel, message in await self._run(self._fetch_events):
                    self._dispatch(channel, message)
                if time.monotonic() >= next_sweep:
                    await self._run(self._sweep)
                    next_sweep = time.monotonic() + self.sweep_interval
                if failing:
                    log.info("sqlite store %s: event polling works again", self.path)
                failing = False
            except Exception as exc:  # noqa: BLE001 - the poller must survive anything
                if not failing:
                    log.warning("sqlite store %s: event polling failed (will retry): %s", self.path, exc)
                failing = True

    # -- worker-thread side ----------------------------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(self.path.with_name(self.path.name + "-open.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._wait_for_lock(lock_fd)
            self._open_locked()
        finally:
            os.close(lock_fd)  # releases the flock

    def _wait_for_lock(self, fd: int) -> None:
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreError(f"sqlite store {self.path}: another process kept it locked while "
                                     f"opening for {self.busy_timeout:g} s") from None
                time.sleep(0.01)

    @staticmethod
    def _private_fd(path: Path) -> int:
        """Open (create) `path` read-write, 0600 however it was found."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            mode = os.fstat(fd).st_mode
            if mode & 0o077:
                log.warning("sqlite store %s was readable by others (mode %o); tightening to 0600",
                            path, stat.S_IMODE(mode))
                os.fchmod(fd, 0o600)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _map_generation(self) -> None:
        """Map `<file>-gen`; a new one is sized (zeroed) under the open lock, a mapped one never resized."""
        fd = self._private_fd(self.generation_path)
        try:
            if os.fstat(fd).st_size < GENERATION_BYTES:
                os.ftruncate(fd, GENERATION_BYTES)
            self._gen_map = mmap.mmap(fd, GENERATION_BYTES)
        except BaseException:
            os.close(fd)
            raise
        self._gen_fd = fd

    def _open_locked(self) -> None:
        os.close(self._private_fd(self.path))
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            mode_row = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode_row is None or str(mode_row[0]).lower() != "wal":
                raise StoreError(f"sqlite store {self.path}: cannot enable WAL mode (got {mode_row!r})")
            conn.execute("PRAGMA synchronous=NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"sqlite store {self.path} has schema version {version}, newer than "
                                 f"this authproxy understands ({SCHEMA_VERSION}); upgrade authproxy")
            conn.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
            self._last_event_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            self._map_generation()
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        gen_map, self._gen_map = self._gen_map, None
        gen_fd, self._gen_fd = self._gen_fd, -1
        if gen_map is not None:
            gen_map.close()
        if gen_fd >= 0:
            os.close(gen_fd)
        if conn is not None:
            conn.close()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"sqlite store {self.path} is not open")
        return self._conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _insert_event(self, channel: str, message: str) -> None:
        cur = self._db().execute("INSERT INTO events (channel, message, created) VALUES (?, ?, ?)",
                                 (channel, message, time.time()))
        if cur.lastrowid is not None:
            self._own_events.add(cur.lastrowid)  # delivered locally by the caller; the poller skips it

    def _advance_generation(self) -> None:
        """Add one to the shared generation. The flock makes it one step per call across processes: a
        lost step could give a later number twice, and a cache entry could then survive the second."""
        gen_map = self._gen_map
        if gen_map is None:
            raise StoreError(f"sqlite store {self.path} is not open")
        fcntl.flock(self._gen_fd, fcntl.LOCK_EX)
        try:
            with memoryview(gen_map) as raw, raw.cast("Q") as cells:
                cells[0] = (cells[0] + 1) & 0xFFFF_FFFF_FFFF_FFFF
        finally:
            fcntl.flock(self._gen_fd, fcntl.LOCK_UN)

    def _fetch_events(self) -> list[tuple[str, str]]:
        rows = self._db().execute("SELECT id, channel, message FROM events WHERE id > ? ORDER BY id",
                                  (self._last_event_id,)).fetchall()
        out: list[tuple[str, str]] = []
        for event_id, channel, message in rows:
            self._last_event_id = event_id
            if event_id in self._own_events:
                self._own_events.discard(event_id)
            else:
                out.append((channel, message))
        return out

    def _sweep(self) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM kv WHERE expires <= ?", (now,))
            db.execute("DELETE FROM idx WHERE name IN (SELECT name FROM idx_meta WHERE expires <= ?)", (now,))
            db.execute("DELETE FROM idx_meta WHERE expires <= ?", (now,))
            db.execute("DELETE FROM events WHERE created < ?", (now - self.event_retention,))
        # Ids below the last one seen can no longer arrive.
        self._own_events = {i for i in self._own_events if i > self._last_event_id}

    # -- bridge ----------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the connection's thread; sqlite3 errors become StoreError."""
        executor = self._executor
        if executor is None:
            raise StoreError(f"sqlite store {self.path} is not started (or already closed)")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store {self.path}: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}") from exc
        except RuntimeError as exc:  # executor shut down by a concurrent close()
            raise StoreError(f"sqlite store {self.path} is closed") from exc
