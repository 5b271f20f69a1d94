"""The upstream adapter interface and its registry.

An adapter knows one product: how to sign a person in with the product's own login API, where the
resulting credential goes on each forwarded request, which client-supplied values must never reach
the product, and how the product says "this credential has expired".

    ADAPTERS["technitium"] -> TechnitiumAdapter(site, http)

Optional hooks an adapter may define (looked up with getattr by the proxy):
    async intercept(request, site) -> web.StreamResponse | None   answer a UI's own login/session call
    signed_out(request, site) -> web.StreamResponse | None         a call with no live session, answered
                                                                   the way the product answers a dead token
    rewrite_body(ureq, body, loaded) -> bytes                      placeholders for token fields in JSON
    answer_secret(ureq, headers, loaded) -> (secret, stand-in) | None
                                                                   what to replace in an answer rewrite_body
                                                                   did not see whole (over 1 MiB, or not
                                                                   JSON where a query credential may echo)
    service_credential(secret) -> Credential                       the site's service token as a credential
    credential_fields() -> FieldNames                              request field names that carry the
                                                                   credential: prepare_request cuts them
                                                                   from the query, proxy/forms.py from
                                                                   urlencoded and multipart bodies
    gets_change_state(upstream_path) -> bool                       a GET there may change something (so it
                                                                   is never opened from another site, nor
                                                                   loaded as a page without a same-origin sign)
    bind_store(store) -> None                                      state every replica must share (called at start)
    check_options(options) -> list[str]  (staticmethod)            config problems, each naming the fix
    typed_names(options) -> bool  (classmethod)                    the identity is the name typed, unchecked
                                                                   (so an allow list could not hold)

Adapters do I/O only through the shared `aiohttp.ClientSession` they are given (DummyCookieJar, no
redirects, no auto-decompression); a login that returns cookies reads them from the response.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.config.schema import SiteConfig
from authproxy.errors import ConfigError
from authproxy.sessions.model import Credential, Identity

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
    from authproxy.upstreams import (  # noqa: F401
        adguard,
        generic,
        pihole,
        qbittorrent,
        technitium,
        transmission,
    )


def adapter_factory(type_name: str) -> AdapterFactory:
    load_builtin_adapters()
    try:
        return ADAPTERS[type_name]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise ConfigError([f"UPSTREAM_TYPE: unknown upstream type {type_name!r}; known types: {known}"]) from None
