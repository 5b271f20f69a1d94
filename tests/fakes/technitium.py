"""A faithful fake of the Technitium DNS Server web API (v15.2, and v14.3 on request).

Technitium needs .NET and cannot run here, so the gateway's tests talk to this instead. It is a real
aiohttp server on 127.0.0.1 that reproduces what Technitium's APIDOCS.md says and what the upstream
source does (`DnsServerCore/DnsWebService.cs` `WebServiceApiMiddleware`/`TryValidateSession`,
`WebServiceAuthApi.cs`, `Auth/AuthManager.cs`, `Auth/UserSession.cs`), quirks included:

* every `/api/*` answer is HTTP 200 JSON with `status` ok / error / invalid-token / 2fa-required; login,
  logout, createToken and session/get have no `response` wrapper, every other call (including
  createSingleUseToken, whatever APIDOCS.md shows) does;
* an unknown `/api/*` path is checked for a token first (no token -> invalid-token) and then answers
  404 with an empty body; non-API paths other than `/` and `/index.html` answer 404;
* v15 reads `Authorization: Bearer` first and falls back to a `token` query/form field; v14 reads only
  `token` and, when it is missing, answers `status: error` "Parameter 'token' missing." (not
  invalid-token);
* repeated query/form values are joined with "," (ASP.NET `StringValues` -> string);
* the special-cased paths (login, logout, session/get, downloads) match case-sensitively while routing
  is case-insensitive, as in the upstream middleware;
* 5 failed logins from one network (/32, /64) block it for 300 s; admin/admin failures do not count; a
  wrong TOTP counts; a success resets the count; `X-Real-IP` is believed only from a peer in the
  default "reverse proxy" ACL (127/8, 10/8, 100.64/10, 169.254/16, 172.16/12, 192.168/16, IPv6 outside
  2000::/3);
* sliding expiry of Standard sessions; single-use tokens die on first use and, like upstream, also
  whenever the server "saves its config" (a login, a logout, an expired session being dropped).

Fake-only additions, absent upstream: `/api/echo` (says what arrived), `peer_ip` (pretend the TCP peer
has another address), `issued_tokens` (every token ever minted, single-use ones included, so tests can
prove none reached a browser), and the inspection helpers. Opt-in knobs, off by default: `ui_dir` serves
a small Technitium-like web UI (tests/fakes/technitium_ui: index.html + js/ as the real `www/` would,
`{{API_VERSION}}` in index.html filled in) instead of the one-line index page; `compress=True` gzips JSON
answers for clients that accept gzip, as the upstream's `UseResponseCompression` does (it prefers br).
Time comes from `clock` (plus `advance()`), so expiry, TOTP and the block window are all testable
without sleeping.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import gzip
import io
import ipaddress
import json
import secrets
import time
import zipfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP as _HTTP_POLICY
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import parse_qsl

import pyotp
from aiohttp import web
from multidict import CIMultiDict, MultiDict

__all__ = [
    "ADMIN_GROUPS",
    "EVERYONE",
    "PERMISSION_SECTIONS",
    "FakeClock",
    "FakeGroup",
    "FakeSession",
    "FakeTechnitium",
    "FakeUser",
    "RecordedRequest",
]

PERMISSION_SECTIONS: tuple[str, ...] = (
    "Dashboard", "Zones", "Cache", "Allowed", "Blocked", "Apps", "DnsClient", "Settings", "DhcpServer",
    "Administration", "Logs",
)
VIEW, MODIFY, DELETE = 1, 2, 4
ALL = VIEW | MODIFY | DELETE

# Built-in groups and their default permissions (AuthManager.CreateDefaultConfig); each fake starts from a
# copy, which /api/admin/permissions/set (and `set_group_permission`) then changes.
_GROUP_PERMISSIONS: dict[str, dict[str, int]] = {
    "Administrators": {s: ALL for s in PERMISSION_SECTIONS},
    "DNS Administrators": {s: ALL for s in ("Zones", "Cache", "Allowed", "Blocked", "Apps", "DnsClient",
                                            "Settings")},
    "DHCP Administrators": {"DhcpServer": ALL},
    "Everyone": {s: VIEW for s in ("Dashboard", "Zones", "Cache", "Allowed", "Blocked", "Apps", "DnsClient",
                                   "DhcpServer", "Logs")},
}
_GROUP_DESCRIPTIONS = {"Administrators": "Super administrators",
                       "DNS Administrators": "DNS service administrators",
                       "DHCP Administrators": "DHCP service administrators", "Everyone": "All users"}
ADMIN_GROUPS: tuple[str, ...] = ("Administrators", "Everyone")
EVERYONE = "Everyone"

MAX_LOGIN_ATTEMPTS = 5
BLOCK_NETWORK_SECONDS = 300
INVALID_TOKEN_MESSAGE = "Invalid token or session expired."

# DnsWebService._webServiceReverseProxyAddresses defaults (v15.2); identical to NetUtilities.IsPrivateIP
# that v14/v15.0 used. First match wins; the bool says "deny".
_REVERSE_PROXY_ACL: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, bool], ...] = (
    (ipaddress.ip_network("127.0.0.0/8"), False),
    (ipaddress.ip_network("10.0.0.0/8"), False),
    (ipaddress.ip_network("100.64.0.0/10"), False),
    (ipaddress.ip_network("169.254.0.0/16"), False),
    (ipaddress.ip_network("172.16.0.0/12"), False),
    (ipaddress.ip_network("192.168.0.0/16"), False),
    (ipaddress.ip_network("2000::/3"), True),
    (ipaddress.ip_network("::/0"), False),
)

_DOWNLOAD_PATHS = frozenset({
    "/api/dashboard/metrics/text", "/api/zones/export", "/api/allowed/export", "/api/blocked/export",
    "/api/settings/backup", "/api/logs/download", "/api/logs/export",
    "/api/admin/cluster/primary/transferConfig",
})
_NO_CACHE = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"}
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_STATIC_TYPES = {".html": "text/html", ".js": "application/javascript", ".css": "text/css",
                 ".png": "image/png", ".svg": "image/svg+xml", ".ico": "image/x-icon"}
_INDEX_HTML = (b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Technitium DNS Server</title>"
               b"</head><body><div id=\"pageLogin\">fake-technitium web console</div>"
               b"<script src=\"js/auth.js\"></script></body></html>\n")

SessionType = Literal["Standard", "ApiToken", "SingleUse"]


class FakeClock:
    """A settable clock; pass one instance to the fake and the gateway to move both together."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(slots=True)
