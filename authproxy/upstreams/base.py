"""The upstream adapter interface and its registry.

An adapter knows one product: how to sign a person in with the product's own login API, where the
resulting credential goes on each forwarded request, which client-supplied values must never reach
the product, and how the product says "this credential has expired".

    ADAPTERS["technitium"] -> TechnitiumAdapter(site, http)

Adapters do I/O only through the shared `aiohttp.ClientSession` they are given (DummyCookieJar, no
redirects, no auto-decompression); a login that returns cookies reads them from the response.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.config.schema import SiteConfig
from authproxy.errors import ConfigError


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


LoginStatus = Literal["ok", "totp_required", "invalid", "blocked"]


@dataclass(frozen=True, slots=True)
class LoginResult:
    status: LoginStatus
    credential: Credential | None = None
    identity: Identity | None = None
    message: str = ""            # safe to show: never contains the password or token
    retry_after: int | None = None


@dataclass(slots=True)
class UpstreamRequest:
    """The request about to go upstream, mutable so the adapter can strip and inject.

    `raw_query` stays percent-encoded exactly as the client sent it (see proxy.headers for the
    helpers that drop or add one parameter without re-encoding the rest).
    """

    method: str
    raw_path: str
    raw_query: str
    headers: CIMultiDict[str]
    form: list[tuple[str, str]] | None = None  # set when a urlencoded body was buffered for rewriting


class UpstreamAdapter(Protocol):
    """One product's login, injection and expiry rules."""

    name: ClassVar[str]
    site: SiteConfig

    async def login(self, username: str, password: str, totp: str | None, client_ip: str) -> LoginResult:
        """Call the product's own login; raises UpstreamUnavailable when it cannot be reached."""

    async def logout(self, credential: Credential) -> None:
        """End the upstream session (best effort; errors are logged by the caller, not raised)."""

    async def keepalive(self, credential: Credential) -> bool:
        """The cheapest authenticated call; False when the upstream says the credential is dead."""

    async def identity(self, credential: Credential) -> Identity | None:
        """Ask the upstream who this is (None when the credential is dead)."""

    def prepare_request(self, req: UpstreamRequest, credential: Credential | None) -> None:
        """Remove what the client must not choose, then add `credential` where the upstream wants it."""

    def forward_auth_headers(self, credential: Credential) -> dict[str, str]:
        """Headers a forward-auth answer carries so the proxy in front can inject the credential."""

    def wants_body(self, req: UpstreamRequest, status: int, headers: CIMultiDictProxy[str]) -> bool:
        """True when the proxy must buffer this (small) answer for `is_expired`/rewriting."""

    def is_expired(self, status: int, headers: CIMultiDictProxy[str], body: bytes | None) -> bool:
        """Whether this answer means "the credential is no longer valid"."""

    def filter_response_headers(self, headers: CIMultiDict[str]) -> None:
        """Drop answer headers that carry the upstream session (e.g. its Set-Cookie)."""


AdapterFactory = Callable[[SiteConfig, aiohttp.ClientSession], UpstreamAdapter]
ADAPTERS: dict[str, AdapterFactory] = {}


def register(name: str) -> Callable[[type[Any]], type[Any]]:
    def deco(cls: type[Any]) -> type[Any]:
        ADAPTERS[name] = cls
        return cls

    return deco


def load_builtin_adapters() -> None:
    """Import the bundled adapters so they register themselves."""
    from authproxy.upstreams import technitium  # noqa: F401


def adapter_factory(type_name: str) -> AdapterFactory:
    load_builtin_adapters()
    try:
        return ADAPTERS[type_name]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise ConfigError([f"UPSTREAM_TYPE: unknown upstream type {type_name!r}; known types: {known}"]) from None
