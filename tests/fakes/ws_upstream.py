"""A WebSocket endpoint added to FakeTechnitium, for the bridge's tests (integration and browser).

`/ws` accepts only a live Technitium token (Bearer or `token=`), records each handshake, echoes text
and binary frames, answers pings, pings on request ("ping-me"), closes with a chosen code
("close:<code>"), drops its connection without a CLOSE ("vanish"), and answers a CLOSE with the same
code. `/ws-slow` first sends half of a 4000-byte frame and the rest on `release`; `/ws-flood` first
sends 64 frames of 1 MiB as fast as the connection takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from tests.fakes.technitium import FakeTechnitium


@dataclass
class Handshake:
    headers: CIMultiDict[str]
    raw_query: str


@dataclass
class SocketUpstream:
    """FakeTechnitium v15 plus a token-checking WebSocket endpoint at /ws."""

    fake: FakeTechnitium
    handshakes: list[Handshake] = field(default_factory=list)
    closes: list[tuple[int, str]] = field(default_factory=list)   # CLOSE frames received from the gateway
    pongs: list[bytes] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)   # /ws-slow: send the rest of the frame
    flooded: int = 0                                                 # /ws-flood: MiB frames sent so far

    def __post_init__(self) -> None:
        self.fake.app.middlewares.append(self._middleware)

    @property
    def url(self) -> str:
        return self.fake.url

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.fake.port}"

    def live_tokens(self) -> set[str]:
        return set(self.fake.sessions)

    @web.middleware
    async def _middleware(  # noqa: C901 - one branch per scripted behaviour
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.path not in ("/ws", "/ws-slow", "/ws-flood"):
            return await handler(request)
        self.handshakes.append(Handshake(CIMultiDict(request.headers), request.rel_url.raw_query_string))
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else request.query.get("token", "")
        if token not in self.fake.sessions:
            return web.json_response({"status": "invalid-token"}, status=401)
        ws = web.WebSocketResponse(protocols=("v2.echo",), autoping=False, autoclose=False)
        await ws.prepare(request)
        if request.path == "/ws-flood":  # 64 MiB as fast as the connection takes them
            for _ in range(64):
                await ws.send_bytes(b"f" * (1 << 20))
                self.flooded += 1
        if request.path == "/ws-slow":   # half of a 4000-byte binary frame now, the rest on `release`
            assert request.transport is not None
            request.transport.write(bytes([0x82, 126]) + (4000).to_bytes(2, "big") + b"s" * 2000)
            await self.release.wait()
            request.transport.write(b"s" * 2000)
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data[6:]), message=b"upstream says bye")
                    break
                if msg.data == "vanish":      # the upstream's connection dies without a CLOSE
                    assert request.transport is not None
                    request.transport.abort()
                    break
                if msg.data == "ping-me":
                    await ws.ping(b"from-upstream")
                    continue
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                self.pongs.append(msg.data)
                await ws.send_str("got-pong:" + msg.data.decode())
            elif msg.type is WSMsgType.CLOSE:
                self.closes.append((msg.data, msg.extra or ""))
                # Answer with the same code (not aiohttp's automatic 1000): the client must see ours.
                await ws.close(code=msg.data if msg.data not in (1005, 1006) else 1000, message=b"echoed")
                break
            else:
                break
        return ws


@contextlib.asynccontextmanager
async def running_socket_upstream(
    user: tuple[str, str], *, ui_dir: Path | None = None
) -> AsyncIterator[SocketUpstream]:
    """A started FakeTechnitium v15 (serving `ui_dir` when given) with `user` and the WebSocket endpoints."""
    fake = FakeTechnitium(api_version=15, ui_dir=ui_dir)
    fake.add_user(*user, display_name="Alice Example")
    up = SocketUpstream(fake)
    await fake.start()
    try:
        yield up
    finally:
        await fake.close()
