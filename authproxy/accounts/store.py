"""Accounts and resources in the session store, so every worker and replica reads the same ones.

The store sees opaque keys and sealed blobs only (AES-GCM under a key derived from SESSION_SECRET):
a dump of Redis or of the SQLite file shows neither user names, password hashes, TOTP secrets nor
upstream keys. User names are found through a keyed hash of the lower-case name; a name is claimed
with `set_if_absent`, so two processes creating the same name at once cannot both succeed.

    acct:u:<id>     sealed Account             acct:all   the set of account ids
    acct:n:<hash>   the id that holds a name   acct:keys  the set of resource ids
    acct:k:<id>     sealed Resource
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from authproxy.accounts.model import Account, Resource
from authproxy.crypto import Keyring, b64e, seal, unseal
from authproxy.sessions.store import SessionStore

FOREVER = 100 * 365 * 86400.0   # accounts and keys do not expire (the store's TTLs are mandatory)
ACCOUNTS = "acct:all"
RESOURCES = "acct:keys"


class NameTaken(Exception):
    """Another account already has this user name (in any letter case)."""


class AccountStore:
    def __init__(self, store: SessionStore, keyring: Keyring) -> None:
        self.store = store
        self._seal_keys = keyring.derive_all("authproxy-accounts-seal")
        self._name_key = keyring.derive("authproxy-accounts-name")

    # ---- sealing -------------------------------------------------------------------------------

    def _seal(self, key: str, data: dict[str, Any]) -> bytes:
        return seal(self._seal_keys[0], json.dumps(data, separators=(",", ":")).encode(), key.encode())

    def _unseal(self, key: str, blob: bytes | None) -> dict[str, Any] | None:
        if blob is None:
            return None
        for seal_key in self._seal_keys:
            plain = unseal(seal_key, blob, key.encode())
            if plain is not None:
                found = json.loads(plain)
                return found if isinstance(found, dict) else None
        return None

    def _name(self, username: str) -> str:
        digest = hmac.new(self._name_key, username.lower().encode("utf-8"), hashlib.sha256).digest()
        return "acct:n:" + b64e(digest[:24])

    # ---- accounts ------------------------------------------------------------------------------

    async def get(self, account_id: str) -> Account | None:
        key = "acct:u:" + account_id
        data = self._unseal(key, await self.store.get(key))
        return Account.from_dict(data) if data is not None else None

    async def by_name(self, username: str) -> Account | None:
        found = await self.store.get(self._name(username))
        if found is None:
            return None
        account = await self.get(found.decode())
        return account if account is not None and account.username.lower() == username.lower() else None

    async def create(self, account: Account) -> Account:
        """Store a new account; NameTaken when the name is held (by a live account)."""
        name_key = self._name(account.username)
        if not await self.store.set_if_absent(name_key, account.id.encode(), FOREVER):
            holder = await self.store.get(name_key)
            if holder is not None and await self.get(holder.decode()) is not None:
                raise NameTaken(account.username)
            await self.store.set(name_key, account.id.encode(), FOREVER)   # left over from a failed delete
        await self.save(account)
        await self.store.index_add(ACCOUNTS, account.id, FOREVER)
        return account

    async def save(self, account: Account) -> None:
        key = "acct:u:" + account.id
        await self.store.set(key, self._seal(key, account.to_dict()), FOREVER)

    async def delete(self, account: Account) -> None:
        await self.store.delete("acct:u:" + account.id)
        await self.store.index_remove(ACCOUNTS, account.id)
        holder = await self.store.get(self._name(account.username))
        if holder is not None and holder.decode() == account.id:
            await self.store.delete(self._name(account.username))

    async def all(self) -> list[Account]:
        found = [await self.get(i) for i in sorted(await self.store.index_members(ACCOUNTS))]
        return sorted((a for a in found if a is not None), key=lambda a: (a.created_at, a.username))

    async def admins(self) -> list[Account]:
        return [a for a in await self.all() if a.role == "admin" and not a.disabled]

    # ---- resources -----------------------------------------------------------------------------

    async def key(self, key_id: str) -> Resource | None:
        store_key = "acct:k:" + key_id
        data = self._unseal(store_key, await self.store.get(store_key))
        return Resource.from_dict(data) if data is not None else None

    async def add_key(self, resource: Resource) -> Resource:
        if any(k.name == resource.name and k.site == resource.site for k in await self.keys()):
            raise NameTaken(resource.name)
        store_key = "acct:k:" + resource.id
        await self.store.set(store_key, self._seal(store_key, resource.to_dict()), FOREVER)
        await self.store.index_add(RESOURCES, resource.id, FOREVER)
        return resource

    async def delete_key(self, key_id: str) -> bool:
        await self.store.index_remove(RESOURCES, key_id)
        return await self.store.delete("acct:k:" + key_id) > 0

    async def keys(self) -> list[Resource]:
        found = [await self.key(i) for i in sorted(await self.store.index_members(RESOURCES))]
        return sorted((k for k in found if k is not None), key=lambda k: (k.name, k.site, k.id))

    async def find_key(self, name_or_id: str, site: str) -> Resource | None:
        """The key a request names: by id, else by name (for this site first, then for any site)."""
        by_id = await self.key(name_or_id) if len(name_or_id) == 16 else None
        if by_id is not None and by_id.site in ("", site):
            return by_id
        named = [k for k in await self.keys() if k.name == name_or_id and k.site in ("", site)]
        named.sort(key=lambda k: k.site != site)
        return named[0] if named else None
