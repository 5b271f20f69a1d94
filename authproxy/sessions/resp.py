"""A small asyncio RESP2 client for the session check's hot reads (GET, PEXPIRE, PTTL) — nothing else.

Why it exists: with the in-process session cache off or cold, every request reads one sealed blob from
Redis, and redis-py's asyncio client spends ~100–150 µs of CPU per GET on pool checkout, a timeout object,
command packing and response callbacks. This client writes pre-packed commands to ONE connection,
pipelines them FIFO against futures and parses replies with `hiredis.Reader` (the C parser redis-py uses
too). `RedisStore` sends its hot reads here and everything else (writes, scripts, pub/sub) through redis-py.

How it stays correct:
- One connection, (re)connected lazily: connect (TCP, TLS for rediss://, unix socket) + AUTH + SELECT (or
  PING) under one deadline. Concurrent callers share one attempt.
- Requests made in one loop iteration go out in one write; replies resolve the oldest pending future. A
  caller that gave up still gets its reply read and dropped, so replies never shift.
- No timer per call: a watchdog ticking every <= 0.25 s fails everything and drops the connection when the
  oldest pending request has waited `timeout` s without a byte from Redis.
- Any failure (connection lost, protocol error, timeout) fails every pending call with `StoreError` and
  throws the connection away: it is never reused, so replies can never be mixed up. The next call
  reconnects; after a failed connect, calls fail fast for a short backoff (0.05 s doubling to 1 s) so a
  dead Redis is not hammered.
- Error messages and log lines name the server by its redacted URL and never contain the password.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url

from authproxy.errors import ConfigError, StoreError

__all__ = ["ConnectionLost", "Endpoint", "RedisReplyError", "RespClient", "pack", "redact_url"]

log = logging.getLogger("authproxy.store")

BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0
WATCHDOG_MAX_INTERVAL = 0.25


class ConnectionLost(StoreError):
    """The connection closed under this request; the hot commands are idempotent, so they retry once."""


class RedisReplyError(StoreError):
    """Redis answered this one command with an error (`-ERR ...`); the connection stays usable."""

    def __init__(self, message: str, *, reply: str) -> None:
        super().__init__(message)
        self.reply = reply


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP2 (array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def redact_url(url: str) -> str:
    """The URL with any password (userinfo or query) replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    query = "&".join(f"{k}=***" if "password" in k.lower() else f"{k}={v}"
                     for k, v in (pair.partition("=")[::2] for pair in parts.query.split("&") if pair))
    # Not geturl(): it would turn unix:///path into unix:/path.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, read from a redis://, rediss:// or unix:// URL as redis-py reads it."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None                       # unix socket
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """Parse with redis-py's own `parse_url` (and its TLS defaults): both clients reach one server."""
        try:
            kw: dict[str, Any] = dict(parse_url(url))
            context: ssl.SSLContext | None = None
            if kw.get("connection_class") is SSLConnection:
                ssl_kw = {k: v for k, v in kw.items() if k.startswith("ssl_")}
                context = SSLConnection(**ssl_kw).ssl_context.get()
            return cls(host=str(kw.get("host") or "localhost"), port=int(kw.get("port") or 6379),
                       path=kw.get("path"), tls=context, username=kw.get("username"),
                       password=kw.get("password"), db=int(kw.get("db") or 0))
        except (TypeError, ValueError, OSError) as exc:
            raise ConfigError([(f"session: REDIS_URL cannot be used ({type(exc).__name__}) but it's "
                                f"configured as '{redact_url(url)}'")]) from None

    def handshake(self) -> list[tuple[str, bytes]]:
        """Commands sent on every new connection (as redis-py does): AUTH, SELECT; PING when neither."""
        commands: list[tuple[str, bytes]] = []
        if self.username or self.password:
            auth = (self.username, self.password or "") if self.username else (self.password or "",)
            commands.append(("AUTH", pack("AUTH", *auth)))
        if self.db:
            commands.append(("SELECT", pack("SELECT", self.db)))
        return commands or [("PING", pack("PING"))]


