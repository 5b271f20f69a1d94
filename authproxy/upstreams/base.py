"""The upstream adapter contract.

An adapter knows one product: how to sign a person in with the product's own login API, where the
resulting credential goes on each forwarded request, which client-supplied values must never reach
the product, and how the product says "this credential has expired".

`UpstreamAdapter` is the whole contract, as a base class: the abstract methods every product must
answer, and the optional hooks with defaults that do nothing, so mypy checks every override and an
editor finds every caller. upstreams/registry.py maps type names to adapter classes.

Adapters do I/O only through the shared `aiohttp.ClientSession` they are given (DummyCookieJar, no
redirects, no auto-decompression); a login that returns cookies reads them from the response.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.config.schema import SiteConfig
from authproxy.sessions.manager import LoadedSession
from authproxy.sessions.model import Credential, Identity
from authproxy.sessions.store import SessionStore
from authproxy.upstreams.query import FieldNames
from authproxy.upstreams.ui import Handoff, Outcome, UiAnswer, UiCall

LoginStatus = Literal["ok", "totp_required", "invalid", "blocked"]

NO_FIELDS = FieldNames(())   # sites whose credential never rides in a query or a form


@dataclass(frozen=True, slots=True)
class LoginResult:
    status: LoginStatus
    credential: Credential | None = None
    identity: Identity | None = None
    message: str = ""            # safe to show: never contains the password or token
    retry_after: int | None = None


class BodyRefused(Exception):
    """A request body the adapter will not let go upstream: `status`, `code` and a `message` that says
    what to send instead (never a secret)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """What a background token may do, judged from its own session upstream (never the token itself).

    `validated`: its privileges could be read; `ok`: safe for background work; `reason`: why not (or
    what it may do); `too_privileged`: the sections it could change, or must not even see."""

    validated: bool
    ok: bool
    reason: str
    too_privileged: tuple[str, ...] = ()


@dataclass(slots=True)
class UpstreamRequest:
    """The request about to go upstream, mutable so the adapter can strip and inject.

    `raw_query` stays percent-encoded exactly as the client sent it (see upstreams/query.py for the
    helpers that drop or add one parameter without re-encoding the rest).
    """

    method: str
    raw_path: str
    raw_query: str
    headers: CIMultiDict[str]


