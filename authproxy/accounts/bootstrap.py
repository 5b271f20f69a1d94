"""The first admin: there is no default password.

With no enabled admin in the store, authproxy creates `admin` with AUTHPROXY_ADMIN_PASSWORD(_FILE), or
with a random password printed once on the console (stderr, straight to the terminal or the service
manager's journal: never through the loggers, so never into a log file or the audit trail). Either
way the first sign-in must change it before anything else works. A short lock in the store lets only
one of several workers or replicas starting at once create it (and print it).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Callable

from authproxy.accounts import passwords
from authproxy.accounts.model import Account, new_id
from authproxy.accounts.store import AccountStore, NameTaken
from authproxy.crypto import Secret
from authproxy.log import audit, log

LOCK = "acct:bootstrap"
ADMIN = "admin"


def _console(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def ensure_admin(accounts: AccountStore, password: Secret | None,
                       console: Callable[[str], None] = _console) -> Account | None:
    """Create the first admin if there is none; the account made, or None."""
    if await accounts.admins():
        return None
    if not await accounts.store.set_if_absent(LOCK, b"1", 30.0):
        return None   # another process is making it right now
    try:
        if await accounts.admins():
            return None
        chosen = password.reveal() if password is not None else secrets.token_urlsafe(18)
        account = Account(id=new_id(), username=ADMIN, role="admin",
                          password_hash=await asyncio.to_thread(passwords.hash_password, chosen),
                          must_change_password=True)
        try:
            await accounts.create(account)
        except NameTaken:
            log.warning("local accounts: no enabled admin, and the name 'admin' is taken by another account; "
                        "give one an admin role with `authproxy users set-role NAME admin`")
            return None
        audit("account", outcome="bootstrap_admin", user=ADMIN, actor="service",
              password_source="environment" if password is not None else "generated")
        if password is None:
            console("\n".join((
                "=" * 72,
                "authproxy: created the first local admin account (shown once, never logged):",
                f"    username: {ADMIN}",
                f"    password: {chosen}",
                "Sign in with it and choose a new password; nothing else works until you do.",
                "=" * 72)))
        return account
    finally:
        await accounts.store.delete(LOCK)