class _Connection(asyncio.Protocol):
    """One socket: a FIFO of futures, a write buffer flushed once per loop iteration, a hiredis reader."""

    def __init__(self, client: RespClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self._reader = hiredis.Reader()
        self._wbuf: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.progress = 0  # bumped on every chunk received: the watchdog's sign of life
        self.dead = False

    def request(self, payload: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._loop.create_future()
        if self.dead:  # it died between a connect and its caller resuming
            fut.set_exception(ConnectionLost(f"{self._client.label}: connection lost"))
            return fut
        self.pending.append(fut)
        if not self._wbuf:
            self._loop.call_soon(self._flush)
        self._wbuf.append(payload)
        return fut

    def _flush(self) -> None:
        buf, self._wbuf = self._wbuf, []
        if not self.dead and self.transport is not None:
            self.transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        self.progress += 1
        reader = self._reader
        pending = self.pending
        reader.feed(data)
        try:
            reply = reader.gets()
            while reply is not False:
                fut = pending.popleft()  # IndexError: a reply nobody asked for
                if not fut.done():
                    if type(reply) is hiredis.ReplyError:
                        fut.set_exception(RedisReplyError(f"{self._client.label}: Redis answered: {reply}",
                                                          reply=str(reply)))
                    else:
                        fut.set_result(reply)
                reply = reader.gets()
        except (hiredis.ProtocolError, IndexError) as exc:
            self.fail(f"protocol error ({type(exc).__name__}); connection dropped")

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection lost ({type(exc).__name__}: {exc})" if exc else "connection closed by Redis",
                  error=ConnectionLost)

    def fail(self, detail: str, *, error: type[StoreError] = StoreError) -> None:
        """Fail every pending call and drop the socket for good (it is never reused after an error)."""
        if self.dead:
            return
        self.dead = True
        if self.transport is not None:
            self.transport.abort()
        pending, self.pending = self.pending, deque()
        for fut in pending:
            if not fut.done():
                fut.set_exception(error(f"{self._client.label}: {detail}"))
        self._client._connection_failed(self, detail)


class RespClient:
    """RESP2 over one pipelined connection; every failure is a `StoreError` without the password.

    `label` names the server in messages (give the redacted URL); `timeout` bounds the connect and how long
    a request may wait for its reply (checked by the watchdog, so a hung Redis fails within
    `timeout` + one watchdog interval).
    """

    def __init__(self, endpoint: Endpoint, *, label: str, timeout: float = 2.0) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.endpoint = endpoint
        self.label = label
        self.timeout = timeout
        ticks = max(1, -(-timeout // WATCHDOG_MAX_INTERVAL))  # timeout is a whole number of ticks
        self.watchdog_interval = timeout / ticks
        self._handshake = endpoint.handshake()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closed = False
        self._retry_at = 0.0
        self._backoff = 0.0
        self._last_error = ""
        self._failing = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_head: asyncio.Future[Any] | None = None
        self._watch_progress = -1
        self._watch_since = 0.0

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 2.0) -> RespClient:
        return cls(Endpoint.from_url(url), label=f"redis {redact_url(url)}", timeout=timeout)

    def __repr__(self) -> str:
        return f"<RespClient {self.label!r} connected={self._conn is not None}>"

    # -- commands ------------------------------------------------------------------------------------
    # GET, PEXPIRE and PTTL are idempotent: one that meets a connection that just closed (typically one
    # left stale by a Redis restart) is sent once more on a fresh connection.

    def get(self, key: bytes) -> Awaitable[bytes | None]:
        return self._call(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key), True)

    def pexpire(self, key: bytes, ms: int) -> Awaitable[int]:
        """1 when the key exists and got its new TTL, 0 when it does not exist."""
        ttl = b"%d" % ms
        return self._call(b"*3\r\n$7\r\nPEXPIRE\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                          % (len(key), key, len(ttl), ttl), True)

    def pttl(self, key: bytes) -> Awaitable[int]:
        """Milliseconds left; -1 without expiry, -2 when the key does not exist."""
        return self._call(b"*2\r\n$4\r\nPTTL\r\n$%d\r\n%b\r\n" % (len(key), key), True)

    def execute(self, *args: bytes | str | int, idempotent: bool = False) -> Awaitable[Any]:
        """Any other single command (PING, SET in tests): the raw hiredis reply; no retry unless told."""
        return self._call(pack(*args), idempotent)

    async def _call(self, payload: bytes, idempotent: bool) -> Any:
        conn = self._conn
        if conn is None:
            conn = await self.connect()
        try:
            return await conn.request(payload)
        except ConnectionLost:
            if not idempotent:
                raise
        return await (await self.connect()).request(payload)

    def retry_now(self) -> None:
        """Forget the reconnect back-off: the caller (a circuit breaker's probe) knows Redis is back."""
        self._retry_at = 0.0

    # -- connection ----------------------------------------------------------------------------------

    async def connect(self) -> _Connection:
        """The live connection, connecting first if needed (one attempt shared by concurrent callers)."""
        if self._closed:
            raise StoreError(f"{self.label}: client closed")
        conn = self._conn
        if conn is not None:
            return conn
        loop = self._loop = asyncio.get_running_loop()
        task = self._connecting
        if task is None:
            wait = self._retry_at - loop.time()
            if wait > 0:
                raise StoreError(f"{self.label}: unavailable, next connect attempt in {wait:.2f} s "
                                 f"(last error: {self._last_error})")
            task = self._connecting = loop.create_task(self._connect(loop), name="authproxy-resp-connect")
            task.add_done_callback(_retrieve)
        try:
            # Shielded: a caller that gives up must not cancel the attempt the others wait for.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                raise StoreError(f"{self.label}: client closed") from None  # close() stopped the attempt
            raise

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:  # noqa: C901 - worded per failure
        ep = self.endpoint
        conn = _Connection(self, loop)
        futures: list[asyncio.Future[Any]] = []
        step = "connect"
        try:
            async with asyncio.timeout(self.timeout):
                if ep.path is not None:
                    await loop.create_unix_connection(lambda: conn, ep.path)
                else:
                    await loop.create_connection(lambda: conn, ep.host, ep.port, ssl=ep.tls,
                                                 server_hostname=ep.host if ep.tls else None)
                futures = [conn.request(payload) for _, payload in self._handshake]
                for (name, _), fut in zip(self._handshake, futures, strict=True):
                    step = name  # the one a failure below is about
                    await fut
        except asyncio.CancelledError:
            conn.fail("connect cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a password-free StoreError
            for fut in futures:
                fut.cancel()  # their outcome is in `exc`: nothing left to report later
            if isinstance(exc, TimeoutError):
                detail = f"no answer to {step} within {self.timeout:g} s"
            elif isinstance(exc, RedisReplyError):
                detail = f"{step} refused: {exc.reply}"
            elif isinstance(exc, StoreError):  # the connection failed while we waited
                detail = str(exc).removeprefix(f"{self.label}: ")
            else:
                detail = f"{step} failed: {type(exc).__name__}: {exc}"
            conn.fail(detail)
            self._backoff = min(BACKOFF_MAX, self._backoff * 2 or BACKOFF_FIRST)
            self._retry_at = loop.time() + self._backoff
            self._last_error = detail
            if not self._failing:
                self._failing = True
                log.warning("%s: hot-read connection failed: %s (calls fail fast; next attempt after "
                            "a short backoff)", self.label, detail)
            raise StoreError(f"{self.label}: {detail}") from None
        finally:
            self._connecting = None
        if self._closed:
            conn.fail("client closed")
            raise StoreError(f"{self.label}: client closed")
        if self._failing:
            log.info("%s: hot-read connection re-established", self.label)
        self._failing = False
        self._backoff = self._retry_at = 0.0
        self._conn = conn
        self._watch_head = None
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.watchdog_interval, self._tick)
        return conn

    def _connection_failed(self, conn: _Connection, detail: str) -> None:
        """Called by a connection as it dies: forget it; the next call reconnects at once."""
        if self._conn is not conn:
            return
        self._conn = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if not self._closed and not self._failing:
            self._failing = True
            log.warning(
                "%s: hot-read connection dropped: %s (reconnecting on the next call)", self.label, detail
            )

    def _tick(self) -> None:
        """Each watchdog interval: drop the connection if its oldest request waited `timeout` s unanswered."""
        assert self._loop is not None
        self._watchdog = None
        conn = self._conn
        if conn is None:
            return
        if conn.pending:
            now = self._loop.time()
            head = conn.pending[0]
            if head is not self._watch_head or conn.progress != self._watch_progress:
                self._watch_head, self._watch_progress, self._watch_since = head, conn.progress, now
            elif now - self._watch_since >= self.timeout - 1e-3:
                self._watch_head = None
                conn.fail(
                    f"no reply within {self.timeout:g} s (Redis hung or overloaded); connection dropped"
                )
                return
        else:
            self._watch_head = None
        self._watchdog = self._loop.call_later(self.watchdog_interval, self._tick)

    async def close(self) -> None:
        """Fail whatever is pending and close; later calls raise StoreError. Safe to call twice."""
        self._closed = True
        task, self._connecting = self._connecting, None
        if task is not None:
            task.cancel()
        conn = self._conn
        if conn is not None:
            conn.fail("client closed")
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a connect attempt's outcome as seen, also when every caller that waited for it gave up."""
    if not task.cancelled():
        task.exception()