class UpstreamAdapter(abc.ABC):
    """One product's login, injection and expiry rules (abstract), and its optional hooks (defaults)."""

    name: ClassVar[str]
    # The service credential is checked (login/background.py) in AUTH_MODE=none too: products where a
    # bad key is worth knowing at start even when it is everyone's (TrueNAS revokes keys it distrusts).
    checks_service_key: ClassVar[bool] = False

    def __init__(self, site: SiteConfig, http: aiohttp.ClientSession) -> None:
        self.site = site
        self.http = http

    # ---- what every product must answer ----------------------------------------------------------

    @abc.abstractmethod
    async def login(self, username: str, password: str, totp: str | None, client_ip: str) -> LoginResult:
        """Call the product's own login; raises UpstreamUnavailable when it cannot be reached."""

    @abc.abstractmethod
    async def logout(self, credential: Credential) -> None:
        """End the upstream session (best effort; errors are logged by the caller, not raised)."""

    @abc.abstractmethod
    async def keepalive(self, credential: Credential) -> bool:
        """The cheapest authenticated call; False when the upstream says the credential is dead."""

    @abc.abstractmethod
    def prepare_request(self, req: UpstreamRequest, credential: Credential | None) -> None:
        """Remove what the client must not choose, then add `credential` where the upstream wants it."""

    @abc.abstractmethod
    def forward_auth_headers(self, credential: Credential) -> dict[str, str]:
        """Headers a forward-auth answer carries so the proxy in front can inject the credential."""

    @abc.abstractmethod
    def wants_body(self, req: UpstreamRequest, status: int, headers: CIMultiDictProxy[str]) -> bool:
        """True when the proxy must buffer this (small) answer for `is_expired`/rewriting."""

    @abc.abstractmethod
    def is_expired(self, status: int, headers: CIMultiDictProxy[str], body: bytes | None) -> bool:
        """Whether this answer means "the credential is no longer valid"."""

    @abc.abstractmethod
    def filter_response_headers(self, headers: CIMultiDict[str]) -> None:
        """Drop answer headers that carry the upstream session (e.g. its Set-Cookie)."""

    # ---- optional hooks: the defaults do nothing ---------------------------------------------------

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> list[str]:
        """Configuration problems in the site's `options`, each naming the fix (none by default)."""
        return []

    @classmethod
    def check_site(cls, site: SiteConfig) -> list[str]:
        """Problems of the site as a whole (its URL with its service credential, say); none by default."""
        return []

    def in_band(self, upstream_path: str) -> bool:
        """True when WebSockets at this path are answered message by message (the product's session is
        the socket itself: proxy/truenas_bridge.py), not relayed as bytes."""
        return False

    @classmethod
    def typed_names(cls, options: dict[str, Any]) -> bool:
        """True when the identity is the name the person typed, unchecked (the product checks only a
        password), so an allow list of names could not hold."""
        return False

    async def aclose(self) -> None:  # noqa: B027 - optional: doing nothing is the default
        """Release connections the adapter holds itself (called once at shutdown)."""

    def bind_store(self, store: SessionStore) -> None:  # noqa: B027 - optional: doing nothing is the default
        """Keep upstream-side state every replica must share in `store` (called once at start-up)."""

    async def may_administer(self, credential: Credential) -> bool:
        """Whether this person's own credential may administer the upstream (`/me` shows such a person
        the background token's reasons and every site); False unless the adapter can tell."""
        return False

    def service_credential(self, secret: str) -> Credential:
        """The site's configured service token as a credential (AUTH_MODE=none/hybrid)."""
        return Credential(secret=secret, actor="service")

    async def check_background(self, credential: Credential) -> TokenCheck | None:
        """Whether `credential` (the site's background token) is least-privileged enough for background
        work; None: the product cannot tell, and the token is used as configured."""
        return None


    async def reverse_name(self, credential: Credential, address: str) -> str | None:
        """The reverse (PTR) name of `address`, asked with the background token; None: none known."""
        return None

    def credential_fields(self) -> FieldNames:
        """Request field names that carry the credential: `prepare_request` cuts them from the query,
        proxy/forms.py from urlencoded and multipart bodies (none by default)."""
        return NO_FIELDS

    def gets_change_state(self, upstream_path: str) -> bool:
        """True when a GET to this path may change something (so it is never opened from another site,
        nor loaded as a page without a same-origin sign)."""
        return False

    def rewrite_body(self, req: UpstreamRequest, body: bytes, loaded: LoadedSession | None) -> bytes:
        """A buffered answer (see `wants_body`) as the browser may see it: placeholders for token fields."""
        return body

    def answer_secret(self, req: UpstreamRequest, headers: CIMultiDictProxy[str],
                      loaded: LoadedSession | None) -> tuple[str, str] | None:
        """(secret, stand-in) to replace in an answer `rewrite_body` did not see whole (over 1 MiB, or
        not JSON where a query credential may echo); None: nothing to replace."""
        return None

    def restores_body(self, req: UpstreamRequest) -> bool:
        """True when this request's (JSON, at most 1 MiB) body must pass `restore_body` first: it may
        write back fields `rewrite_body` blanked in an earlier answer."""
        return False

    async def restore_body(self, req: UpstreamRequest, body: bytes, credential: Credential) -> bytes:
        """The body with the real values back where the browser sent the blanks it was given; raises
        BodyRefused when they cannot be put back."""
        return body

    def ws_sign_out_text(self) -> str:
        """Text that, in a WebSocket message from the browser, is the UI signing out (the message still
        goes upstream, and authproxy's session ends too); "" = none."""
        return ""

    def public_call(self, method: str, upstream_path: str) -> bool:
        """A call the product answers for anyone (no credential needed): forwarded without a session,
        with no credential added, so the UI gets the product's own answer instead of authproxy's 401."""
        return False

    # ---- the UI's own sign-in calls (upstreams/ui.py; answered by web/uicalls.py) ----------------

    ui_handoff: ClassVar[Handoff | None] = None           # the UI reads its placeholder from a cookie
    ui_foreign_writes: ClassVar[UiAnswer | None] = None   # the product's own answer to a cross-site write
    ui_signed_out_status: ClassVar[int] = 204             # authproxy's answer to a UI's script-made logout

    def ui_call(self, method: str, upstream_path: str) -> UiCall | None:
        """Which of the UI's own sign-in calls this request is (None: an ordinary one, forwarded)."""
        return None

    def ui_words(self, call: UiCall, outcome: Outcome, message: str) -> UiAnswer | None:
        """How the product words `outcome` of `call` (`message` is authproxy's text for it); None:
        authproxy's own answer."""
        return None

    def ui_login_fields(
        self, query: list[tuple[str, str]], form: list[tuple[str, str]]
    ) -> dict[str, str | None]:
        """The username/password/totp a UI's login form sent (`sign_in` calls), from its query and form."""
        values = dict(form) | dict(query)
        return {
            "username": values.get("username"),
            "password": values.get("password"),
            "totp": values.get("totp"),
        }

    async def ui_session(self, loaded: LoadedSession | None, client_ip: str) -> UiAnswer | None:
        """The UI's session call answered for `loaded` (None: the service actor of AUTH_MODE=none), and
        what a successful `sign_in` answers; None: nothing the product would say."""
        return None

    async def ui_alive(self, credential: Credential) -> bool:
        """Whether a credential a `signed_in` call finds is still good upstream (False: it is dropped)."""
        return True

    def placeholder(self, loaded: LoadedSession) -> str | None:
        """What this session's browser holds instead of the upstream token, for UIs that must hold one."""
        return None

    def signed_out(self, upstream_path: str, headers: Mapping[str, str],
                   query: Mapping[str, str]) -> UiAnswer | None:
        """A call with no live session, answered the way the product answers a dead token; None:
        authproxy's own answer (the login page, or 401)."""
        return None
