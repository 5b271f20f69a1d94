"""A lean WebSocket load generator: what wrk is to HTTP, for echo round trips.

Why not aiohttp's client: it costs the load generator about as much CPU per message as the echo
server spends, and on a 2-core machine the load generator's CPU is taken from the processes being
measured. Here each connection is a bare `asyncio.Protocol`: the opening handshake is checked (101,
the accept key), then one pre-masked 64-byte text frame is written, the echo (a 66-byte unmasked
frame) is read and compared byte for byte, and the next frame goes out. Every connection keeps exactly
one message in flight, so `conns` is the number of messages in flight.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
import time
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MESSAGE = b"m" * 64
_MASK = os.urandom(4)
FRAME = bytes((0x81, 0x80 | len(MESSAGE))) + _MASK + bytes(b ^ _MASK[i & 3] for i, b in enumerate(MESSAGE))
ECHO = bytes((0x81, len(MESSAGE))) + MESSAGE
CLOSE = bytes((0x88, 0x82)) + _MASK + bytes(b ^ _MASK[i] for i, b in enumerate((1000).to_bytes(2, "big")))


class LoadError(Exception):
    pass


def text_frame(message: bytes) -> bytes:
    """`message` as one masked client text frame (under 64 KiB)."""
    head = bytes((0x81, 0x80 | len(message))) if len(message) < 126 else (
        bytes((0x81, 0x80 | 126)) + len(message).to_bytes(2, "big"))
    return head + _MASK + bytes(b ^ _MASK[i & 3] for i, b in enumerate(message))


def server_frame(message: bytes) -> bytes:
    """`message` as the server's unmasked text frame (under 64 KiB)."""
    head = bytes((0x81, len(message))) if len(message) < 126 else bytes((0x81, 126)) + len(message).to_bytes(
        2, "big")
    return head + message


class _Conn(asyncio.Protocol):
    def __init__(self, request: bytes, accept: bytes, frame: bytes = FRAME, echo: bytes = ECHO,
                 login: tuple[bytes, bytes] | None = None) -> None:
        self._request = request
        self._accept = accept
        self._frame, self._echo = frame, echo
        self._login = login   # (frame to send first, bytes its answer must contain)
        self._buf = b""
        self._open = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.finished: asyncio.Future[None] | None = None
        self.latencies: list[float] = []
        self._left = 0
        self._sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        if not self._open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            head, buf = buf[:end], buf[end + 4:]
            if not head.startswith(b"HTTP/1.1 101") or self._accept not in head:
                self._fail(LoadError(f"handshake refused: {head[:300]!r}"))
                return
            self._open = True
            if self._login is None:
                self.ready.set_result(None)
            else:
                assert self.transport is not None
                self.transport.write(self._login[0])
        if self._login is not None and self._open:
            size = _frame_size(buf)
            if size is None or len(buf) < size:
                self._buf = buf
                return
            if self._login[1] not in buf[:size]:
                self._fail(LoadError(f"login refused: {buf[:300]!r}"))
                return
            buf, self._login = buf[size:], None
            self.ready.set_result(None)
        echo = self._echo
        while len(buf) >= len(echo):
            if buf[:len(echo)] != echo:
                self._fail(LoadError(f"expected the echo, got {buf[:100]!r}"))
                return
            buf = buf[len(echo):]
            now = time.perf_counter()
            self.latencies.append(now - self._sent_at)
            self._left -= 1
            if self._left > 0:
                self._sent_at = now
                assert self.transport is not None
                self.transport.write(self._frame)
            elif self.finished is not None and not self.finished.done():
                self.finished.set_result(None)
        self._buf = buf

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(LoadError(f"connection lost: {exc!r}"))

    def _fail(self, exc: Exception) -> None:
        for fut in (self.ready, self.finished):
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    def run(self, count: int) -> asyncio.Future[None]:
        self._left = count
        self.finished = asyncio.get_running_loop().create_future()
        self._sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self._frame)
        return self.finished


def _frame_size(buf: bytes) -> int | None:
    """The whole size of the unmasked server frame at the start of `buf` (None: header incomplete)."""
    if len(buf) < 2:
        return None
    length = buf[1] & 0x7F
    if length < 126:
        return 2 + length
    if length == 126:
        return None if len(buf) < 4 else 4 + int.from_bytes(buf[2:4], "big")
    return None if len(buf) < 10 else 10 + int.from_bytes(buf[2:10], "big")


async def round_trips(url: str, headers: dict[str, str], total: int, conns: int, *, frame: bytes = FRAME,
                      echo: bytes = ECHO,
                      login: tuple[bytes, bytes] | None = None) -> tuple[float, list[float]]:
    """(messages/s, latencies in s) of `total` echo round trips spread over `conns` connections,
    after a 10% warm-up. `frame`/`echo`: another request and its byte-exact answer (a JSON-RPC call);
    `login`: a frame each connection sends first, and what its answer must contain."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    loop = asyncio.get_running_loop()
    opened: list[_Conn] = []
    try:
        for _ in range(conns):
            key = base64.b64encode(os.urandom(16))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket",
                     "Connection: Upgrade", f"Sec-WebSocket-Key: {key.decode()}", "Sec-WebSocket-Version: 13",
                     *(f"{k}: {v}" for k, v in headers.items())]
            request = ("\r\n".join(lines) + "\r\n\r\n").encode()
            _, conn = await loop.create_connection(
                functools.partial(_Conn, request, accept, frame, echo, login), parts.hostname, parts.port)
            opened.append(conn)
            await conn.ready
        per_conn = max(1, total // conns)
        await asyncio.gather(*(c.run(max(1, per_conn // 10)) for c in opened))
        for c in opened:
            c.latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(c.run(per_conn) for c in opened))
        elapsed = time.perf_counter() - started
        return per_conn * conns / elapsed, [x for c in opened for x in c.latencies]
    finally:
        for c in opened:   # a CLOSE (1000), then the connection; the server needs no answer to that
            if c.transport is not None and not c.transport.is_closing():
                c.transport.write(CLOSE)
                c.transport.close()
