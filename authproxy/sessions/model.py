"""The session model: one signed-in actor, one credential per site.

Serialised to JSON, then sealed by the manager; stores never see these objects.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(slots=True)
class Credential:
    """What the upstream handed out for one actor; lives only inside the sealed session."""

    secret: str = field(repr=False)
    kind: str = "token"                      # adapter-defined: token, cookie, basic, ...
    actor: Literal["user", "service"] = "user"
    extra: dict[str, Any] = field(default_factory=dict)  # adapter data (api version, cookie name...)
    obtained_at: float = field(default_factory=time.time)
    touched_at: float = field(default_factory=time.time)  # last time the upstream saw it used
    upstream_ttl: float | None = None        # upstream sliding expiry in seconds; None = none known

    def to_dict(self) -> dict[str, Any]:
        return {"secret": self.secret, "kind": self.kind, "actor": self.actor, "extra": self.extra,
                "obtained_at": self.obtained_at, "touched_at": self.touched_at,
                "upstream_ttl": self.upstream_ttl}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Credential:
        return cls(secret=str(data["secret"]), kind=str(data.get("kind", "token")),
                   actor=data.get("actor", "user"), extra=dict(data.get("extra") or {}),
                   obtained_at=float(data.get("obtained_at", 0)), touched_at=float(data.get("touched_at", 0)),
                   upstream_ttl=None if data.get("upstream_ttl") is None else float(data["upstream_ttl"]))


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the upstream says this person is, and what it lets them do (shown, never trusted blindly)."""

    username: str
    display_name: str = ""
    email: str = ""
    groups: tuple[str, ...] = ()
    permissions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"username": self.username, "display_name": self.display_name, "email": self.email,
                "groups": list(self.groups), "permissions": self.permissions}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Identity:
        return cls(username=str(data["username"]), display_name=str(data.get("display_name", "")),
                   email=str(data.get("email", "")), groups=tuple(data.get("groups") or ()),
                   permissions=dict(data.get("permissions") or {}))


# Credential.extra key under which a credential carried over from an earlier sign-in keeps the identity
# of the account that obtained it (set when sessions are merged at login).
OWNER = "owner"


def owner_record(identity: Identity) -> dict[str, object]:
    """What `Credential.extra[OWNER]` holds: enough to re-check allow lists and fill Remote-* headers."""
    return {"username": identity.username, "display_name": identity.display_name, "email": identity.email,
            "groups": list(identity.groups)}


@dataclass(slots=True)
class Session:
    """A person (or a service actor) signed in through authproxy."""

    user: str
    site: str                               # the site the person signed in at
    identity: Identity
    credentials: dict[str, Credential] = field(default_factory=dict)   # site name -> credential
    actor: Literal["user", "service"] = "user"
    created_at: float = field(default_factory=time.time)
    expires_at: float = 0.0                 # absolute end (created_at + max age)
    client_ip: str = ""
    auth_method: str = "passthrough"        # which login method made it (passthrough, local, otp, ...)

    def to_dict(self) -> dict[str, Any]:
        return {"v": 1, "user": self.user, "site": self.site, "identity": self.identity.to_dict(),
                "credentials": {k: c.to_dict() for k, c in self.credentials.items()}, "actor": self.actor,
                "created_at": self.created_at, "expires_at": self.expires_at, "client_ip": self.client_ip,
                "auth_method": self.auth_method}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Session:
        if data.get("v") != 1:
            raise ValueError("unknown session version")
        return cls(
            user=str(data["user"]),
            site=str(data["site"]),
            identity=Identity.from_dict(data["identity"]),
            credentials={k: Credential.from_dict(v) for k, v in (data.get("credentials") or {}).items()},
            actor=data.get("actor", "user"),
            created_at=float(data["created_at"]),
            expires_at=float(data["expires_at"]),
            client_ip=str(data.get("client_ip", "")),
            auth_method=str(data.get("auth_method", "passthrough")),
        )


def site_identity(session: Session, site_name: str) -> Identity | None:
    """The account behind the session's credential for `site_name` (None when there is no credential)."""
    cred = session.credentials.get(site_name)
    if cred is None:
        return None
    owner = cred.extra.get(OWNER)
    if isinstance(owner, dict) and isinstance(owner.get("username"), str) and owner["username"]:
        groups = owner.get("groups")
        return Identity(username=owner["username"], display_name=str(owner.get("display_name") or ""),
                        email=str(owner.get("email") or ""),
                        groups=tuple(str(g) for g in groups) if isinstance(groups, list) else ())
    if session.identity.username:
        return session.identity
    return Identity(username=session.user, display_name=session.identity.display_name,
                    email=session.identity.email, groups=session.identity.groups)
