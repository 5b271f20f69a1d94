"""What `authproxy sessions list|revoke` does on the configured store (SQLite or Redis).

A session is sealed under a key only its cookie carries, so an operator's tool cannot open it; what it
reads is the session's marker (user, site, times, client, how it signed in), sealed under a key derived
from SESSION_SECRET (manager.open_marker). A session is shown by `public_id`, the short hash of its store
key that the audit lines carry: never the ticket, and nothing a ticket can be made from.

Revoking takes "sign out everywhere"'s steps (manager.destroy_everywhere): a tombstone (so a sign-in
racing with it that would carry the session's credentials over ends too), the session and its marker
deleted, then `revoke` through the store: when it returns, no worker or replica still serves a cached
copy (SQLite: the shared generation; Redis: every listener confirmed).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from authproxy.sessions.manager import (
    CHANNEL,
    MAX_REVOKE_ROUNDS,
    TOMBSTONE_TTL,
    SessionManager,
    marker_key,
    open_marker,
    public_id,
    tombstone_key,
)
from authproxy.sessions.store import SessionStore

UNKNOWN = "?"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One live session as an operator sees it (`id` is the public id; times are Unix seconds)."""

    id: str
    user: str
    site: str
    auth_method: str
    client_ip: str
    created_at: float | None
    expires_at: float | None
    idle_expires_at: float

    def as_json(self) -> dict[str, object]:
        return asdict(self)


class SessionAdmin:
    def __init__(self, store: SessionStore, marker_keys: list[bytes]) -> None:
        self.store = store
        self.marker_keys = marker_keys
        self._store_keys: dict[str, str] = {}   # public id -> store key, from the last listing

    async def sessions(self, user: str | None = None, sites: tuple[str, ...] = ()) -> list[SessionInfo]:
        """Every live session (or `user`'s: signed in as them, or holding their account at one of
        `sites` since a later sign-in as someone else), oldest first. One with no readable marker
        (written under another SESSION_SECRET) is listed with `?` for what only the marker says."""
        found: list[SessionInfo] = []
        now = time.time()
        holding: set[str] = set()
        if user is not None:
            for site in sites:
                holding |= await self.store.index_members(SessionManager._account_index(site, user))
        for store_key in await self.store.keys("s:"):
            left = await self.store.ttl(store_key)
            if left is None:
                continue
            info = await self._marker(store_key)
            name = str(info.get("user", UNKNOWN))
            if user is not None and name != user and store_key not in holding:
                continue
            pid = public_id(store_key)
            self._store_keys[pid] = store_key
            expires = _number(info.get("expires_at"))
            found.append(SessionInfo(
                id=pid, user=name, site=str(info.get("site", UNKNOWN)),
                auth_method=str(info.get("auth_method", UNKNOWN)),
                client_ip=str(info.get("client_ip", UNKNOWN)),
                created_at=_number(info.get("created_at")), expires_at=expires,
                idle_expires_at=min(now + left, expires) if expires is not None else now + left))
        found.sort(key=lambda s: (s.created_at or 0.0, s.id))
        return found

    async def find(self, prefix: str) -> list[str]:
        """The public ids that start with `prefix` (lower case hex)."""
        await self.sessions()
        return sorted(pid for pid in self._store_keys if pid.startswith(prefix.lower()))

    async def revoke(self, ids: list[str]) -> int:
        """End these sessions (public ids from `sessions`/`find`) everywhere; how many were alive."""
        return await self._end([self._store_keys[pid] for pid in ids if pid in self._store_keys])

    async def revoke_user(self, user: str, sites: tuple[str, ...]) -> int:
        """End every session of `user` (as `sessions(user, sites)` lists them) and, as "sign out
        everywhere" does, any that a sign-in racing with this indexed under their account meanwhile:
        the indexes are read again after each round (a sign-in indexes before it writes, and checks for
        the tombstone after)."""
        indexes = [SessionManager._account_index(site, user) for site in sites]
        batch = {self._store_keys[s.id] for s in await self.sessions(user, sites)}
        done: set[str] = set()
        ended = 0
        for _ in range(MAX_REVOKE_ROUNDS):
            ended += await self._end(sorted(batch))
            done |= batch
            batch = set()
            for index in indexes:
                batch |= await self.store.index_members(index)
            batch -= done
            if not batch:
                break
        return ended

    async def _end(self, store_keys: list[str]) -> int:
        """Tombstone, delete and revoke (manager.destroy_everywhere's steps); how many were alive."""
        ended = 0
        for store_key in store_keys:
            info = await self._marker(store_key)
            await self.store.set(tombstone_key(store_key), b"1", TOMBSTONE_TTL)
            ended += await self.store.delete(store_key)
            await self.store.delete(marker_key(store_key))
            if "user" in info and "site" in info:
                index = SessionManager._account_index(str(info["site"]), str(info["user"]))
                await self.store.index_remove(index, store_key)
            await self.store.revoke(CHANNEL, store_key)
        return ended

    async def _marker(self, store_key: str) -> dict[str, object]:
        key = marker_key(store_key)
        blob = await self.store.get(key)
        info = open_marker(self.marker_keys, blob, key) if blob is not None else None
        return info or {}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
