"""Upstream sessions kept for the next sign-in, for products without a logout call (`logout.reuse`).

Such a product keeps every session authproxy opened until its own timeout, and each sign-in opens
another. With `reuse`, signing out parks the credential in the session store instead of forgetting
it, and the next sign-in of the same account takes it back if the product still accepts it (checked
with the keepalive call) instead of opening a new one.

A parked credential must be worth nothing to whoever reads the store, and must open for the account's
password only: it is sealed (AES-GCM) with a key derived from the password by scrypt, whose salt and
result were kept in the sealed authproxy session since the sign-in (the password itself never is).
Taking it back needs the password typed again, after authproxy's throttle, so it proves no more than
the product's own login would. A record is used once, and lapses after `ttl`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any

from authproxy.crypto import b64d, b64e, seal, unseal
from authproxy.sessions.memory import MemoryStore
from authproxy.sessions.model import Credential
from authproxy.sessions.store import SessionStore

PARK = "park"   # Credential.extra: {"salt", "key"} of the password-derived sealing key
_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "dklen": 32}


def _derive(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)


class ParkedCredentials:
    """Park a signed-out credential per (site, account), and take it back with the account's password."""

    def __init__(self, site: str, ttl: float) -> None:
        self.site = site
        self.ttl = ttl
        self.store: SessionStore = MemoryStore()

    def bind_store(self, store: SessionStore) -> None:
        self.store = store

    def _key(self, username: str) -> str:
        digest = hashlib.sha256(f"{self.site}\0{username.lower()}".encode()).hexdigest()[:32]
        return f"parked:{self.site}:{digest}"

    async def sealing_key(self, password: str) -> dict[str, str]:
        """What a fresh credential keeps in its (sealed) `extra[PARK]` to be parked at sign-out."""
        salt = os.urandom(16)
        key = await asyncio.to_thread(_derive, password, salt)
        return {"salt": b64e(salt), "key": b64e(key)}

    async def park(self, username: str, credential: Credential) -> bool:
        """Keep `credential` for this account's next sign-in; False when it holds no sealing key."""
        park = credential.extra.get(PARK)
        if not isinstance(park, dict) or not username:
            return False
        data = credential.to_dict()
        blob = seal(b64d(park["key"]), json.dumps(data).encode(), self._key(username).encode())
        record = {"salt": park["salt"], "blob": b64e(blob)}
        await self.store.set(self._key(username), json.dumps(record).encode(), self.ttl)
        return True

    async def take(self, username: str, password: str) -> Credential | None:
        """The account's parked credential (once), if `password` opens it; None otherwise."""
        key = self._key(username)
        raw = await self.store.get(key)
        if raw is None:
            return None
        try:
            record: dict[str, Any] = json.loads(raw)
            salt, blob = b64d(record["salt"]), b64d(record["blob"])
        except (ValueError, KeyError, TypeError):
            await self.store.delete(key)
            return None
        sealing = await asyncio.to_thread(_derive, password, salt)
        plain = unseal(sealing, blob, key.encode())
        if plain is None:
            return None   # another password: the record stays for the right one
        await self.store.delete(key)
        return Credential.from_dict(json.loads(plain))
