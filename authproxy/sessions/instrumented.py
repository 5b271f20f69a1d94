"""A session store that times every call into authproxy_store_latency_seconds (errors counted too).

It wraps whichever store the deployment uses, so no store knows about metrics; the two synchronous
calls (`generation`, read on every session-cache hit, and `subscribe`) go straight to the store.
"""

from __future__ import annotations

import builtins
from typing import Any

from authproxy.metrics import Metrics
from authproxy.sessions.store import InvalidationCallback, SessionStore


class InstrumentedStore:
    """`SessionStore` around `inner`; any other attribute is the inner store's."""

    def __init__(self, inner: SessionStore, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self._timed = metrics.timed
        self.generation = inner.generation  # bound once: a cache hit pays no extra call

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return repr(self.inner)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping())

    async def get(self, key: str) -> bytes | None:
        found: bytes | None = await self._timed("get", self.inner.get(key))
        return found

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._timed("set", self.inner.set(key, value, ttl))

    async def replace(self, key: str, value: bytes, ttl: float) -> bool:
        return bool(await self._timed("replace", self.inner.replace(key, value, ttl)))

    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        return bool(await self._timed("set_if_absent", self.inner.set_if_absent(key, value, ttl)))

    async def expire(self, key: str, ttl: float) -> bool:
        return bool(await self._timed("expire", self.inner.expire(key, ttl)))

    async def delete(self, *keys: str) -> int:
        return int(await self._timed("delete", self.inner.delete(*keys)))

    async def incr(self, key: str, window: float, amount: int = 1) -> int:
        return int(await self._timed("incr", self.inner.incr(key, window, amount)))

    async def ttl(self, key: str) -> float | None:
        left: float | None = await self._timed("ttl", self.inner.ttl(key))
        return left

    async def index_add(self, index: str, member: str, ttl: float) -> None:
        await self._timed("index_add", self.inner.index_add(index, member, ttl))

    async def index_remove(self, index: str, member: str) -> None:
        await self._timed("index_remove", self.inner.index_remove(index, member))

    async def index_members(self, index: str) -> builtins.set[str]:
        members: builtins.set[str] = await self._timed("index_members", self.inner.index_members(index))
        return members

    async def keys(self, prefix: str) -> builtins.list[str]:
        found: builtins.list[str] = await self._timed("keys", self.inner.keys(prefix))
        return found

    async def publish(self, channel: str, message: str) -> None:
        await self._timed("publish", self.inner.publish(channel, message))

    def subscribe(self, channel: str, callback: InvalidationCallback) -> None:
        self.inner.subscribe(channel, callback)

    async def revoke(self, channel: str, message: str) -> None:
        await self._timed("revoke", self.inner.revoke(channel, message))
