"""The bridge's own upstream handshake (proxy/ws_upstream.py) against real servers on loopback.

An aiohttp WebSocket server (plain and over TLS with a throw-away certificate) for what a good
upstream does, and a raw asyncio server for the answers a relay must refuse: a wrong accept key, an
extension or subprotocol that was never offered, something that is not HTTP, an endless head.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from authproxy.proxy.ws_upstream import HandshakeInvalid, HandshakeRefused, accept_for, open_upstream
from authproxy.tls import self_signed, server_context

pytestmark = pytest.mark.both_loops

Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """serve(tls=False) -> base URL of an aiohttp app: /ws echoes (subprotocol "chat"), /nope is 404."""
    runners: list[web.AppRunner] = []

    async def ws(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse(protocols=("chat",))
        await sock.prepare(request)
        async for msg in sock:
            if msg.type is WSMsgType.TEXT:
                await sock.send_str(msg.data + "|" + request.headers.get("X-Seen", ""))
        return sock

    async def start(*, tls: bool = False) -> str:
        app = web.Application()
        app.router.add_get("/ws", ws)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        context = server_context(*self_signed(tmp_path / "tls", "127.0.0.1")[:2]) if tls else None
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def masked_text(text: str) -> bytes:
    payload, mask = text.encode(), os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


async def echo_over(transport: asyncio.Transport, text: str) -> bytes:
    """Write one masked text frame on a bare transport and collect the answer frame's bytes."""
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Collect(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got.put_nowait(data)

    transport.set_protocol(Collect())
    transport.resume_reading()
    transport.write(masked_text(text))
    data = b""
    while len(data) < 2 or len(data) < 2 + data[1]:
        data += await asyncio.wait_for(got.get(), 2)
    return data


async def test_a_plain_upstream_handshake_then_bytes(serve: Serve) -> None:
    base = await serve()
    sock = await open_upstream(URL(base + "/ws"), CIMultiDict({"X-Seen": "yes"}), ["other", "chat"],
                               ssl_context=None)
    try:
        assert sock.protocol == "chat"
        assert await echo_over(sock.transport, "hi") == bytes([0x81, 6]) + b"hi|yes"
    finally:
        sock.transport.close()


async def test_a_tls_upstream_is_verified(serve: Serve, tmp_path: Path) -> None:
    base = await serve(tls=True)
    with pytest.raises(ssl.SSLCertVerificationError):      # the default context does not trust it
        await open_upstream(URL(base + "/ws"), CIMultiDict(), [], ssl_context=None)
    trusting = ssl.create_default_context(cafile=str(tmp_path / "tls" / "selfsigned.crt"))
    sock = await open_upstream(URL(base + "/ws"), CIMultiDict(), [], ssl_context=trusting)
    try:
        assert sock.protocol is None
        assert await echo_over(sock.transport, "tls") == bytes([0x81, 4]) + b"tls|"
    finally:
        sock.transport.close()


async def test_a_refusal_carries_its_status_and_headers(serve: Serve) -> None:
    base = await serve()
    with pytest.raises(HandshakeRefused) as refused:
        await open_upstream(URL(base + "/nope"), CIMultiDict(), [], ssl_context=None)
    assert refused.value.status == 404
    assert refused.value.headers["Content-Type"].startswith("text/plain")


def _answer_with(make: Callable[[bytes], bytes]) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                             Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        writer.write(make(key))
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    return handle


def _switch(key: bytes, *extra: str, accept: str | None = None) -> bytes:
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept or accept_for(key.decode())}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("answer", [
    pytest.param(lambda key: _switch(key, accept="d3Jvbmc="), id="wrong-accept"),
    pytest.param(lambda key: _switch(key, "Sec-WebSocket-Extensions: permessage-deflate"), id="extension"),
    pytest.param(lambda key: _switch(key, "Sec-WebSocket-Protocol: never-offered"), id="subprotocol"),
    pytest.param(lambda key: b"SSH-2.0-OpenSSH_9.2\r\n\r\n", id="not-http"),
    pytest.param(lambda key: b"HTTP/1.1 101 OK\r\nX: " + b"a" * 70_000, id="endless-head"),
])
async def test_answers_that_do_not_complete_a_handshake_are_refused(answer: Callable[[bytes], bytes]) -> None:
    server = await asyncio.start_server(_answer_with(answer), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(HandshakeInvalid):
            await asyncio.wait_for(open_upstream(URL(f"http://127.0.0.1:{port}/ws"), CIMultiDict(), ["chat"],
                                                 ssl_context=None), 2)
    finally:
        server.close()
        await server.wait_closed()


async def test_frames_that_came_with_the_101_are_kept(serve: Serve) -> None:
    early = bytes([0x81, 5]) + b"early"
    server = await asyncio.start_server(_answer_with(lambda key: _switch(key) + early), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sock = await open_upstream(URL(f"http://127.0.0.1:{port}/ws"), CIMultiDict(), [], ssl_context=None)
        assert sock.early == early
        sock.transport.close()
    finally:
        server.close()
        await server.wait_closed()
