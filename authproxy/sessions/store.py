"""The session store interface: stores see opaque keys, bytes and TTLs only.

The session manager owns tickets, crypto and cookies; a store only keeps sealed blobs, counters
(throttling), small sets (the per-user index) and a broadcast channel (cache invalidation across
replicas). One contract test suite (tests/contract) runs against every implementation.

Revocation must be over everywhere before a logout answers, yet the session cache must not pay a round
trip per request. So `revoke` is a `publish` that returns only when no process can still serve what it
cached before: each store keeps that promise in the way its sharing allows (memory: its subscribers
run synchronously; SQLite: a shared generation counter in a memory-mapped file that every cache hit
reads; Redis: each subscriber confirms). `generation` is what a cache hit compares.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Protocol, runtime_checkable

InvalidationCallback = Callable[[str], None]


@runtime_checkable
class SessionStore(Protocol):
    """Async key/value store with TTLs. Every method raises `StoreError` when the backend is down."""

    name: str

    async def start(self) -> None:
        """Connect / open files / start background tasks (subscriptions, sweeping)."""

    async def close(self) -> None:
        """Release everything; safe to call twice."""

    async def ping(self) -> None:
        """Raise StoreError unless the backend answers now (readiness)."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` for `ttl` seconds (> 0), replacing any previous value and TTL."""

    async def replace(self, key: str, value: bytes, ttl: float) -> bool:
        """Atomically overwrite `key` only if it still exists (never resurrect a deleted session);
        True when it was written."""

    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        """Atomically create `key` if it does not exist (a lock); True when this call created it."""

    async def expire(self, key: str, ttl: float) -> bool:
        """Reset the TTL of an existing key (sliding idle timeout); False when the key is gone."""

    async def delete(self, *keys: str) -> int:
        """Delete keys; returns how many existed."""

    async def incr(self, key: str, window: float, amount: int = 1) -> int:
        """Add `amount` to a counter and return it; the counter expires `window` s after its first incr.

        A negative amount (a refund) never creates a counter: on a missing one it returns 0."""

    async def ttl(self, key: str) -> float | None:
        """Seconds left for `key`, or None when it does not exist."""

    async def index_add(self, index: str, member: str, ttl: float) -> None:
        """Add `member` to the set `index`; the set lives at least `ttl` s after its last add."""

    async def index_remove(self, index: str, member: str) -> None: ...

    async def index_members(self, index: str) -> builtins.set[str]: ...

    async def keys(self, prefix: str) -> builtins.list[str]:
        """Every live key that starts with `prefix` (without the store's own prefix). O(keys): for the
        operator's listings (`authproxy sessions`) and the live-sessions gauge, never a request."""

    async def publish(self, channel: str, message: str) -> None:
        """Broadcast to every subscriber of `channel` in every process using this store."""

    def subscribe(self, channel: str, callback: InvalidationCallback) -> None:
        """Call `callback(message)` for each message published on `channel` (after start())."""

    async def revoke(self, channel: str, message: str) -> None:
        """`publish`, in effect everywhere when it returns: in every process using this store, the
        subscribers of `channel` have then been called with `message`, or `generation()` there no longer
        returns what it returned before the call. Deleting a session and then revoking it means no process
        serves its cached copy to a request that starts afterwards."""

    def generation(self) -> int:
        """What a session-cache entry records when it is read from the store and compares on every hit,
        so no I/O (about 100 ns): it changes when a `revoke` anywhere may have left this process's
        subscribers untold. Negative while this process cannot learn of revocations at all (Redis: its
        listener is disconnected): then nothing may be cached."""
