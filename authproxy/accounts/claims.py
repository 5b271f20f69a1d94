"""What a session knows about its local account: kept in the site's (empty) credential, so the role
decision on every request reads the session it already has, never the store.

A change to a person's role, keys or status ends their sessions (web/accounts_api.py), so a session's
copy is never older than the account it was made from.
"""

from __future__ import annotations

from typing import NamedTuple

from authproxy.accounts.model import Account
from authproxy.sessions.model import Credential, Identity, Session

KIND = "local"      # Credential.kind of a local sign-in: no upstream secret, only the claim below
CLAIM = "local"     # Credential.extra key


class Claim(NamedTuple):
    """Read on every request of a local site: a tuple, the cheapest thing Python builds."""

    id: str
    username: str
    role: str
    allowed_key_ids: tuple[str, ...]
    must_change_password: bool


def credential_for(account: Account) -> Credential:
    """The marker a local sign-in puts into the session for its site (actor `service`: nothing to sign
    out upstream)."""
    return Credential(secret="", kind=KIND, actor="service", extra={CLAIM: {
        "id": account.id, "username": account.username, "role": account.role,
        "allowedKeyIds": list(account.allowed_key_ids), "mustChange": account.must_change_password}})


def identity_for(account: Account) -> Identity:
    return Identity(username=account.username, display_name=account.username, email=account.email,
                    groups=(account.role,), permissions={"role": account.role})


def _claim(credential: Credential | None) -> Claim | None:
    if credential is None or credential.kind != KIND:
        return None
    data = credential.extra.get(CLAIM)
    if not isinstance(data, dict):
        return None
    # The claim was written by this program (credential_for): its types are known, only checked.
    return Claim(str(data.get("id", "")), str(data.get("username", "")), str(data.get("role", "")),
                 tuple(data.get("allowedKeyIds") or ()), data.get("mustChange") is True)


def claim(session: Session, site: str) -> Claim | None:
    """The local account that holds `site` in this session, if it is a local site's."""
    return _claim(session.credentials.get(site))


def any_claim(session: Session) -> Claim | None:
    """The session's local account (its own site's first; the admin API is not per site)."""
    found = _claim(session.credentials.get(session.site))
    if found is not None:
        return found
    for credential in session.credentials.values():
        found = _claim(credential)
        if found is not None:
            return found
    return None


def clear_must_change(session: Session, account_id: str) -> None:
    """After a password change: the session that changed it may go on."""
    for credential in session.credentials.values():
        data = credential.extra.get(CLAIM) if credential.kind == KIND else None
        if isinstance(data, dict) and data.get("id") == account_id:
            data["mustChange"] = False