class FakeGroup:
    """A group and its row in each section's permission table (Group.cs, Permission.cs)."""

    name: str
    description: str = ""
    permissions: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class FakeUser:
    """One local account; `permissions` are the user's own rows in each section's permission table,
    its groups add theirs (upstream Permission.IsPermitted: the user's own flags OR any group's)."""

    username: str
    password: str = field(repr=False)
    display_name: str
    totp_secret: str | None = field(default=None, repr=False)
    session_timeout: int = 1800
    permissions: dict[str, int] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    disabled: bool = False
    previous_logon: float = 0.0
    previous_address: str = "0.0.0.0"
    recent_logon: float = 0.0
    recent_address: str = "0.0.0.0"

    def permitted(self, section: str, flag: int, groups: Mapping[str, FakeGroup]) -> bool:
        if self.permissions.get(section, 0) & flag:
            return True
        return any(groups[g].permissions.get(section, 0) & flag for g in self.groups if g in groups)


@dataclass(slots=True)
class FakeSession:
    """A live token, as `Auth/UserSession.cs` keeps it."""

    token: str
    type: SessionType
    username: str
    token_name: str | None
    created: float
    last_seen: float
    last_seen_address: str
    last_seen_user_agent: str | None


@dataclass(slots=True)
class RecordedRequest:
    """What reached the fake, for tests to assert on (e.g. which credential the gateway injected)."""

    method: str
    path: str
    raw_query: str
    query: MultiDict[str]
    headers: CIMultiDict[str]
    form: MultiDict[str] | None
    body: bytes
    peer: str            # TCP peer (or the `peer_ip` override)
    x_real_ip: str | None
    client_ip: str       # what the server decided the client is (X-Real-IP when trusted)


class _ApiError(Exception):
    status = "error"


class _InvalidToken(_ApiError):
    status = "invalid-token"


class _TwoFactorRequired(_ApiError):
    status = "2fa-required"


@dataclass(slots=True)
class _Ctx:
    request: web.Request
    query: MultiDict[str]
    form: MultiDict[str] | None
    client_ip: str
    session: FakeSession | None = None


_Result = dict[str, Any] | web.StreamResponse
_Handler = Callable[[_Ctx], Awaitable[_Result]]


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_bool(value: str) -> bool:
    """.NET bool.Parse: case-insensitive true/false, anything else is an error."""
    v = value.strip().lower()
    if v in ("true", "false"):
        return v == "true"
    raise _ApiError(f"String '{value}' was not recognized as a valid Boolean.")


def _flags(value: Mapping[str, bool] | int) -> int:
    if isinstance(value, int):
        return value
    return ((VIEW if value.get("canView") else 0) | (MODIFY if value.get("canModify") else 0)
            | (DELETE if value.get("canDelete") else 0))


