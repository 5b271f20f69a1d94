"""A lean HTTP/1.1 client for forwarded requests without a body: the proxy's hot path.

Why not `aiohttp.ClientSession` for these: its per-request machinery (ClientRequest/ClientResponse
objects, auto headers, traces, middlewares, connector bookkeeping) is most of a proxied request's cost.
On the 2-core bench machine a minimal aiohttp pass-through proxy spent ~160 us of CPU per small request
with `ClientSession` and ~70 us with this client. Here a request is one pre-serialised write on a pooled
connection, and the answer comes from aiohttp's own `ResponseHandler` protocol (the C llhttp parser,
payload flow control, sock_read timeout, ServerDisconnected/ClientPayloadError semantics), so what the
proxy reads and the errors it sees are those of `ClientSession`.

Kept the same as `ClientSession.request` (see `proxy.http`): `Host` first, from the upstream URL; the
auto `Accept: */*` when absent (User-Agent and Accept-Encoding are never added); `Content-Length: 0`
for methods that carry a body; 1xx interim answers skipped; bodies read until EOF when the answer has
no length; HEAD answers without a body; one retry for idempotent methods when a kept-alive connection
turns out to be closed. The pool hands out the most recently used idle connection first (a burst's
extra connections age out after `keepalive_timeout` instead of serving the next request cold) and caps
connections per upstream like `TCPConnector(limit_per_host=...)`.

Requests with a body, and https upstreams, stay with `ClientSession` (chunked uploads, 100-continue,
TLS contexts): they are not the hot path.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

KEEPALIVE_TIMEOUT = 30.0
LIMIT_PER_HOST = 128
READ_BUFSIZE = 1 << 16
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # no `Content-Length: 0` added


@dataclass(slots=True)
class _Host:
    """One upstream address: idle connections (newest last), how many exist, who waits for one."""

    idle: list[tuple[ResponseHandler, float]] = field(default_factory=list)
    count: int = 0
    waiters: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)


class UpstreamResponse:
    """The parts of `aiohttp.ClientResponse` the proxy uses; `release()` returns the connection."""

    __slots__ = ("_key", "_pool", "_proto", "content", "headers", "reason", "status")

    def __init__(
        self,
        pool: UpstreamPool,
        key: tuple[str, int],
        proto: ResponseHandler,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content: aiohttp.StreamReader,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content
        self._pool = pool
        self._key = key
        self._proto: ResponseHandler | None = proto

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    def release(self) -> None:
        """Back to the pool when the answer was read to its end, else the connection is closed."""
        proto, self._proto = self._proto, None
        if proto is not None:
            self._pool.put(self._key, proto)


class UpstreamPool:
    """Keep-alive connections to plain-HTTP upstreams, most recently used first."""

    def __init__(
        self, *, limit_per_host: int = LIMIT_PER_HOST, keepalive_timeout: float = KEEPALIVE_TIMEOUT
    ) -> None:
        self.limit_per_host = limit_per_host
        self.keepalive_timeout = keepalive_timeout
        self._hosts: dict[tuple[str, int], _Host] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @staticmethod
    def handles(url: URL) -> bool:
        """Plain http with a host and no userinfo: what this client speaks."""
        return url.scheme == "http" and bool(url.raw_host) and not url.raw_user and not url.raw_password

    async def request(self, method: str, url: URL, target: str, headers: CIMultiDict[str], *,
                      connect_timeout: float | None, read_timeout: float | None) -> UpstreamResponse:
        """Send `method target` (no body) to `url`'s host; the answer's headers are in when this returns.

        Raises what `ClientSession.request` would: ConnectionTimeoutError, ClientOSError,
        ServerDisconnectedError, SocketTimeoutError, ClientResponseError (an unparsable answer).
        """
        host = url.raw_host
        port = url.port
        assert host is not None and port is not None
        key = (host, port)
        head = serialize_head(method, target, url.host_port_subcomponent or host, headers)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        retry = method in IDEMPOTENT
        fresh = False
        while True:
            # The common case takes an idle connection without awaiting anything (fewer coroutine hops).
            proto = None if fresh else self._take_idle(key)
            if proto is None:
                proto = await self._get(key, connect_timeout, fresh=fresh)
            try:
                proto.set_response_params(skip_payload=method == "HEAD", read_until_eof=True,
                                          auto_decompress=False, read_timeout=read_timeout,
                                          read_bufsize=READ_BUFSIZE)
                transport = proto.transport
                if transport is None or transport.is_closing():
                    raise aiohttp.ServerDisconnectedError()
                transport.write(head)
                proto.start_timeout()
                while True:
                    message, payload = await proto.read()
                    code = message.code
                    if code < 100 or code > 199 or code == 101:  # 1xx: interim, the answer follows
                        break
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                self._discard(key, proto)
                # Typically a kept-alive connection the upstream had just closed (RFC 9112 §9.3.1): once
                # more for idempotent methods, as ClientSession does, on a new connection (the other
                # idle ones may be just as stale).
                if not retry:
                    raise
                retry, fresh = False, True
                continue
            except HttpProcessingError as exc:
                self._discard(key, proto)
                raise aiohttp.ClientResponseError(
                    aiohttp.RequestInfo(url, method, CIMultiDictProxy(headers), url), (),
                    status=exc.code, message=exc.message, headers=exc.headers) from exc
            except BaseException:
                self._discard(key, proto)
                raise
            return UpstreamResponse(self, key, proto, code, message.reason, message.headers, payload)

    def _take_idle(self, key: tuple[str, int]) -> ResponseHandler | None:
        """The most recently used idle connection that is still good, if any."""
        entry = self._hosts.get(key)
        if entry is None or self._closed:
            return None
        idle = entry.idle
        while idle:
            proto, _ = idle.pop()
            if proto.is_connected() and not proto.should_close:
                return proto
            proto.close()
            entry.count -= 1
        return None

    async def _get(self, key: tuple[str, int], connect_timeout: float | None, *,
                   fresh: bool = False) -> ResponseHandler:
        """An idle connection still open (unless `fresh`), else a new one within the limit (waiting
        for a turn when the limit is reached)."""
        if self._closed:
            raise aiohttp.ClientConnectionError("the upstream pool is closed")
        entry = self._hosts.get(key)
        if entry is None:
            entry = self._hosts[key] = _Host()
        idle = entry.idle
        while True:
            while idle and not fresh:
                proto, _ = idle.pop()
                if proto.is_connected() and not proto.should_close:
                    return proto
                proto.close()
                entry.count -= 1
            if entry.count < self.limit_per_host:
                break
            if idle:  # a new connection is wanted and the limit is reached: the oldest idle one makes room
                proto, _ = idle.pop(0)
                proto.close()
                entry.count -= 1
                continue
            waiter: asyncio.Future[None] = self._running_loop().create_future()
            entry.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled() and waiter.done():
                    self._wake(entry)  # pass the turn on
                else:
                    try:
                        entry.waiters.remove(waiter)
                    except ValueError:
                        pass
                raise
        entry.count += 1
        try:
            return await self._connect(key, connect_timeout)
        except BaseException:
            entry.count -= 1
            self._wake(entry)
            raise

    async def _connect(self, key: tuple[str, int], connect_timeout: float | None) -> ResponseHandler:
        loop = self._running_loop()
        host, port = key
        try:
            async with asyncio.timeout(connect_timeout):
                _, proto = await loop.create_connection(lambda: ResponseHandler(loop), host, port)
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host http://{host}:{port}") from exc
        except OSError as exc:
            raise aiohttp.ClientOSError(
                exc.errno, f"Cannot connect to host {host}:{port} [{exc.strerror or exc}]"
            ) from exc
        return proto

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the pool works in (noted by its first request: no per-call lookup)."""
        assert self._loop is not None
        return self._loop

    def put(self, key: tuple[str, int], proto: ResponseHandler) -> None:
        """A finished exchange: keep the connection if it can carry another request, else close it."""
        entry = self._hosts.get(key)
        if entry is None or self._closed or not proto.is_connected() or proto.should_close:
            self._discard(key, proto)
            return
        loop = self._running_loop()
        entry.idle.append((proto, loop.time()))
        self._wake(entry)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.keepalive_timeout, self._sweep)

    def _discard(self, key: tuple[str, int], proto: ResponseHandler) -> None:
        proto.close()
        entry = self._hosts.get(key)
        if entry is not None:
            entry.count -= 1
            self._wake(entry)

    @staticmethod
    def _wake(entry: _Host) -> None:
        while entry.waiters:
            waiter = entry.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close connections idle longer than `keepalive_timeout` (the oldest sit at the front)."""
        self._sweeper = None
        loop = self._running_loop()
        deadline = loop.time() - self.keepalive_timeout
        pending = False
        for entry in self._hosts.values():
            idle = entry.idle
            stale = 0
            while stale < len(idle) and idle[stale][1] <= deadline:
                stale += 1
            for proto, _ in idle[:stale]:
                proto.close()
                entry.count -= 1
            del idle[:stale]
            pending = pending or bool(idle)
        if pending and not self._closed:
            self._sweeper = loop.call_later(self.keepalive_timeout / 2, self._sweep)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for entry in self._hosts.values():
            for proto, _ in entry.idle:
                proto.close()
            entry.count -= len(entry.idle)
            entry.idle.clear()
            for waiter in entry.waiters:
                if not waiter.done():
                    waiter.set_exception(aiohttp.ClientConnectionError("the upstream pool is closed"))
            entry.waiters.clear()


def serialize_head(method: str, target: str, host: str, headers: CIMultiDict[str]) -> bytes:
    """Request line and headers as `ClientSession` would send them for a body-less request."""
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    if "Host" not in headers:
        lines.append(f"Host: {host}\r\n")
    lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
    if "Accept" not in headers:
        lines.append("Accept: */*\r\n")
    if method not in NO_BODY_METHODS and "Content-Length" not in headers:
        lines.append("Content-Length: 0\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        # A CR or LF inside a name or value would split it into a header of someone's choosing.
        raise ValueError("Newline or carriage return character detected in HTTP status message or header")
    return text.encode("utf-8", "surrogateescape")
