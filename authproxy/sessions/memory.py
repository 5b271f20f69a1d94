"""In-process session store: a dict with monotonic-clock TTLs.

For tests and single-process deployments that accept losing sessions on restart. Expired entries are
ignored on read and swept opportunistically (at most once a minute, on writes), so no task is needed.
Publish calls this instance's subscribers synchronously: there is no other process to tell, so a
revocation is in effect when `revoke` returns and the generation never changes.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable

from authproxy.errors import StoreError
from authproxy.sessions.store import InvalidationCallback

log = logging.getLogger("authproxy.store")

SWEEP_EVERY = 60.0


class MemoryStore:
    """`SessionStore` backed by dicts; values are (bytes, expires_at) on `time.monotonic()`."""

    name = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._data: dict[str, tuple[bytes, float]] = {}
        self._indexes: dict[str, tuple[builtins.set[str], float]] = {}
        self._subscribers: dict[str, list[InvalidationCallback]] = {}
        self._closed = False
        self._next_sweep = clock() + SWEEP_EVERY

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        self._data.clear()
        self._indexes.clear()

    async def ping(self) -> None:
        self._check()

    async def get(self, key: str) -> bytes | None:
        self._check()
        entry = self._live(key)
        return entry[0] if entry is not None else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._check()
        self._maybe_sweep()
        self._data[key] = (bytes(value), self._clock() + ttl)

    async def replace(self, key: str, value: bytes, ttl: float) -> bool:
        self._check()
        if self._live(key) is None:
            return False
        self._data[key] = (bytes(value), self._clock() + ttl)
        return True

    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        self._check()
        if self._live(key) is not None:
            return False
        self._maybe_sweep()
        self._data[key] = (bytes(value), self._clock() + ttl)
        return True

    async def expire(self, key: str, ttl: float) -> bool:
        self._check()
        entry = self._live(key)
        if entry is None:
            return False
        self._data[key] = (entry[0], self._clock() + ttl)
        return True

    async def delete(self, *keys: str) -> int:
        self._check()
        count = 0
        for key in keys:
            if self._live(key) is not None:
                count += 1
            self._data.pop(key, None)
        return count

    async def incr(self, key: str, window: float, amount: int = 1) -> int:
        self._check()
        entry = self._live(key)
        if entry is None:
            if amount < 0:
                return 0
            self._maybe_sweep()
            self._data[key] = (str(amount).encode(), self._clock() + window)
            return amount
        try:
            value = int(entry[0]) + amount
        except ValueError:
            raise StoreError(f"memory store: key {key!r} does not hold a counter") from None
        self._data[key] = (str(value).encode(), entry[1])
        return value

    async def ttl(self, key: str) -> float | None:
        self._check()
        entry = self._live(key)
        return max(0.0, entry[1] - self._clock()) if entry is not None else None

    async def index_add(self, index: str, member: str, ttl: float) -> None:
        self._check()
        self._maybe_sweep()
        members, expires = self._live_index(index) or (set(), 0.0)
        members.add(member)
        self._indexes[index] = (members, max(expires, self._clock() + ttl))

    async def index_remove(self, index: str, member: str) -> None:
        self._check()
        entry = self._live_index(index)
        if entry is None:
            return
        entry[0].discard(member)
        if not entry[0]:
            del self._indexes[index]

    async def index_members(self, index: str) -> builtins.set[str]:
        self._check()
        entry = self._live_index(index)
        return set(entry[0]) if entry is not None else set()

    async def keys(self, prefix: str) -> builtins.list[str]:
        self._check()
        now = self._clock()
        return [k for k, (_, expires) in self._data.items() if k.startswith(prefix) and expires > now]

    async def publish(self, channel: str, message: str) -> None:
        self._check()
        for callback in list(self._subscribers.get(channel, ())):
            try:
                callback(message)
            except Exception:
                log.exception("store subscriber for channel %r failed", channel)

    def subscribe(self, channel: str, callback: InvalidationCallback) -> None:
        self._subscribers.setdefault(channel, []).append(callback)

    async def revoke(self, channel: str, message: str) -> None:
        await self.publish(channel, message)

    def generation(self) -> int:
        return 0

    def _check(self) -> None:
        if self._closed:
            raise StoreError("memory store is closed")

    def _live(self, key: str) -> tuple[bytes, float] | None:
        entry = self._data.get(key)
        if entry is not None and entry[1] <= self._clock():
            del self._data[key]
            return None
        return entry

    def _live_index(self, index: str) -> tuple[builtins.set[str], float] | None:
        entry = self._indexes.get(index)
        if entry is not None and entry[1] <= self._clock():
            del self._indexes[index]
            return None
        return entry

    def _maybe_sweep(self) -> None:
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY
        self._data = {k: v for k, v in self._data.items() if v[1] > now}
        self._indexes = {k: v for k, v in self._indexes.items() if v[1] > now}
