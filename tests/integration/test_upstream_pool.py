"""The lean upstream client (proxy/upstream.py) against raw sockets: what it sends, how it reads every
kind of answer, and when it keeps, retries or drops a connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from authproxy.proxy.upstream import UpstreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawServer:
    """A TCP server whose per-connection behaviour is a test's coroutine; it records what arrived."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> URL:
        assert self.server is not None
        return URL(f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}")

    async def read_head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        raw = RawServer(handler)
        raw.server = await asyncio.start_server(raw._serve, "127.0.0.1", 0)
        servers.append(raw)
        return raw

    yield start
    for raw in servers:
        assert raw.server is not None
        raw.server.close()
        await raw.server.wait_closed()


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool(limit_per_host=4, keepalive_timeout=30)
    yield p
    await p.close()


def answering(*answers: bytes, close_after: bool = False) -> Callable[[RawServer], Handler]:
    """Each request on a connection gets the next answer; optionally the connection closes after them."""
    def make(raw: RawServer) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
            for answer in answers:
                await raw.read_head(reader)
                writer.write(answer)
                await writer.drain()
            if not close_after:
                await reader.read()  # until the client goes
        return handler
    return make


async def start_answering(serve: Callable[[Handler], Awaitable[RawServer]], *answers: bytes,
                          close_after: bool = False) -> RawServer:
    raw_box: list[RawServer] = []
    make = answering(*answers, close_after=close_after)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await make(raw_box[0])(reader, writer, n)

    raw = await serve(handler)
    raw_box.append(raw)
    return raw


async def get(pool: UpstreamPool, raw: RawServer, method: str = "GET", target: str = "/x",
              headers: CIMultiDict[str] | None = None, read_timeout: float | None = 5) -> tuple[int, bytes]:
    resp = await pool.request(method, raw.url, target, headers if headers is not None else CIMultiDict(),
                              connect_timeout=5, read_timeout=read_timeout)
    try:
        return resp.status, await resp.content.read()
    finally:
        resp.release()


async def test_the_request_is_what_client_session_would_send(serve: Callable[[Handler], Awaitable[RawServer]],
                                                             pool: UpstreamPool) -> None:
    raw = await start_answering(serve, OK, OK, OK)
    assert await get(pool, raw, target="/a%2Fb/../c?q=%41", headers=CIMultiDict(
        [("X-One", "1"), ("x-one", "2"), ("Cookie", "a=b")])) == (200, b"ok")
    head = raw.heads[0].decode()
    lines = head.split("\r\n")
    assert lines[0] == "GET /a%2Fb/../c?q=%41 HTTP/1.1"                 # the target byte for byte
    assert lines[1] == f"Host: 127.0.0.1:{raw.url.port}"
    assert lines[2:5] == ["X-One: 1", "x-one: 2", "Cookie: a=b"]      # order and repeats kept
    assert "Accept: */*" in lines and "User-Agent" not in head and "Accept-Encoding" not in head
    assert "Content-Length" not in head
    await get(pool, raw, method="DELETE")
    assert "Content-Length: 0" in raw.heads[1].decode()                 # methods that carry a body
    await get(pool, raw, headers=CIMultiDict([("Host", "app.example"), ("Accept", "text/html")]))
    assert "Host: app.example\r\n" in raw.heads[2].decode() and "*/*" not in raw.heads[2].decode()
    assert raw.connections == 1                                         # kept alive throughout


async def test_a_header_value_cannot_smuggle_a_line(serve: Callable[[Handler], Awaitable[RawServer]],
                                                    pool: UpstreamPool) -> None:
    raw = await start_answering(serve, OK)
    with pytest.raises(ValueError):
        await get(pool, raw, headers=CIMultiDict([("X-A", "1\r\nX-Injected: yes")]))
    assert raw.heads == []


async def test_interim_answers_are_skipped_and_bodies_of_every_framing_are_read(
        serve: Callable[[Handler], Awaitable[RawServer]], pool: UpstreamPool) -> None:
    raw = await start_answering(
        serve,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",                   # answer to HEAD: no body
        b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close_after=True)        # no length: until EOF
    assert await get(pool, raw) == (200, b"ok")
    assert await get(pool, raw) == (200, b"abcde")
    assert await get(pool, raw) == (204, b"")
    assert await get(pool, raw) == (304, b"")
    assert await get(pool, raw, method="HEAD") == (200, b"")
    assert await get(pool, raw) == (200, b"until the end")
    assert raw.connections == 1


