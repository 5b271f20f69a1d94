"""The service key's one shared upstream socket, multiplexed for authproxy's own calls and for every
client socket that acts as the key (hybrid service clients, everyone in AUTH_MODE=none).

TrueNAS binds a login to a socket, so N automation clients would cost N API-key logins. Instead each
such client gets a `SharedChannel`: its calls go out on the one shared socket with their ids rewritten
to unique upstream ids (integers; authproxy's own calls use `authproxy-N`) and their answers come back
with the client's own id. `core.subscribe` is one upstream subscription per collection whatever the
number of subscribers; its `collection_update` events go to the channels that subscribed to that
collection, and the last subscriber's unsubscribe (or close) ends the upstream one. The shared socket
is reopened (one key login) when TrueNAS or the network closes it: calls in flight then get an error
answer, subscriptions are renewed, and the clients' sockets stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType

from authproxy.errors import UpstreamError
from authproxy.upstreams.truenas_rpc import RpcError, RpcSocket

UPSTREAM_LIMIT = 65536   # TrueNAS's per-message limit once logged in (the rewritten call must fit)
LOST = (14, "EFAULT", "the connection to TrueNAS was lost; try again")
ENDED = (14, "EFAULT", "TrueNAS ended authproxy's session; try again")
UNREACHABLE = (14, "EFAULT", "TrueNAS cannot be reached right now")
REFUSED = (13, "EACCES", "TrueNAS refused authproxy's API key")


def _answer(id_: Any, *, result: Any = None, error: tuple[int, str, str] | None = None) -> bytes:
    if error is None:
        return json.dumps({"jsonrpc": "2.0", "id": id_, "result": result}).encode()
    errnum, errname, reason = error
    data = {"error": errnum, "errname": errname, "reason": f"[{errname}] {reason}",
            "trace": None, "extra": None}
    return json.dumps({"jsonrpc": "2.0", "id": id_,
                       "error": {"code": -32001, "message": "Method call error", "data": data}}).encode()


class SharedSocket:
    """The shared socket and who is waiting on it. `opener` logs a fresh socket in with the key
    (None: TrueNAS refused the key)."""

    def __init__(self, opener: Callable[[], Awaitable[RpcSocket | None]]) -> None:
        self._opener = opener
        self.sock: RpcSocket | None = None
        self.logins = 0
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        # upstream id -> (channel, the client's id, the socket it went out on)
        self._pending: dict[int, tuple[SharedChannel, Any, RpcSocket]] = {}
        self._stale: RpcSocket | None = None   # TrueNAS ended its session: log in again
        self._subscribers: dict[str, set[SharedChannel]] = {}      # collection -> channels
        self._upstream_subs: dict[str, str] = {}                   # collection -> upstream sub id
        self._watch: asyncio.Task[None] | None = None

    def channel(self) -> SharedChannel:
        return SharedChannel(self)

    async def socket(self) -> RpcSocket:
        """The logged-in shared socket, reopened (one login) when it was closed."""
        async with self._lock:
            if self.sock is not None and not self.sock.closed and self.sock is not self._stale:
                return self.sock
            if self.sock is not None:
                await self.sock.close()
            self.sock = None
            sock = await self._opener()
            if sock is None:
                raise KeyRefused()
            self.logins += 1
            sock.on_message = self._dispatch
            self.sock = sock
            self._watch = asyncio.get_running_loop().create_task(
                self._lost(sock), name="authproxy-truenas-shared")
            for collection in list(self._subscribers):   # renew the channels' subscriptions
                with contextlib.suppress(RpcError, UpstreamError):
                    self._upstream_subs[collection] = str(await sock.call("core.subscribe", collection))
            return sock

    async def _lost(self, sock: RpcSocket) -> None:
        await sock.wait_closed()
        lost = [u for u, (_, _, on) in self._pending.items() if on is sock]
        for upstream_id in lost:
            channel, id_, _ = self._pending.pop(upstream_id)
            await channel.deliver(_answer(id_, error=LOST))
        if self.sock is not sock and self.sock is not None:
            return
        self._upstream_subs.clear()
        if self._subscribers:   # someone waits for events: reconnect now rather than at the next call
            with contextlib.suppress(KeyRefused, UpstreamError, RpcError):
                await self.socket()

    async def _dispatch(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        id_ = message.get("id")
        if isinstance(id_, int) and id_ in self._pending:
            channel, original, sock = self._pending.pop(id_)
            error = message.get("error")
            data_ = error.get("data") if isinstance(error, dict) else None
            if isinstance(data_, dict) and data_.get("errname") == "ENOTAUTHENTICATED":
                self._stale = sock   # TrueNAS ended the key's session: the next call logs in again
                await channel.deliver(_answer(original, error=ENDED))
                return
            message["id"] = original
            await channel.deliver(json.dumps(message, ensure_ascii=False).encode())
            return
        params = message.get("params")
        if id_ is None and message.get("method") == "collection_update" and isinstance(params, dict):
            for channel in list(self._subscribers.get(str(params.get("collection")), ())):
                await channel.deliver(data)

    async def send(self, channel: SharedChannel, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError as exc:
            await channel.deliver(json.dumps({"jsonrpc": "2.0", "id": None,
                                              "error": {"code": -32700, "message": str(exc)}}).encode())
            return
        if not isinstance(message, dict) or message.get("id") is None:
            with contextlib.suppress(KeyRefused, UpstreamError, RpcError, ConnectionError):
                await (await self.socket()).ws.send_frame(data, WSMsgType.TEXT)   # a notification: as is
            return
        original = message["id"]
        method = message.get("method")
        params = message.get("params") if isinstance(message.get("params"), list) else []
        if method == "core.subscribe" and params:
            await channel.deliver(await self._subscribe(channel, original, str(params[0])))
            return
        if method == "core.unsubscribe" and params and str(params[0]) in channel.subs:
            await self._unsubscribe(channel, str(params[0]))
            await channel.deliver(_answer(original, result=None))
            return
        upstream_id = next(self._ids)
        message["id"] = upstream_id
        text = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        if len(text) > UPSTREAM_LIMIT:
            await channel.deliver(_answer(original, error=(22, "EINVAL", "Max message length is 64 kB")))
            return
        try:
            sock = await self.socket()
            self._pending[upstream_id] = (channel, original, sock)
            await sock.ws.send_frame(text, WSMsgType.TEXT)
        except KeyRefused:
            self._pending.pop(upstream_id, None)
            await channel.deliver(_answer(original, error=REFUSED))
        except (UpstreamError, RpcError, ConnectionError):
            self._pending.pop(upstream_id, None)
            await channel.deliver(_answer(original, error=UNREACHABLE))

    async def _subscribe(self, channel: SharedChannel, id_: Any, collection: str) -> bytes:
        if collection not in self._upstream_subs:
            try:
                sock = await self.socket()
                if collection not in self._upstream_subs:
                    self._upstream_subs[collection] = str(await sock.call("core.subscribe", collection))
            except RpcError as exc:
                return _answer(id_, error=(22, exc.errname or "EINVAL", exc.reason))
            except (KeyRefused, UpstreamError):
                return _answer(id_, error=UNREACHABLE)
        local = secrets.token_hex(8)
        channel.subs[local] = collection
        self._subscribers.setdefault(collection, set()).add(channel)
        return _answer(id_, result=local)

    async def _unsubscribe(self, channel: SharedChannel, local: str) -> None:
        collection = channel.subs.pop(local)
        if collection in channel.subs.values():
            return
        subscribers = self._subscribers.get(collection, set())
        subscribers.discard(channel)
        if subscribers:
            return
        self._subscribers.pop(collection, None)
        upstream = self._upstream_subs.pop(collection, None)
        if upstream is not None and self.sock is not None and not self.sock.closed:
            with contextlib.suppress(RpcError, UpstreamError):
                await self.sock.call("core.unsubscribe", upstream)

    async def release(self, channel: SharedChannel) -> None:
        """A client closed: forget its calls, end its subscriptions; the shared socket stays."""
        for upstream_id in [u for u, (c, _, _) in self._pending.items() if c is channel]:
            del self._pending[upstream_id]
        for local in list(channel.subs):
            await self._unsubscribe(channel, local)

    async def aclose(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.sock is not None:
            await self.sock.close()
            self.sock = None


class SharedChannel:
    """One client's view of the shared socket, used by the bridge as it uses an `RpcSocket`."""

    def __init__(self, shared: SharedSocket) -> None:
        self.shared = shared
        self.ws = self   # the bridge relays with `upstream.ws.send_frame(...)`
        self.on_message: Callable[[bytes], Awaitable[None]] | None = None
        self.subs: dict[str, str] = {}   # the client's subscription id -> collection
        self._closed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def deliver(self, data: bytes) -> None:
        if self.on_message is not None and not self.closed:
            await self.on_message(data)

    async def send_frame(self, data: bytes, opcode: WSMsgType = WSMsgType.TEXT) -> None:
        await self.shared.send(self, data)

    async def send_str(self, data: str) -> None:
        await self.shared.send(self, data.encode())

    async def call(self, method: str, *params: Any) -> Any:
        if method == "auth.logout":
            return None   # one client's sign-out must not end the key's session for everyone
        try:
            sock = await self.shared.socket()
        except KeyRefused:
            raise RpcError(method, -32001, "ENOTAUTHENTICATED", REFUSED[2]) from None
        return await sock.call(method, *params)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        if not self.closed:
            self._closed.set()
            self.on_message = None
            await self.shared.release(self)


class KeyRefused(Exception):
    """TrueNAS refused the service API key."""
