"""EchoUpstream: a real aiohttp app that tells the test exactly what reached the upstream.

Why: proxy tests must prove what a proxy *forwards* (which headers were injected, replaced or dropped,
whether the query survived, whether the request arrived at all). The echo answers every path with JSON
describing the request it received and records it in ``requests``; ``/ws`` is a WebSocket echo (text and
binary frames come back unchanged; the text ``close:<code>`` closes with that code; the handshake is in
``requests``); ``/status/<code>``
answers with that status (an upstream that says 401 itself).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web

__all__ = ["EchoUpstream", "ReceivedRequest", "echo_upstream"]


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the upstream saw it (header names keep the case they arrived in)."""

    method: str
    raw_path: str  # path and query, exactly as sent on the request line
    path: str  # raw path without the query
    query_string: str
    headers: list[tuple[str, str]]
    body_length: int
    websocket: bool = False

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive), None when absent."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "raw_path": self.raw_path,
            "path": self.path,
            "query_string": self.query_string,
            "headers": [list(pair) for pair in self.headers],
            "body_length": self.body_length,
            "websocket": self.websocket,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReceivedRequest:
        """Rebuild from the echo's JSON answer (what the client got back through the proxy)."""
        return cls(
            method=data["method"],
            raw_path=data["raw_path"],
            path=data["path"],
            query_string=data["query_string"],
            headers=[(k, v) for k, v in data["headers"]],
            body_length=data["body_length"],
            websocket=data["websocket"],
        )


@dataclass
class EchoUpstream:
    """The echo server; ``await start()`` binds 127.0.0.1 on a free port and returns its base URL."""

    host: str = "127.0.0.1"
    requests: list[ReceivedRequest] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def last(self) -> ReceivedRequest:
        """The most recent request (fails the test clearly when nothing arrived)."""
        assert self.requests, "the upstream received no request"
        return self.requests[-1]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        received = ReceivedRequest(
            method=request.method,
            raw_path=request.raw_path,
            path=request.raw_path.split("?", 1)[0],
            query_string=request.query_string,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body_length=len(body),
            websocket=request.path == "/ws" and _is_upgrade(request),
        )
        self.requests.append(received)
        if received.websocket:
            return await self._websocket(request)
        status = 200
        if request.path.startswith("/status/") and request.path[8:].isdigit():
            status = int(request.path[8:])
        return web.json_response(received.as_json(), status=status)

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if msg.data.startswith("close:") and msg.data[6:].isdigit():
                    await ws.close(code=int(msg.data[6:]), message=b"echo close")
                    break
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws


def _is_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


@pytest.fixture
async def echo_upstream() -> AsyncIterator[EchoUpstream]:
    """A started EchoUpstream; ``echo_upstream.url`` is its base URL, ``.requests`` what it received."""
    echo = EchoUpstream()
    await echo.start()
    try:
        yield echo
    finally:
        await echo.close()
