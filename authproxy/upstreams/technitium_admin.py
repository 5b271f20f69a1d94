"""Technitium's users, groups and permissions, as authproxy's background work needs them.

* `judge`: whether a token's *effective* permissions (`info.permissions` of `/api/user/session/get`,
  which already counts every group the user is in, the built-in `Everyone` included) are safe for
  background work: `DnsClient` can view; no section can modify or delete; `Administration` cannot even
  be viewed. Pure, so it is tested on its own.
* `check` and `reverse_name`: the token's own session read, and one PTR lookup through
  `/api/dnsClient/resolve` (DnsClient: View).
* `may_administer` and `create_background_token`: the migration from a shared admin token. A
  dedicated user (the name suffixed when taken) is created with a random password nobody learns, is
  left in no group but `Everyone` (which cannot be left), gets `DnsClient: View` as its own row of that
  section's table (read first, written back whole: `permissions/set` replaces the table), and gets a
  non-expiring API token, which is checked like any background token before it is handed back once.

Every call answers in Technitium's envelope; a refusal is `status: error` with "Access was denied.".
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from authproxy.errors import UpstreamProtocolError
from authproxy.sessions.model import Credential
from authproxy.upstreams.base import TokenCheck

BACKGROUND_SECTION = "DnsClient"
ADMIN_SECTION = "Administration"
DEFAULT_BACKGROUND_USER = "authproxy-background"
TOKEN_NAME = "authproxy-background"
MAX_NAME_TRIES = 50


class MigrationError(Exception):
    """The migration could not be done; `status` is what the API answers, the text is safe to show."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class NewBackgroundToken:
    """The migration's result: the user made for it and its token (shown once, never stored)."""

    username: str
    token: str
    check: TokenCheck


def _allowed(permissions: dict[str, Any], section: str, flag: str) -> bool:
    row = permissions.get(section)
    return isinstance(row, dict) and row.get(flag) is True


def judge(permissions: dict[str, Any]) -> TokenCheck:
    """Safe means: DnsClient can view, nothing can be modified or deleted, Administration is not visible."""
    too = [
        section
        for section, row in permissions.items()
        if isinstance(row, dict) and (row.get("canModify") is True or row.get("canDelete") is True)
    ]
    if _allowed(permissions, ADMIN_SECTION, "canView") and ADMIN_SECTION not in too:
        too.append(ADMIN_SECTION)
    too.sort()
    if too:
        what = ", ".join(_what(permissions, s) for s in too)
        return TokenCheck(
            validated=True,
            ok=False,
            too_privileged=tuple(too),
            reason=f"too privileged for background work: {what}; give the token's user "
            "DnsClient: View only (and check the groups it is in, Everyone included)",
        )
    if not _allowed(permissions, BACKGROUND_SECTION, "canView"):
        return TokenCheck(
            validated=True, ok=False, reason="lacks DnsClient: View, which reverse (PTR) lookups need"
        )
    return TokenCheck(validated=True, ok=True, reason="ok: DnsClient: View, nothing it can change")


def _what(permissions: dict[str, Any], section: str) -> str:
    row = permissions.get(section) or {}
    flags = [name for name, key in (("modify", "canModify"), ("delete", "canDelete")) if row.get(key) is True]
    return f"{section} can {' and '.join(flags)}" if flags else f"{section} can view"


def unreadable(reason: str) -> TokenCheck:
    return TokenCheck(validated=False, ok=False, reason=reason)


def permissions_of(envelope: dict[str, Any]) -> dict[str, Any] | None:
    """`info.permissions` of a session/get answer (None when it is not an object)."""
    info = envelope.get("info")
    perms = info.get("permissions") if isinstance(info, dict) else None
    return perms if isinstance(perms, dict) else None


def ptr_from(envelope: dict[str, Any]) -> str | None:
    """The first PTR name in a dnsClient/resolve answer (`response.result.Answer[].RDATA.Domain`)."""
    response = envelope.get("response")
    result = response.get("result") if isinstance(response, dict) else None
    answers = result.get("Answer") if isinstance(result, dict) else None
    for record in answers if isinstance(answers, list) else ():
        if isinstance(record, dict) and record.get("Type") == "PTR" and isinstance(record.get("RDATA"), dict):
            name = record["RDATA"].get("Domain")
            if isinstance(name, str) and name:
                return name.lower().removesuffix(".")  # checked as a host name in login/background.py
    return None


def may_administer(envelope: dict[str, Any]) -> bool:
    """Whether a session/get answer's account can do every step of the migration (Administration:
    view the tables, modify users and tokens, delete: permissions/set needs it)."""
    perms = permissions_of(envelope) or {}
    return all(_allowed(perms, ADMIN_SECTION, f) for f in ("canView", "canModify", "canDelete"))


def answer_of(envelope: dict[str, Any], what: str) -> dict[str, Any]:
    """The `response` of an ok envelope; a refusal or error becomes a MigrationError naming the step."""
    if envelope.get("status") == "ok":
        response = envelope.get("response")
        return response if isinstance(response, dict) else {}
    if envelope.get("status") == "invalid-token":
        raise MigrationError(
            "Technitium no longer accepts the administrator's token; sign in again.",
            code="session_expired",
            status=401,
        )
    message = str(envelope.get("errorMessage") or "error")[:200]
    if message == "Access was denied.":
        raise MigrationError(
            f"Technitium refused to {what}: the account may not administer users.",
            code="forbidden",
            status=403,
        )
    raise MigrationError(f"Technitium could not {what}: {message}", code="upstream_error", status=502)


def _flag(value: Any) -> str:
    return "true" if value is True else "false"


def table_with(rows: list[Any], key: str, name: str, *, view: bool) -> str:
    """A section's table in permissions/set's `name|view|modify|delete|...` form, `name` set to view-only
    (or left out), every other row written back as it was."""
    parts: list[str] = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get(key), str) or row[key].lower() == name.lower():
            continue
        parts += [
            row[key],
            _flag(row.get("canView")),
            _flag(row.get("canModify")),
            _flag(row.get("canDelete")),
        ]
    if view:
        parts += [name, "true", "false", "false"]
    return "|".join(parts)


def candidate_names(base: str, taken: set[str]) -> list[str]:
    """`base`, then `base-2`, `base-3`, ... without the names already taken (Technitium lower-cases names)."""
    names = [base] + [f"{base}-{i}" for i in range(2, MAX_NAME_TRIES + 1)]
    return [n for n in names if n.lower() not in taken]


def new_password() -> str:
    """The dedicated user's password: random, never shown or stored (nobody signs in as it)."""
    return secrets.token_urlsafe(32)


def require_token(response: dict[str, Any]) -> str:
    token = response.get("token")
    if not isinstance(token, str) or not token:
        raise UpstreamProtocolError("technitium answered createToken without a token")
    return token


def plain(credential: Credential) -> Credential:
    """The credential as an API call sends it (Bearer and `token`, whatever the version)."""
    mode = credential.extra.get("mode") or "both"
    return Credential(secret=credential.secret, kind="token", actor=credential.actor, extra={"mode": mode})
