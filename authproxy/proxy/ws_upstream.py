"""The upstream leg of a WebSocket bridge: our own opening handshake on a plain transport.

The relay (proxy/relay.py) needs the upstream connection as a bare transport it can read and write
bytes on. aiohttp's `ws_connect` hands back a message-level object instead, so the handshake is done
here: the request line and headers as the HTTP hot path writes them (`serialize_head`), the 101 answer
checked as RFC 6455 §4.1 asks (status, Upgrade, Connection, Sec-WebSocket-Accept for our key, a
subprotocol we offered, no extension since we offered none). Any other answer is a refusal carrying
its status and headers, so the caller can tell "credential expired" from "upstream broken".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
from dataclasses import dataclass
from typing import cast

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from authproxy.proxy.upstream import serialize_head

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 64 * 1024


def accept_for(key: str) -> str:
    """The Sec-WebSocket-Accept value that proves a server read `key`."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


class HandshakeRefused(Exception):
    """The upstream answered the upgrade with something other than 101."""

    def __init__(self, status: int, headers: CIMultiDictProxy[str]) -> None:
        super().__init__(f"upstream answered the WebSocket handshake with HTTP {status}")
        self.status = status
        self.headers = headers


class HandshakeInvalid(Exception):
    """A 101 that does not complete a WebSocket handshake (or an answer that is not HTTP)."""


@dataclass(frozen=True, slots=True)
class UpstreamSocket:
    transport: asyncio.Transport
    protocol: str | None      # the subprotocol the upstream chose
    early: bytes              # frames that arrived with the 101 (reading is paused until the relay starts)


class _Opening(asyncio.Protocol):
    """Reads the handshake answer's head, then pauses reading until the relay takes over."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            self._buf += data   # only until the transport's pause takes effect
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                self.head.set_exception(HandshakeInvalid("the answer's head is too large"))
            return
        assert self.transport is not None
        self.transport.pause_reading()
        self.head.set_result(bytes(self._buf[:end]))
        del self._buf[:end + 4]

    def rest(self) -> bytes:
        return bytes(self._buf)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(
                ConnectionResetError("the upstream closed the connection during the handshake")
            )


def _parse(head: bytes) -> tuple[int, CIMultiDictProxy[str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HandshakeInvalid("the answer is not HTTP/1.x")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeInvalid("malformed header line in the answer")
        headers.add(name, value.strip())
    return int(parts[1]), CIMultiDictProxy(headers)


async def open_upstream(url: URL, headers: CIMultiDict[str], protocols: list[str], *,
                        ssl_context: ssl.SSLContext | None) -> UpstreamSocket:
    """Connect to `url` (ws/http or wss/https) and complete the opening handshake.

    Raises HandshakeRefused (not a 101), HandshakeInvalid, OSError; the caller bounds the time.
    """
    host = url.raw_host
    if not host or url.port is None:
        raise HandshakeInvalid("the upstream URL has no host")
    secure = url.scheme in ("https", "wss")
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    out = CIMultiDict(headers)
    out["Upgrade"] = "websocket"
    out["Connection"] = "Upgrade"
    out["Sec-WebSocket-Key"] = key
    out["Sec-WebSocket-Version"] = "13"
    if protocols:
        out["Sec-WebSocket-Protocol"] = ", ".join(protocols)
    target = url.raw_path_qs or "/"
    request = serialize_head("GET", target, url.host_port_subcomponent or host, out)
    loop = asyncio.get_running_loop()
    transport, opening = await loop.create_connection(
        lambda: _Opening(request), host, url.port,
        ssl=(ssl_context or ssl.create_default_context()) if secure else None,
        server_hostname=url.host if secure else None)
    try:
        head = await opening.head
        status, answer = _parse(head)
        if status != 101:
            raise HandshakeRefused(status, answer)
        if answer.get("Upgrade", "").lower() != "websocket" or "upgrade" not in [
                t.strip().lower() for t in answer.get("Connection", "").split(",")]:
            raise HandshakeInvalid("the 101 does not upgrade to websocket")
        if answer.get("Sec-WebSocket-Accept", "") != accept_for(key):
            raise HandshakeInvalid("wrong Sec-WebSocket-Accept")
        if "Sec-WebSocket-Extensions" in answer:
            raise HandshakeInvalid("the upstream chose an extension that was not offered")
        chosen = answer.get("Sec-WebSocket-Protocol")
        if chosen is not None and chosen not in protocols:
            raise HandshakeInvalid("the upstream chose a subprotocol that was not offered")
    except BaseException:
        transport.abort()
        raise
    return UpstreamSocket(transport, chosen, opening.rest())
