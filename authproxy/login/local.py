"""LocalAccounts: sign in with authproxy's own accounts (AUTH_MODE=local, or `auth = "local"` per site).

The password is checked against the account's argon2id hash (or an imported bcrypt hash, upgraded to
argon2id on success) in a worker thread: a hash takes a few hundred milliseconds of CPU, which must
not stop the event loop. A name without an account costs the same time as a wrong password. With
TOTP enabled, a code (or one of the recovery codes, each good once) is the second step.
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

from authproxy.accounts import claims, passwords, totp
from authproxy.accounts.store import AccountStore
from authproxy.log import audit
from authproxy.login.sources import IdentitySource
from authproxy.routing import Site
from authproxy.upstreams.base import LoginResult

INVALID = "Invalid username or password."


class LocalAccounts(IdentitySource):
    name: ClassVar[str] = "local"

    def __init__(self, accounts: AccountStore) -> None:
        self.accounts = accounts

    async def verify(self, site: Site, username: str, password: str, totp_code: str | None,
                     client_ip: str) -> LoginResult:
        account = await self.accounts.by_name(username)
        if account is None:
            await asyncio.to_thread(passwords.dummy_verify, password)
            return LoginResult(status="invalid", message=INVALID)
        ok = await asyncio.to_thread(passwords.verify, account.password_hash, password)
        if not ok or account.disabled:
            return LoginResult(status="invalid", message=INVALID)
        if account.totp.enabled:
            if totp_code is None:
                return LoginResult(status="totp_required",
                                   message="Enter the code from your authenticator app.")
            used_recovery = totp.check(account.totp, totp_code)
            if used_recovery is None:
                return LoginResult(status="invalid", message="Invalid username, password or code.")
            if used_recovery:
                audit("totp", outcome="recovery_code_used", user=account.username, site=site.name,
                      client_ip=client_ip, left=len(account.totp.recovery))
        if passwords.needs_upgrade(account.password_hash):
            account.password_hash = await asyncio.to_thread(passwords.hash_password, password)
            audit("password", outcome="hash_upgraded", user=account.username, site=site.name,
                  client_ip=client_ip)
        account.last_login_at = time.time()
        await self.accounts.save(account)
        return LoginResult(status="ok", credential=claims.credential_for(account),
                           identity=claims.identity_for(account))