class FakeTechnitium:
    """Technitium DNS Server's web API on 127.0.0.1:<free port>; see the module docstring."""

    def __init__(self, *, api_version: int = 15, clock: Callable[[], float] | None = None,
                 login_failure_sleep: float = 0.0, totp_valid_window: int = 10,
                 server_domain: str = "fake-technitium", host: str = "127.0.0.1",
                 ui_dir: Path | str | None = None, compress: bool = False) -> None:
        if api_version not in (14, 15):
            raise ValueError("api_version must be 14 or 15")
        self.api_version = api_version
        self.version = "15.2" if api_version == 15 else "14.3"
        self.server_domain = server_domain
        self.login_failure_sleep = login_failure_sleep   # upstream: 1 s per failed login
        self.totp_valid_window = totp_valid_window       # upstream Authenticator: +/-10 periods
        self.peer_ip: str | None = None                  # fake-only: pretend the TCP peer is this
        self.totp_secret: str | None = None              # convenience slot the fixtures fill
        self.users: dict[str, FakeUser] = {}
        self.groups: dict[str, FakeGroup] = {
            name: FakeGroup(name, _GROUP_DESCRIPTIONS[name], dict(perms))
            for name, perms in _GROUP_PERMISSIONS.items()}
        self.ptr_records: dict[str, str] = {}            # address -> name, for dnsClient/resolve type=PTR
        self.sessions: dict[str, FakeSession] = {}
        self.requests: list[RecordedRequest] = []
        self.issued_tokens: list[str] = []               # fake-only: every token minted, in order
        self.ui_dir = Path(ui_dir).resolve() if ui_dir is not None else None
        self.compress = compress
        self.chunk_answers = 0  # >0: JSON answers go out chunked, in writes of this size (as Kestrel does)
        self.echo_padding = 0        # fake-only: /api/echo answers carry this many bytes of padding
        self.logout_fails = False    # fake-only: logout answers 503 and the token stays valid
        self.zones: dict[str, dict[str, Any]] = {}
        self.failed_attempts: dict[str, int] = {}        # network -> count
        self.blocked_networks: dict[str, float] = {}     # network -> unblock time
        self.query_log_apps: dict[str, set[str]] = {"Query Logs (Sqlite)": {"QueryLogsSqlite.App"}}
        self._clock = clock or time.time
        self._offset = 0.0
        self._host = host
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._started_at = self.now()
        self.app = web.Application(client_max_size=30_000_000)   # Kestrel's MaxRequestBodySize
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._routes: dict[str, _Handler] = {
            "/api/user/login": self._login,
            "/api/user/createtoken": self._create_token,
            "/api/user/logout": self._logout,
            "/api/user/session/get": self._session_get,
            "/api/user/profile/get": self._profile_get,
            "/api/user/profile/set": self._profile_set,
            "/api/dashboard/stats/get": self._stats_get,
            "/api/zones/list": self._zones_list,
            "/api/zones/create": self._zones_create,
            "/api/settings/backup": self._settings_backup,
            "/api/logs/export": self._logs_export,
            "/api/echo": self._echo,
            "/api/dnsclient/resolve": self._dns_client_resolve,
            "/api/resolvequery": self._dns_client_resolve,          # the obsolete path
            "/api/admin/users/list": self._admin_users_list,
            "/api/admin/users/create": self._admin_users_create,
            "/api/admin/users/get": self._admin_users_get,
            "/api/admin/users/set": self._admin_users_set,
            "/api/admin/users/delete": self._admin_users_delete,
            "/api/admin/groups/list": self._admin_groups_list,
            "/api/admin/permissions/get": self._admin_permissions_get,
            "/api/admin/permissions/set": self._admin_permissions_set,
            "/api/admin/sessions/createtoken": self._admin_sessions_create_token,
        }
        if api_version >= 15:
            self._routes["/api/sso/status"] = self._sso_status
            self._routes["/api/user/createsingleusetoken"] = self._create_single_use_token

    # ---------------------------------------------------------------- lifecycle and test helpers

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeTechnitium not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def now(self) -> float:
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move this fake's time forward (a shared FakeClock must be advanced by the caller instead)."""
        self._offset += seconds

    def add_user(self, username: str, password: str, *, display_name: str | None = None,
                 totp_secret: str | None = None, session_timeout: int = 1800,
                 permissions: Mapping[str, Mapping[str, bool] | int] | None = None,
                 groups: Iterable[str] | None = None, disabled: bool = False) -> FakeUser:
        """Add a local user. No permissions and no groups given -> an administrator (all sections).

        `permissions` maps section -> {canView,canModify,canDelete} or View=1|Modify=2|Delete=4 flags.
        `groups` defaults to ["Everyone"] when permissions are given. Every user is in Everyone whatever
        `groups` says (AuthManager.CreateUser adds it, users/set puts it back): Everyone can view
        Dashboard, Zones, Cache, Allowed, Blocked, Apps, DnsClient, DhcpServer and Logs by default.
        """
        if not 0 <= session_timeout <= 604800:
            raise ValueError("Session timeout value must be between 0-604800 seconds.")
        if 0 < session_timeout < 60:
            session_timeout = 60  # User.SessionTimeoutSeconds clamps low values
        unknown = set(permissions or {}) - set(PERMISSION_SECTIONS)
        if unknown:
            raise ValueError(f"unknown permission sections: {sorted(unknown)}")
        if groups is None:
            groups = ADMIN_GROUPS if permissions is None else ("Everyone",)
        user = FakeUser(username=username.lower(), password=password,
                        display_name=username if display_name is None else display_name,
                        totp_secret=totp_secret, session_timeout=session_timeout,
                        permissions={s: _flags(v) for s, v in (permissions or {}).items()},
                        groups=list(groups), disabled=disabled)
        unknown_groups = set(user.groups) - set(self.groups)
        if unknown_groups:
            raise ValueError(f"unknown groups: {sorted(unknown_groups)}")
        if EVERYONE not in user.groups:
            user.groups.append(EVERYONE)
        self.users[user.username] = user
        return user

    def set_group_permission(self, group: str, section: str, value: Mapping[str, bool] | int) -> None:
        """Change one row of a section's group table directly, as an administrator would in the UI."""
        if section not in PERMISSION_SECTIONS:
            raise ValueError(f"unknown permission section: {section}")
        self.groups[group].permissions[section] = _flags(value)

    def set_user_permission(self, username: str, section: str, value: Mapping[str, bool] | int) -> None:
        """Change the user's own row in a section's table directly."""
        if section not in PERMISSION_SECTIONS:
            raise ValueError(f"unknown permission section: {section}")
        self.users[username.lower()].permissions[section] = _flags(value)

    def add_group(self, name: str, description: str = "",
                  permissions: Mapping[str, Mapping[str, bool] | int] | None = None) -> FakeGroup:
        """A group of one's own (/api/admin/groups/create), with rows in the given sections."""
        group = FakeGroup(name, description, {s: _flags(v) for s, v in (permissions or {}).items()})
        self.groups[name] = group
        return group

    def permitted(self, username: str, section: str, flag: int) -> bool:
        """The user's effective permission: its own row or any of its groups' (Permission.IsPermitted)."""
        return self.users[username.lower()].permitted(section, flag, self.groups)

    def disable_user(self, username: str) -> None:
        """Like /api/admin/users/set?disabled=true: the account is off and its sessions are gone."""
        user = self.users[username.lower()]
        user.disabled = True
        for token in [t for t, s in self.sessions.items() if s.username == user.username]:
            del self.sessions[token]

    def create_session(self, username: str, *, type: SessionType = "Standard",
                       token_name: str | None = None, address: str = "127.0.0.1") -> str:
        """Mint a token without HTTP (as if the user had logged in); returns it."""
        user = self.users[username.lower()]
        return self._new_session(type, token_name, user, address, None).token

    def revoke(self, token: str) -> bool:
        """Delete one session, as an admin's sessions/delete would."""
        return self.sessions.pop(token, None) is not None

    def expire_all(self) -> None:
        """Make every session dead: Standard ones lapse through sliding expiry, the rest are deleted."""
        for token, s in list(self.sessions.items()):
            user = self.users.get(s.username)
            if s.type == "Standard" and user is not None and user.session_timeout > 0:
                s.last_seen = self.now() - user.session_timeout - 1
            else:
                del self.sessions[token]

    def totp_now(self, username: str | None = None) -> str:
        """The current TOTP code at this fake's clock (the fixture's `totp_secret` when no user given)."""
        secret = self.totp_secret if username is None else self.users[username.lower()].totp_secret
        if secret is None:
            raise ValueError("no TOTP secret")
        return pyotp.TOTP(secret).at(self.now())

    def is_blocked(self, ip: str) -> bool:
        net = self._network(ip)
        until = self.blocked_networks.get(net)
        return until is not None and until > self.now()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    # ---------------------------------------------------------------- request pipeline

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        peer = self.peer_ip or request.remote or "0.0.0.0"
        x_real_ip = request.headers.get("X-Real-IP")
        client_ip = self._client_ip(peer, x_real_ip)
        body = await request.read()
        query = MultiDict(request.query)
        form = self._parse_form(request, body)
        self.requests.append(RecordedRequest(
            method=request.method, path=request.path, raw_query=request.rel_url.raw_query_string,
            query=query, headers=CIMultiDict(request.headers), form=form, body=body, peer=peer,
            x_real_ip=x_real_ip, client_ip=client_ip))
        ctx = _Ctx(request=request, query=query, form=form, client_ip=client_ip)
        path = request.path
        if not path.lower().startswith("/api/"):
            if self.ui_dir is not None:
                return self._static(request, path)
            if request.method in ("GET", "HEAD") and path in ("/", "/index.html"):
                return web.Response(body=_INDEX_HTML, content_type="text/html", charset="utf-8")
            return web.Response(status=404, headers=_NO_CACHE)
        try:
            response = await self._api(ctx, path)
        except _ApiError as exc:
            response = self._json(
                {"server": self.server_domain, "status": exc.status, "errorMessage": str(exc)}
            )
        response = self._maybe_compress(request, response)
        if self.chunk_answers and isinstance(response, web.Response) and isinstance(response.body, bytes):
            return await self._write_chunked(request, response, response.body)
        return response

    async def _write_chunked(
        self, request: web.Request, whole: web.Response, body: bytes
    ) -> web.StreamResponse:
        """The answer without Content-Length, written piece by piece (as Kestrel streams its JSON writer)."""
        streamed = web.StreamResponse(status=whole.status, headers=whole.headers)
        streamed.headers.popall("Content-Length", None)
        streamed.enable_chunked_encoding()
        await streamed.prepare(request)
        for start in range(0, len(body), self.chunk_answers):
            await streamed.write(body[start:start + self.chunk_answers])
        await streamed.write_eof()
        return streamed

    def _static(self, request: web.Request, path: str) -> web.StreamResponse:
        """UseDefaultFiles + UseStaticFiles over `ui_dir` (the upstream's `www/`)."""
        assert self.ui_dir is not None
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=404, headers=_NO_CACHE)
        rel = "index.html" if path in ("/", "") else path.lstrip("/")
        target = (self.ui_dir / rel).resolve()
        if not target.is_relative_to(self.ui_dir) or not target.is_file():
            return web.Response(status=404, headers=_NO_CACHE)
        body = target.read_bytes()
        if target.name == "index.html":
            body = body.replace(b"{{API_VERSION}}", str(self.api_version).encode())
        ctype = _STATIC_TYPES.get(target.suffix, "application/octet-stream")
        return web.Response(body=body, content_type=ctype, headers={"Cache-Control": "no-cache",
                                                                    "X-Content-Type-Options": "nosniff"})

    def _maybe_compress(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """ResponseCompression: JSON gzipped for a client that says it accepts gzip (opt-in knob)."""
        if not self.compress or not isinstance(response, web.Response) or response.body is None:
            return response
        accepts = request.headers.get("Accept-Encoding", "").lower()
        if "gzip" not in accepts or response.content_type != "application/json":
            return response
        assert isinstance(response.body, bytes)
        compressed = web.Response(body=gzip.compress(response.body), status=response.status,
                                  headers=response.headers)
        compressed.headers["Content-Encoding"] = "gzip"
        compressed.headers["Vary"] = "Accept-Encoding"
        compressed.headers.popall("Content-Length", None)
        return compressed

    async def _api(self, ctx: _Ctx, path: str) -> web.StreamResponse:
        """WebServiceApiMiddleware: who must have a token, and which answers get a `response` object."""
        if path in ("/api/user/login", "/api/user/createToken", "/api/user/logout") or (
                path == "/api/sso/status" and self.api_version >= 15):
            wrap = False
        elif path == "/api/user/session/get":
            self._require_session(ctx)
            wrap = False
        elif path in _DOWNLOAD_PATHS:
            self._require_session(ctx)
            handler = self._route(ctx, path)
            if handler is None:
                return web.Response(status=404, headers=_NO_CACHE)
            result = await handler(ctx)
            if isinstance(result, web.StreamResponse):
                return result
            return self._json({**result, "server": self.server_domain, "status": "ok"})
        else:
            self._require_session(ctx)
            wrap = True
        handler = self._route(ctx, path)
        if handler is None:  # MapFallback("/api/{*path}"): an empty 404 after the token check
            return web.Response(status=404, headers=_NO_CACHE)
        result = await handler(ctx)
        if isinstance(result, web.StreamResponse):
            return result
        payload: dict[str, Any] = {"response": result} if wrap else dict(result)
        payload["server"] = self.server_domain
        payload["status"] = "ok"
        return self._json(payload)

    def _route(self, ctx: _Ctx, path: str) -> _Handler | None:
        if ctx.request.method not in ("GET", "POST"):
            return None
        key = path.lower()
        if len(key) > 1 and key.endswith("/"):
            key = key[:-1]
        return self._routes.get(key)

    @staticmethod
    def _json(payload: dict[str, Any]) -> web.Response:
        return web.Response(body=json.dumps(payload, separators=(",", ":")).encode(), status=200,
                            content_type="application/json", charset="utf-8", headers=_NO_CACHE)

    @staticmethod
    def _parse_form(request: web.Request, body: bytes) -> MultiDict[str] | None:
        ctype = request.content_type.lower()
        if ctype == "application/x-www-form-urlencoded":
            return MultiDict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if ctype == "multipart/form-data":
            head = f"Content-Type: {request.headers.get('Content-Type', '')}\r\n\r\n".encode()
            msg = BytesParser(policy=_HTTP_POLICY).parsebytes(head + body)
            form: MultiDict[str] = MultiDict()
            if isinstance(msg, EmailMessage) and msg.is_multipart():
                for part in msg.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if isinstance(name, str) and part.get_filename() is None:
                        payload = part.get_payload(decode=True)
                        form.add(
                            name, payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
                        )
            return form
        return None

    # ---------------------------------------------------------------- parameters and identity

    @staticmethod
    def _qf(ctx: _Ctx, name: str) -> str | None:
        """HttpRequest.QueryOrForm: query first, then form; repeated values joined with ','."""
        if name in ctx.query:
            return ",".join(ctx.query.getall(name))
        if ctx.form is not None and name in ctx.form:
            return ",".join(ctx.form.getall(name))
        return None

    def _required(self, ctx: _Ctx, name: str) -> str:
        value = self._qf(ctx, name)
        if not value:
            raise _ApiError(f"Parameter '{name}' missing.")
        return value

    def _optional_bool(self, ctx: _Ctx, name: str, default: bool) -> bool:
        value = self._qf(ctx, name)
        return default if not value else _parse_bool(value)

    @staticmethod
    def _client_ip(peer: str, x_real_ip: str | None) -> str:
        """GetRemoteEndPoint: X-Real-IP only when the peer is in the reverse-proxy ACL."""
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return peer
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if x_real_ip is not None and FakeTechnitium.is_trusted_proxy(str(addr)):
            try:
                return str(ipaddress.ip_address(x_real_ip.strip()))
            except ValueError:
                pass
        return str(addr)

    @staticmethod
    def is_trusted_proxy(ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        for net, deny in _REVERSE_PROXY_ACL:
            if addr.version == net.version and addr in net:
                return not deny
        return False

    @staticmethod
    def _network(ip: str) -> str:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        prefix = 32 if addr.version == 4 else 64
        return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))

    def _token_from_request(self, ctx: _Ctx) -> str | None:
        """GetAuthorizationToken (v15) or GetQueryOrForm("token") (v14, which errors when missing)."""
        if self.api_version < 15:
            return self._required(ctx, "token")
        token: str | None = None
        for entry in ctx.request.headers.getall("Authorization", []):
            if entry[:7].lower() == "bearer ":
                token = entry[7:].strip()
                break
        if token is None:
            token = self._qf(ctx, "token")
        return token or None

    def _validate_session(self, ctx: _Ctx) -> bool:
        """TryValidateSession: single-use tokens die here; others slide their lastSeen forward."""
        token = self._token_from_request(ctx)
        session = self.sessions.get(token) if token else None
        user = self.users.get(session.username) if session else None
        if session is None or user is None or user.disabled:
            return False
        if session.type == "SingleUse":
            self.sessions.pop(session.token, None)
        else:
            if self._has_expired(session):
                self.sessions.pop(session.token, None)
                self._save_config()
                return False
            session.last_seen = self.now()
            session.last_seen_address = ctx.client_ip
            session.last_seen_user_agent = ctx.request.headers.get("User-Agent")
        ctx.session = session
        return True

    def _require_session(self, ctx: _Ctx) -> None:
        if not self._validate_session(ctx):
            raise _InvalidToken(INVALID_TOKEN_MESSAGE)

    def _has_expired(self, session: FakeSession) -> bool:
        """UserSession.HasExpired (SingleUse counts as expired for everything but its one use)."""
        user = self.users.get(session.username)
        if user is None:
            return True
        if session.type == "Standard":
            return user.session_timeout != 0 and session.last_seen + user.session_timeout < self.now()
        return session.type != "ApiToken"

    def _save_config(self) -> None:
        """AuthManager.SaveConfigFile drops every expired session, single-use tokens included."""
        for token in [t for t, s in self.sessions.items() if self._has_expired(s)]:
            del self.sessions[token]

    def _session_user(self, ctx: _Ctx, standard_only: bool = False) -> FakeUser:
        assert ctx.session is not None
        if standard_only and ctx.session.type != "Standard":
            raise _ApiError("Access was denied.")
        return self.users[ctx.session.username]

    def _new_session(self, type: SessionType, token_name: str | None, user: FakeUser, address: str,
                     user_agent: str | None) -> FakeSession:
        if user.disabled:
            raise _ApiError("User account is disabled. Please contact your administrator.")
        if token_name is not None and len(token_name) > 255:
            raise _ApiError("Token name length cannot exceed 255 characters.")
        now = self.now()
        session = FakeSession(token=secrets.token_bytes(32).hex(), type=type, username=user.username,
                              token_name=token_name, created=now, last_seen=now, last_seen_address=address,
                              last_seen_user_agent=user_agent)
        self.sessions[session.token] = session
        self.issued_tokens.append(session.token)
        user.previous_logon, user.previous_address = user.recent_logon, user.recent_address
        user.recent_logon, user.recent_address = now, address
        return session

    async def _authenticate(self, username: str, password: str, totp: str | None, client_ip: str) -> FakeUser:
        """AuthManager.AuthenticateUserAsync, including its brute-force accounting."""
        net = self._network(client_ip)
        until = self.blocked_networks.get(net)
        if until is not None:
            if until > self.now():
                raise _ApiError(f"Max limit of {MAX_LOGIN_ATTEMPTS} attempts exceeded. "
                                f"Access blocked for {BLOCK_NETWORK_SECONDS} seconds.")
            del self.blocked_networks[net]
            self.failed_attempts.pop(net, None)
        user = self.users.get(username.lower())
        if user is None or not secrets.compare_digest(user.password.encode(), password.encode()):
            if username != "admin" or password != "admin":  # the UI's auto admin/admin probe is free
                self._mark_failure(net)
            await self._failure_sleep()
            raise _ApiError(f"Invalid username or password for user: {username}")
        if user.totp_secret:
            if not totp:
                raise _TwoFactorRequired(
                    f"A time-based one-time password (TOTP) is required for user: {username}")
            if not pyotp.TOTP(user.totp_secret).verify(totp, for_time=int(self.now()),
                                                        valid_window=self.totp_valid_window):
                self._mark_failure(net)
                await self._failure_sleep()
                raise _ApiError(
                    f"Invalid time-based one-time password (TOTP) was attempted for user: {username}"
                )
        self.failed_attempts.pop(net, None)
        if user.disabled:
            raise _ApiError("User account is disabled. Please contact your administrator.")
        return user

    def _mark_failure(self, net: str) -> None:
        self.failed_attempts[net] = self.failed_attempts.get(net, 0) + 1
        if self.failed_attempts[net] >= MAX_LOGIN_ATTEMPTS:
            self.blocked_networks.setdefault(net, self.now() + BLOCK_NETWORK_SECONDS)

    async def _failure_sleep(self) -> None:
        if self.login_failure_sleep > 0:
            await asyncio.sleep(self.login_failure_sleep)

    # ---------------------------------------------------------------- JSON shapes

    def _session_details(self, session: FakeSession, include_info: bool) -> dict[str, Any]:
        """WebServiceAuthApi.WriteCurrentSessionDetails."""
        user = self.users[session.username]
        out: dict[str, Any]
        if session.type == "ApiToken":
            out = {"username": user.username, "tokenName": session.token_name, "token": session.token}
        elif session.type == "SingleUse":
            out = {"username": user.username, "token": session.token}
        else:
            out = {"displayName": user.display_name, "username": user.username}
            if self.api_version >= 15:
                out["isSsoUser"] = False
            out["totpEnabled"] = bool(user.totp_secret)
            out["token"] = session.token
        if include_info:
            out["info"] = {
                "version": self.version,
                "uptimestamp": _iso(self._started_at),
                "dnsServerDomain": self.server_domain,
                "defaultRecordTtl": 3600,
                "defaultNsRecordTtl": 14400,
                "defaultSoaRecordTtl": 900,
                "useSoaSerialDateScheme": False,
                "dnssecValidation": True,
                "clusterInitialized": False,
                "permissions": {
                    s: {
                        "canView": user.permitted(s, VIEW, self.groups),
                        "canModify": user.permitted(s, MODIFY, self.groups),
                        "canDelete": user.permitted(s, DELETE, self.groups),
                    }
                    for s in PERMISSION_SECTIONS
                },
            }
        return out

    def _user_details(self, user: FakeUser, current: FakeSession | None, more: bool = True) -> dict[str, Any]:
        """WriteUserDetails(includeMoreDetails: `more`): profile/get, admin users/get and users/set with
        more, admin users/list and users/create without."""
        out: dict[str, Any] = {"displayName": user.display_name, "username": user.username}
        if self.api_version >= 15:
            out["isSsoUser"] = False
        out.update(
            {
                "totpEnabled": bool(user.totp_secret),
                "disabled": user.disabled,
                "previousSessionLoggedOn": _iso(user.previous_logon),
                "previousSessionRemoteAddress": user.previous_address,
                "recentSessionLoggedOn": _iso(user.recent_logon),
                "recentSessionRemoteAddress": user.recent_address,
            }
        )
        if not more:
            return out
        out["sessionTimeoutSeconds"] = user.session_timeout
        if self.api_version >= 15:
            out["ssoManagedGroups"] = False
        out["memberOfGroups"] = sorted(g for g in user.groups if g.lower() != "everyone")
        out["sessions"] = [{
            "username": s.username, "isCurrentSession": s is current, "partialToken": s.token[:16],
            "type": s.type, "tokenName": s.token_name, "lastSeen": _iso(s.last_seen),
            "lastSeenRemoteAddress": s.last_seen_address, "lastSeenUserAgent": s.last_seen_user_agent,
        } for s in self.sessions.values() if s.username == user.username and not self._has_expired(s)]
        return out

    # ---------------------------------------------------------------- endpoints

    async def _sso_status(self, ctx: _Ctx) -> _Result:
        return {"ssoEnabled": False}

    async def _login(self, ctx: _Ctx, type: SessionType = "Standard") -> _Result:
        username = self._required(ctx, "user")
        password = self._required(ctx, "pass")
        totp = self._qf(ctx, "totp") or None
        token_name = self._required(ctx, "tokenName") if type == "ApiToken" else None
        include_info = type == "Standard" and self._optional_bool(ctx, "includeInfo", False)
        user = await self._authenticate(username, password, totp, ctx.client_ip)
        session = self._new_session(
            type, token_name, user, ctx.client_ip, ctx.request.headers.get("User-Agent")
        )
        self._save_config()
        return self._session_details(session, include_info)

    async def _create_token(self, ctx: _Ctx) -> _Result:
        if self.api_version >= 15 and self._validate_session(ctx):
            user = self._session_user(ctx, standard_only=True)
            token_name = self._required(ctx, "tokenName")
            session = self._new_session("ApiToken", token_name, user, ctx.client_ip,
                                        ctx.request.headers.get("User-Agent"))
            return self._session_details(session, False)
        return await self._login(ctx, "ApiToken")

    async def _create_single_use_token(self, ctx: _Ctx) -> _Result:
        user = self._session_user(ctx, standard_only=True)
        session = self._new_session(
            "SingleUse", None, user, ctx.client_ip, ctx.request.headers.get("User-Agent")
        )
        return self._session_details(session, False)

    async def _logout(self, ctx: _Ctx) -> _Result:
        if self.logout_fails:
            raise web.HTTPServiceUnavailable()
        token = self._token_from_request(ctx)
        if token is None:  # ConcurrentDictionary.TryRemove(null)
            raise _ApiError("Value cannot be null. (Parameter 'key')")
        if self.sessions.pop(token, None) is not None:
            self._save_config()
        return {}

    async def _session_get(self, ctx: _Ctx) -> _Result:
        assert ctx.session is not None
        return self._session_details(ctx.session, True)

    async def _profile_get(self, ctx: _Ctx) -> _Result:
        return self._user_details(self._session_user(ctx), ctx.session)

    async def _profile_set(self, ctx: _Ctx) -> _Result:
        user = self._session_user(ctx, standard_only=True)
        display_name = self._qf(ctx, "displayName")
        if display_name is not None:
            user.display_name = display_name
        timeout = self._qf(ctx, "sessionTimeoutSeconds")
        if timeout is not None:
            try:
                value = int(timeout)
            except ValueError:
                raise _ApiError("The input string '" + timeout + "' was not in a correct format.") from None
            if not 0 <= value <= 604800:
                raise _ApiError("Session timeout value must be between 0-604800 seconds. "
                                "(Parameter 'SessionTimeoutSeconds')")
            user.session_timeout = 60 if 0 < value < 60 else value
        self._save_config()
        return self._user_details(user, ctx.session)

    def _check(self, ctx: _Ctx, section: str, flag: int) -> FakeUser:
        user = self._session_user(ctx)
        if not user.permitted(section, flag, self.groups):
            raise _ApiError("Access was denied.")
        return user

    async def _stats_get(self, ctx: _Ctx) -> _Result:
        self._check(ctx, "Dashboard", VIEW)
        stats = {k: 0 for k in ("totalQueries", "totalNoError", "totalServerFailure", "totalNxDomain",
                                "totalRefused", "totalAuthoritative", "totalRecursive", "totalCached",
                                "totalBlocked", "totalDropped", "totalClients")}
        stats.update({"zones": len(self.zones), "cachedEntries": 0, "allowedZones": 0, "blockedZones": 0,
                      "allowListZones": 0, "blockListZones": 0})
        return {"stats": stats}

    async def _zones_list(self, ctx: _Ctx) -> _Result:
        self._check(ctx, "Zones", VIEW)
        return {"zones": [dict(z) for z in sorted(self.zones.values(), key=lambda z: str(z["name"]))]}

    async def _zones_create(self, ctx: _Ctx) -> _Result:
        self._check(ctx, "Zones", MODIFY)
        name = self._qf(ctx, "zone") or self._qf(ctx, "domain")
        if not name:
            raise _ApiError("Parameter 'zone' missing.")
        name = name.strip(".").lower()
        zone_type = self._qf(ctx, "type") or "Primary"
        if "*" in name:
            raise _ApiError("Domain name for a zone cannot contain wildcard character.")
        if name in self.zones:
            raise _ApiError(f"Zone already exists: {name}")
        self.zones[name] = {
            "name": name,
            "type": zone_type,
            "lastModified": _iso(self.now()),
            "disabled": False,
            "soaSerial": 1,
            "internal": False,
            "catalog": None,
            "dnssecStatus": "Unsigned",
            "hasDnssecPrivateKeys": False,
            "notifyFailed": False,
            "notifyFailedFor": [],
        }
        self._save_config()
        return {"domain": name or "."}

    async def _settings_backup(self, ctx: _Ctx) -> _Result:
        self._check(ctx, "Settings", DELETE)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("dns.config", b"\x00fake-technitium-config\x01\x02")
            zf.writestr("auth.config", b"\x00fake-auth\xff")
        stamp = _dt.datetime.fromtimestamp(self.now(), _dt.UTC).strftime("_%Y-%m-%d_%H-%M-%S")
        return web.Response(body=buf.getvalue(), content_type="application/zip", headers={
            "Content-Disposition": f"attachment;filename={self.server_domain}{stamp}_backup.zip"})

    async def _logs_export(self, ctx: _Ctx) -> _Result:
        self._check(ctx, "Logs", VIEW)
        name = self._required(ctx, "name")
        class_path = self._required(ctx, "classPath")
        if name not in self.query_log_apps:
            raise _ApiError(f"DNS application was not found: {name}")
        if class_path not in self.query_log_apps[name]:
            raise _ApiError(f"DNS application '{class_path}' class path was not found: {name}")
        csv = (
            "\ufeffRowNumber,Timestamp,ClientIpAddress,Protocol,ResponseType,ResponseRtt,RCODE,Domain,Type,"
            "Class,Answer\r\n1,"
            + _iso(self.now())
            + ",192.0.2.10,Udp,Recursive,1.5,NoError,example.com,A,IN,"
            "93.184.216.34\r\n"
        )
        stamp = _dt.datetime.fromtimestamp(self.now(), _dt.UTC).strftime("_%Y-%m-%d_%H-%M-%S")
        return web.Response(body=csv.encode("utf-8"), content_type="text/csv", headers={
            "Content-Disposition": f"attachment;filename={self.server_domain}{stamp}_query_logs.csv"})

    async def _echo(self, ctx: _Ctx) -> _Result:
        """Fake-only: report exactly what arrived, so gateway tests can see what it forwarded."""
        req = ctx.request
        headers: dict[str, str] = {}
        for k, v in req.headers.items():
            key = k.lower()
            headers[key] = f"{headers[key]}, {v}" if key in headers else v
        assert ctx.session is not None
        # Padding first, so that what follows lies beyond any proxy's first look at the answer.
        answer: dict[str, Any] = {"padding": "." * self.echo_padding} if self.echo_padding else {}
        answer.update({
            "method": req.method, "path": req.path, "rawQuery": req.rel_url.raw_query_string,
            "query": {k: ",".join(ctx.query.getall(k)) for k in ctx.query},
            "form": None if ctx.form is None else {k: ",".join(ctx.form.getall(k)) for k in ctx.form},
            "headers": headers, "headerItems": [[k, v] for k, v in req.headers.items()],
            "bodyLength": len(await req.read()), "clientIp": ctx.client_ip,
            "session": {"username": ctx.session.username, "type": ctx.session.type,
                        "tokenName": ctx.session.token_name},
        })
        return answer

    # ---------------------------------------------------------------- DNS client and administration
    #
    # WebServiceApi.ResolveQueryAsync and WebServiceAuthApi's admin calls: each checks the caller's
    # effective permission first and refuses with "Access was denied."; answers are wrapped in `response`.

    async def _dns_client_resolve(self, ctx: _Ctx) -> _Result:
        """dnsClient/resolve (DnsClient: View). PTR questions for an address are answered from
        `ptr_records` (NXDomain when there is none); other types get an empty NoError answer."""
        self._check(ctx, "DnsClient", VIEW)
        self._required(ctx, "server")
        domain = self._required(ctx, "domain").strip(". ")
        rtype = self._required(ctx, "type").upper()
        name = domain
        address: str | None = None
        try:
            address = str(ipaddress.ip_address(domain))
        except ValueError:
            address = _address_of_reverse(domain)
        if rtype == "PTR" and address is not None:
            name = ipaddress.ip_address(address).reverse_pointer
        target = self.ptr_records.get(address) if rtype == "PTR" and address is not None else None
        answer = [] if target is None else [{
            "Name": name, "Type": "PTR", "Class": "IN", "TTL": "3600 (1 hour)",
            "RDLENGTH": f"{len(target) + 2} bytes", "RDATA": {"Domain": target}}]
        rcode = "NoError" if target is not None or rtype != "PTR" else "NXDomain"
        result = {
            "Metadata": {"NameServer": "this-server", "Protocol": "Udp", "DatagramSize": "64 bytes",
                         "RoundTripTime": "0.5 ms"},
            "Identifier": 4242, "IsResponse": True, "OPCODE": "StandardQuery", "AuthoritativeAnswer": False,
            "Truncation": False, "RecursionDesired": True, "RecursionAvailable": True, "Z": 0,
            "AuthenticData": False, "CheckingDisabled": False, "RCODE": rcode, "QDCOUNT": 1,
            "ANCOUNT": len(answer), "NSCOUNT": 0, "ARCOUNT": 0,
            "Question": [{"Name": name, "Type": rtype, "Class": "IN"}], "Answer": answer, "Authority": [],
            "Additional": []}
        return {"result": result, "rawResponses": []}

    def _user_named(self, username: str) -> FakeUser:
        user = self.users.get(username.lower())
        if user is None:
            raise _ApiError("No such user exists: " + username)
        return user

    async def _admin_users_list(self, ctx: _Ctx) -> _Result:
        self._check(ctx, "Administration", VIEW)
        return {"users": [self._user_details(u, None, more=False)
                          for u in sorted(self.users.values(), key=lambda u: u.username)]}

    async def _admin_users_create(self, ctx: _Ctx) -> _Result:
        """AuthManager.CreateUser: lower-cased name, "User already exists", always in Everyone."""
        self._check(ctx, "Administration", MODIFY)
        username = self._required(ctx, "user").lower()
        password = self._required(ctx, "pass")
        display_name = self._qf(ctx, "displayName") or username
        if username in self.users:
            raise _ApiError("User already exists: " + username)
        user = self.add_user(username, password, display_name=display_name, groups=[EVERYONE], permissions={})
        self._save_config()
        return self._user_details(user, None, more=False)

    async def _admin_users_get(self, ctx: _Ctx) -> _Result:
        self._check(ctx, "Administration", VIEW)
        user = self._user_named(self._required(ctx, "user"))
        out = self._user_details(user, ctx.session)
        if self._optional_bool(ctx, "includeGroups", False):
            out["groups"] = sorted(g for g in self.groups if g != EVERYONE)
        return out

    async def _admin_users_set(self, ctx: _Ctx) -> _Result:  # noqa: C901 - one branch per parameter, as upstream
        """SetUserDetails: memberOfGroups replaces the memberships (Everyone always put back; a caller
        changing itself keeps Administrators); disabled=true ends its Standard and SingleUse sessions."""
        caller = self._check(ctx, "Administration", MODIFY)
        user = self._user_named(self._required(ctx, "user"))
        try:
            display_name = self._qf(ctx, "displayName")
            if display_name is not None:
                user.display_name = display_name
            totp = self._qf(ctx, "totpEnabled")
            if totp:
                if _parse_bool(totp):
                    raise _ApiError("Time-based one-time password (TOTP) can be enabled only by the user "
                                    "themselves.")
                user.totp_secret = None
            new_pass = self._qf(ctx, "newPass")
            if new_pass and new_pass.strip():
                user.password = new_pass
            groups = self._qf(ctx, "memberOfGroups")
            if groups is not None:
                wanted: list[str] = []
                for part in (p.strip() for p in groups.split(",")):
                    if not part:
                        continue
                    match = next((g for g in self.groups if g.lower() == part.lower()), None)
                    if match is None:
                        raise _ApiError("No such group exists: " + part)
                    wanted.append(match)
                wanted.append(EVERYONE)
                if caller is user:
                    wanted.append("Administrators")
                user.groups = sorted(set(wanted))
            disabled = self._qf(ctx, "disabled")
            if disabled:
                off = _parse_bool(disabled)
                if off and caller is user:
                    raise _ApiError("Cannot update user profile: cannot disable current user's account.")
                user.disabled = off
                if off:
                    for token in [t for t, s in self.sessions.items()
                                  if s.username == user.username and s.type in ("Standard", "SingleUse")]:
                        del self.sessions[token]
            timeout = self._qf(ctx, "sessionTimeoutSeconds")
            if timeout:
                try:
                    user.session_timeout = int(timeout)
                except ValueError:
                    raise _ApiError(f"The input string '{timeout}' was not in a correct format.") from None
        finally:
            self._save_config()
        return self._user_details(user, ctx.session)

    async def _admin_users_delete(self, ctx: _Ctx) -> _Result:
        """DeleteUser (Administration: Delete): the account, its rows and every session of it go."""
        caller = self._check(ctx, "Administration", DELETE)
        user = self._user_named(self._required(ctx, "user"))
        if user is caller:
            raise _ApiError("Invalid operation: cannot delete current user.")
        del self.users[user.username]
        for token in [t for t, s in self.sessions.items() if s.username == user.username]:
            del self.sessions[token]
        self._save_config()
        return {}

    async def _admin_groups_list(self, ctx: _Ctx) -> _Result:
        self._check(ctx, "Administration", VIEW)
        return {"groups": [{"name": g.name, "description": g.description}
                           for g in sorted(self.groups.values(), key=lambda g: g.name) if g.name != EVERYONE]}

    def _section(self, ctx: _Ctx) -> str:
        """GetQueryOrFormEnum<PermissionSection>("section"): case-insensitive name."""
        value = self._required(ctx, "section")
        match = next((s for s in PERMISSION_SECTIONS if s.lower() == value.strip().lower()), None)
        if match is None:
            raise _ApiError(f"Requested value '{value}' was not found.")
        return match

    def _permission_details(self, section: str, include_users_and_groups: bool) -> dict[str, Any]:
        """WritePermissionDetails: the section's user and group tables, each sorted by name."""
        def row(flags: int) -> dict[str, bool]:
            return {"canView": bool(flags & VIEW), "canModify": bool(flags & MODIFY),
                    "canDelete": bool(flags & DELETE)}
        out: dict[str, Any] = {
            "section": section,
            "userPermissions": [{"username": u.username, **row(u.permissions[section])}
                                for u in sorted(self.users.values(), key=lambda u: u.username)
                                if section in u.permissions],
            "groupPermissions": [{"name": g.name, **row(g.permissions[section])}
                                 for g in sorted(self.groups.values(), key=lambda g: g.name)
                                 if section in g.permissions],
        }
        if include_users_and_groups:
            out["users"] = sorted(self.users)
            out["groups"] = sorted(self.groups)
        return out

    async def _admin_permissions_get(self, ctx: _Ctx) -> _Result:
        self._check(ctx, "Administration", VIEW)
        section = self._section(ctx)
        return self._permission_details(section, self._optional_bool(ctx, "includeUsersAndGroups", False))

    @staticmethod
    def _table_rows(text: str) -> list[tuple[str, int]]:
        """`name|view|modify|delete|name|...`: rows of four, empty names skipped, bool.Parse each flag."""
        parts = text.split("|")
        rows: list[tuple[str, int]] = []
        for i in range(0, len(parts), 4):
            if not parts[i]:
                continue
            if i + 3 >= len(parts):
                raise _ApiError("Index was outside the bounds of the array.")
            flags = ((VIEW if _parse_bool(parts[i + 1]) else 0) | (MODIFY if _parse_bool(parts[i + 2]) else 0)
                     | (DELETE if _parse_bool(parts[i + 3]) else 0))
            rows.append((parts[i], flags))
        return rows

    async def _admin_permissions_set(self, ctx: _Ctx) -> _Result:
        """SetPermissionsDetails (Administration: Delete): each table given replaces the section's whole
        table; unknown names are skipped; Administrators (and DNS/DHCP Administrators for Zones/DhcpServer)
        always keep every permission."""
        self._check(ctx, "Administration", DELETE)
        section = self._section(ctx)
        users_text = self._qf(ctx, "userPermissions")
        if users_text is not None:
            table = {name.lower(): flags for name, flags in self._table_rows(users_text)
                     if name.lower() in self.users}
            for user in self.users.values():
                if user.username in table:
                    user.permissions[section] = table[user.username]
                else:
                    user.permissions.pop(section, None)
        groups_text = self._qf(ctx, "groupPermissions")
        if groups_text is not None:
            by_lower = {g.lower(): g for g in self.groups}
            gtable = {by_lower[n.lower()]: f for n, f in self._table_rows(groups_text)
                      if n.lower() in by_lower}
            gtable["Administrators"] = ALL
            if section == "Zones":
                gtable["DNS Administrators"] = ALL
            elif section == "DhcpServer":
                gtable["DHCP Administrators"] = ALL
            for group in self.groups.values():
                if group.name in gtable:
                    group.permissions[section] = gtable[group.name]
                else:
                    group.permissions.pop(section, None)
        self._save_config()
        return self._permission_details(section, False)

    async def _admin_sessions_create_token(self, ctx: _Ctx) -> _Result:
        """CreateApiToken (Administration: Modify): a non-expiring API token for `user`."""
        self._check(ctx, "Administration", MODIFY)
        username = self._required(ctx, "user")
        token_name = self._required(ctx, "tokenName")
        user = self._user_named(username)
        session = self._new_session("ApiToken", token_name, user, ctx.client_ip,
                                    ctx.request.headers.get("User-Agent"))
        self._save_config()
        return {"username": user.username, "tokenName": session.token_name, "token": session.token}


def _address_of_reverse(name: str) -> str | None:
    """The address a reverse name (`4.3.2.1.in-addr.arpa`, nibbles under `ip6.arpa`) stands for."""
    low = name.lower()
    try:
        if low.endswith(".in-addr.arpa"):
            return str(ipaddress.IPv4Address(".".join(reversed(low[: -len(".in-addr.arpa")].split(".")))))
        if low.endswith(".ip6.arpa"):
            nibbles = "".join(reversed(low[: -len(".ip6.arpa")].split(".")))
            return str(ipaddress.IPv6Address(int(nibbles, 16)))
    except ValueError:
        return None
    return None
