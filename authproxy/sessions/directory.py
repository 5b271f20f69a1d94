"""The session directory: who is signed in where, for the admin's session list (no secrets).

Sessions themselves are sealed under keys only their cookies hold, so nobody can list them by reading
them. Each new session of a local account (auth_method "local") also leaves a small entry here (user,
site, client address, when it started, how it was proven), sealed under a key derived from
SESSION_SECRET, for as long as the session can live. "Last seen" is read off the session's own idle TTL,
which every touch slides: no write on the request path. An entry whose session is gone is dropped when
the list is read, and now and then when one is added.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from authproxy.crypto import Keyring, seal, unseal
from authproxy.sessions.store import SessionStore

INDEX = "dir:all"
PRUNE_EVERY = 64


@dataclass(frozen=True, slots=True)
class Entry:
    id: str              # the session's public id (manager.public_id)
    store_key: str
    user: str
    site: str
    client_ip: str
    created_at: float
    auth_method: str

    def public(self, last_seen: float | None) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "site": self.site, "clientIp": self.client_ip,
                "createdAt": self.created_at, "lastSeenAt": last_seen, "authMethod": self.auth_method}


class SessionDirectory:
    def __init__(self, store: SessionStore, keyring: Keyring) -> None:
        self.store = store
        self._keys = keyring.derive_all("authproxy-session-directory")

    async def record(self, entry: Entry, ttl: float) -> None:
        """Add a session; now and then (1 in PRUNE_EVERY) drop what ended, so the index set stays the
        size of the live sessions even when nobody lists them."""
        if secrets.randbelow(PRUNE_EVERY) == 0:
            await self.live()
        key = "dir:" + entry.id
        plain = json.dumps({"id": entry.id, "k": entry.store_key, "user": entry.user, "site": entry.site,
                            "ip": entry.client_ip, "at": entry.created_at, "via": entry.auth_method}).encode()
        await self.store.set(key, seal(self._keys[0], plain, key.encode()), ttl)
        await self.store.index_add(INDEX, entry.id, ttl)

    async def get(self, public_id: str) -> Entry | None:
        key = "dir:" + public_id
        blob = await self.store.get(key)
        if blob is None:
            return None
        for seal_key in self._keys:
            plain = unseal(seal_key, blob, key.encode())
            if plain is not None:
                d = json.loads(plain)
                return Entry(id=str(d["id"]), store_key=str(d["k"]), user=str(d["user"]), site=str(d["site"]),
                             client_ip=str(d["ip"]), created_at=float(d["at"]), auth_method=str(d["via"]))
        return None

    async def forget(self, public_id: str) -> None:
        await self.store.delete("dir:" + public_id)
        await self.store.index_remove(INDEX, public_id)

    async def live(self) -> list[tuple[Entry, float]]:
        """Every session still alive, with its idle TTL left (seconds); dead entries are dropped."""
        found: list[tuple[Entry, float]] = []
        for public_id in sorted(await self.store.index_members(INDEX)):
            entry = await self.get(public_id)
            left = await self.store.ttl(entry.store_key) if entry is not None else None
            if entry is None or left is None:
                await self.forget(public_id)
                continue
            found.append((entry, left))
        return sorted(found, key=lambda pair: pair[0].created_at)