async def test_a_stale_kept_alive_connection_is_retried_once_for_idempotent_methods(
        serve: Callable[[Handler], Awaitable[RawServer]], pool: UpstreamPool) -> None:
    raw = await start_answering(serve, OK, close_after=True)    # every connection: one answer, then closed
    assert await get(pool, raw) == (200, b"ok")
    await asyncio.sleep(0.05)                                   # the close reaches the pooled connection
    assert await get(pool, raw) == (200, b"ok")
    assert raw.connections == 2

    def closing_on_second_request() -> Handler:
        """First connection: answers one request, reads the next, then closes without an answer."""
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK)
            await writer.drain()
            if n == 1:
                await reader.readuntil(b"\r\n\r\n")
                return
            await reader.read()
        return handler

    raw = await serve(closing_on_second_request())
    assert await get(pool, raw) == (200, b"ok")
    assert await get(pool, raw, method="PUT") == (200, b"ok")    # retried on a new connection
    assert raw.connections == 2
    raw = await serve(closing_on_second_request())
    assert await get(pool, raw) == (200, b"ok")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await get(pool, raw, method="POST")                      # not idempotent: no second try

    async def each_answers_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.05)                                # so that two requests need two connections
        writer.write(OK)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")                     # the next request: closed unanswered

    raw = await serve(each_answers_once)
    assert list(await asyncio.gather(get(pool, raw), get(pool, raw))) == [(200, b"ok")] * 2
    assert raw.connections == 2
    assert await get(pool, raw) == (200, b"ok")                  # the retry skips the other stale one
    assert raw.connections == 3


async def test_timeouts_refusals_and_garbage_raise_client_errors(
        serve: Callable[[Handler], Awaitable[RawServer]], pool: UpstreamPool) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.read()

    raw = await serve(silent)
    with pytest.raises(aiohttp.SocketTimeoutError) as timed_out:
        await get(pool, raw, read_timeout=0.1)
    assert isinstance(timed_out.value, TimeoutError)
    raw = await start_answering(serve, b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")
    with pytest.raises(aiohttp.ClientResponseError):
        await get(pool, raw)
    raw = await start_answering(
        serve, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", close_after=True
    )
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(pool, raw)
    url = raw.url
    assert raw.server is not None
    raw.server.close()
    await raw.server.wait_closed()
    with pytest.raises(aiohttp.ClientOSError):   # refused
        await pool.request("GET", url, "/", CIMultiDict(), connect_timeout=5, read_timeout=5)


async def test_connections_are_reused_newest_first_capped_and_aged_out(
        serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    seen: list[int] = []
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(n)
            if b"/slow" in head:
                await release.wait()
            writer.write(OK)
            await writer.drain()

    raw = await serve(handler)
    pool = UpstreamPool(limit_per_host=2, keepalive_timeout=0.2)
    try:
        first = asyncio.create_task(get(pool, raw, target="/slow"))
        second = asyncio.create_task(get(pool, raw, target="/slow"))
        third = asyncio.create_task(get(pool, raw, target="/slow"))
        await asyncio.sleep(0.1)
        assert raw.connections == 2 and not third.done()       # the third waits for a free connection
        release.set()
        assert [await t for t in (first, second, third)] == [(200, b"ok")] * 3
        assert raw.connections == 2
        seen.clear()
        await get(pool, raw)
        await get(pool, raw)
        assert seen[0] == seen[1]                               # the connection just returned serves next
        await asyncio.sleep(0.5)                                # idle beyond keepalive_timeout: closed
        await get(pool, raw)
        assert raw.connections == 3
    finally:
        await pool.close()


async def test_an_answer_not_read_to_its_end_does_not_go_back_to_the_pool(
        serve: Callable[[Handler], Awaitable[RawServer]], pool: UpstreamPool) -> None:
    raw = await start_answering(serve, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", OK)
    resp = await pool.request("GET", raw.url, "/", CIMultiDict(), connect_timeout=5, read_timeout=5)
    resp.release()                                              # body left unread
    raw2 = await start_answering(serve, OK)
    assert await get(pool, raw2) == (200, b"ok")
    await asyncio.sleep(0.05)
    assert raw.connections == 1
    resp = await pool.request("GET", raw.url, "/", CIMultiDict(), connect_timeout=5, read_timeout=5)
    resp.release()
    assert raw.connections == 2                                 # a new connection, not the half-read one
