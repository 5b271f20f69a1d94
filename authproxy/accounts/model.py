"""Accounts and resources (named upstream keys) as data: what the store keeps, what the API shows.

    Account   id, username, role (viewer < editor < admin), email, allowedKeyIds, disabled, createdAt,
              lastLoginAt, the password hash, TOTP state, and whether the password must be changed
    Resource  id, name, algorithm, site and the secret (sealed in the store; never shown after creation)
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Role = Literal["viewer", "editor", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "editor", "admin")   # each may do what the ones before it may
_RANK = {role: rank for rank, role in enumerate(ROLES)}
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")


def at_least(role: str, needed: str) -> bool:
    """Whether `role` may do what `needed` may (an unknown role may do nothing)."""
    ranks: dict[str, int] = _RANK  # type: ignore[assignment]
    return role in ranks and ranks[role] >= ranks.get(needed, len(ROLES))


def new_id() -> str:
    return secrets.token_hex(8)


@dataclass(slots=True)
class Totp:
    """TOTP of a local account: the secret (once confirmed, `enabled`), and hashed recovery codes."""

    secret: str = field(default="", repr=False)
    enabled: bool = False
    recovery: list[str] = field(default_factory=list, repr=False)   # argon2 hashes, one per unused code

    def to_dict(self) -> dict[str, Any]:
        return {"secret": self.secret, "enabled": self.enabled, "recovery": list(self.recovery)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Totp:
        data = data or {}
        return cls(secret=str(data.get("secret", "")), enabled=bool(data.get("enabled", False)),
                   recovery=[str(h) for h in data.get("recovery") or ()])


@dataclass(slots=True)
class Account:
    id: str
    username: str
    role: Role
    password_hash: str = field(repr=False)
    email: str = ""
    allowed_key_ids: list[str] = field(default_factory=list)
    disabled: bool = False
    must_change_password: bool = False
    created_at: float = field(default_factory=time.time)
    last_login_at: float | None = None
    totp: Totp = field(default_factory=Totp)

    def public(self) -> dict[str, Any]:
        """What the API shows: never the hash, never TOTP secrets."""
        return {"id": self.id, "username": self.username, "role": self.role, "email": self.email,
                "allowedKeyIds": list(self.allowed_key_ids), "disabled": self.disabled,
                "mustChangePassword": self.must_change_password, "createdAt": self.created_at,
                "lastLoginAt": self.last_login_at, "totpEnabled": self.totp.enabled}

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "role": self.role,
                "passwordHash": self.password_hash,
                "email": self.email, "allowedKeyIds": list(self.allowed_key_ids), "disabled": self.disabled,
                "mustChangePassword": self.must_change_password, "createdAt": self.created_at,
                "lastLoginAt": self.last_login_at, "totp": self.totp.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Account:
        role = str(data.get("role", "viewer"))
        allowed = data.get("allowedKeyIds", data.get("allowedResources")) or []
        last = data.get("lastLoginAt")
        return cls(id=str(data["id"]), username=str(data["username"]),
                   role=role if role in ROLES else "viewer",
                   password_hash=str(data.get("passwordHash", data.get("password", ""))),
                   email=str(data.get("email") or ""), allowed_key_ids=[str(k) for k in allowed],
                   disabled=bool(data.get("disabled", False)),
                   must_change_password=bool(data.get("mustChangePassword", False)),
                   created_at=_when(data.get("createdAt")) or time.time(), last_login_at=_when(last),
                   totp=Totp.from_dict(data.get("totp")))


def _when(value: object) -> float | None:
    """A time as seconds since the epoch: a number, or the ISO 8601 text other tools write."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) / (1000.0 if value > 1e11 else 1.0)   # JavaScript writes milliseconds
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


@dataclass(slots=True)
class Resource:
    """A named upstream credential (a TSIG key, one of several API keys of a service)."""

    id: str
    name: str
    secret: str = field(repr=False)
    algorithm: str = ""
    site: str = ""                          # "" = any local site
    created_at: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "algorithm": self.algorithm, "site": self.site,
                "createdAt": self.created_at}

    def to_dict(self) -> dict[str, Any]:
        return {**self.public(), "secret": self.secret}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resource:
        return cls(id=str(data["id"]), name=str(data["name"]), secret=str(data["secret"]),
                   algorithm=str(data.get("algorithm") or ""), site=str(data.get("site") or ""),
                   created_at=float(data.get("createdAt") or time.time()))

    def field_value(self, what: str) -> str:
        fields = {"id": self.id, "name": self.name, "algorithm": self.algorithm, "secret": self.secret}
        return fields.get(what, "")
