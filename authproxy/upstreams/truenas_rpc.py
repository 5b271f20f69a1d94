"""A small JSON-RPC 2.0 client for TrueNAS's middleware WebSocket (`/api/current`).

TrueNAS binds authentication to the socket, so authproxy's own calls (a person's sign-in, the token
that reopens their sockets, sign-out, the service key's check) each run on an `RpcSocket` of their
own. Calls run concurrently upstream and answers may come out of order: a reader task matches them
to the waiting call by `id`. Errors come back as `RpcError` with TrueNAS's `errname` (ENOTAUTHENTICATED,
EACCES, EBUSY...) and its reason, never with the call's parameters (they may hold a password).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from authproxy.errors import UpstreamProtocolError, UpstreamUnavailable

API_PATH = "/api/current"
MAX_ANSWER = 16 * 1024 * 1024


def ws_endpoint(upstream_url: str, path: str = API_PATH) -> str:
    """`http(s)://host[:port]` (the site's URL) as its JSON-RPC WebSocket URL."""
    parts = urlsplit(upstream_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


class RpcError(Exception):
    """A JSON-RPC error answer: `code` (-32001 for a TrueNAS CallError), `errname` and `reason`."""

    def __init__(self, method: str, code: int, errname: str, reason: str) -> None:
        super().__init__(f"{method}: {reason or errname or code}")
        self.method = method
        self.code = code
        self.errname = errname
        self.reason = reason


def error_of(method: str, error: Any) -> RpcError:
    if not isinstance(error, dict):
        return RpcError(method, 0, "", "malformed error")
    data: dict[str, Any] = error["data"] if isinstance(error.get("data"), dict) else {}
    return RpcError(
        method,
        int(error.get("code") or 0),
        str(data.get("errname") or ""),
        str(data.get("reason") or error.get("message") or ""),
    )


class RpcSocket:
    """One authenticated-or-not connection to the middleware; `async with RpcSocket.open(...)`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[Literal[False]], timeout: float) -> None:
        self.ws = ws
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        # Messages that answer none of our calls (a relayed client's answers, events): awaited in order.
        self.on_message: Callable[[bytes], Awaitable[None]] | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="authproxy-truenas-rpc")

    @classmethod
    async def open(
        cls, http: aiohttp.ClientSession, url: str, *, timeout: float, headers: dict[str, str] | None = None
    ) -> RpcSocket:
        try:
            ws = await http.ws_connect(
                url,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                max_msg_size=MAX_ANSWER, decode_text=False,
                headers=headers,
                autoping=True,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamUnavailable(f"truenas at {url} is unreachable ({type(exc).__name__})") from None
        return cls(ws, timeout)

    @property
    def closed(self) -> bool:
        return self.ws.closed or self._reader.done()

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    answer = json.loads(msg.data) if b'"authproxy-' in msg.data else None
                except ValueError:
                    answer = None
                id_ = answer.get("id") if isinstance(answer, dict) else None
                waiter = self._waiting.pop(id_, None) if isinstance(id_, str) else None
                if waiter is not None:
                    if not waiter.done():
                        waiter.set_result(answer)
                elif self.on_message is not None:
                    await self.on_message(msg.data)
        finally:
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(UpstreamUnavailable("truenas closed the connection"))
            self._waiting.clear()

    async def call(self, method: str, *params: Any) -> Any:
        """The call's result; RpcError for an error answer, UpstreamUnavailable when the socket dies."""
        if self.closed:
            raise UpstreamUnavailable("truenas connection is closed")
        id_ = f"authproxy-{next(self._ids)}"   # never a client's id: the bridges refuse this prefix
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[id_] = waiter
        try:
            await self.ws.send_str(
                json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": list(params)})
            )
            async with asyncio.timeout(self.timeout):
                answer = await waiter
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"truenas did not answer {method} ({type(exc).__name__})") from None
        finally:
            self._waiting.pop(id_, None)
        if "error" in answer:
            raise error_of(method, answer["error"])
        if "result" not in answer:
            raise UpstreamProtocolError(f"truenas answered {method} without a result")
        return answer["result"]

    async def wait_closed(self) -> None:
        """Returns once the upstream connection is gone (TrueNAS closed it, or we did)."""
        await asyncio.wait([self._reader])

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
