"""FakeAdGuard: a real aiohttp server that behaves like AdGuard Home's web API at the auth layer.

Why a fake: AdGuard Home has no Debian package to run in tests. This follows AdGuardHome's own code
(`internal/home/authhttp.go`, `authratelimiter.go`, `aghuser/sessionstorage.go`, `profilehttp.go`,
2026-08), quirks included:

* ``POST /control/login`` JSON ``{"name","password"}`` -> 200 ``OK\\n`` + ``Set-Cookie: agh_session=<32 hex>;
  Path=/; Expires=<now+365 d>; HttpOnly; SameSite=Lax`` (plus no-cache headers). Bad JSON -> 400.
  Wrong name or password -> **403** ``invalid username or password`` (openapi.yaml says 400; code says 403).
* Rate limit per **TCP peer** (X-Real-IP/X-Forwarded-For ignored): failures are counted for 1 min; the
  5th failure blocks the peer for 15 min; a blocked login -> 429 with ``Retry-After: <seconds>``. A
  success clears the peer's counter. Basic-auth failures count too.
* Sessions expire 720 h after creation (absolute, no sliding); the cookie's own Expires is +365 d.
* Every path goes through the auth middleware: a request with an ``agh_session`` cookie is judged by the
  cookie only (a bad cookie is *not* rescued by Basic auth); without the cookie, HTTP Basic is tried.
  Unauthenticated: public paths (``/control/login``, ``/login.*``, ``/assets/*``…) pass, ``/`` and
  ``/index.html`` -> 302 ``/login.html``, anything else (all of ``/control/*``) -> 401 with an empty body.
  Authenticated ``/login.html`` -> 302 ``/``.
* ``GET /control/logout`` (behind the middleware, so 401 without a valid session) deletes the session and
  answers 302 ``/login.html`` with ``Set-Cookie: agh_session=; Path=/; Expires=Thu, 01 Jan 1970 …``.
* ``GET /control/profile`` -> ``{"name","language","theme"}``; ``GET /control/status`` -> status JSON.

Fake-only: ``/control/echo`` (any method, needs auth) returns what it received.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.fakes.clock import OffsetClock as FakeClock
from tests.fakes.server import LoopbackServer

__all__ = ["AdGuardSession", "FakeAdGuard", "FakeClock", "RecordedRequest"]

COOKIE_NAME = "agh_session"
COOKIE_TTL = 365 * 24 * 3600
SESSION_TTL = 720 * 3600
FAILED_AUTH_TTL = 60
CLEAR_COOKIE = f"{COOKIE_NAME}=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax"
_PUBLIC_PATHS = {
    "/control/login",
    "/apple/doh.mobileconfig",
    "/apple/dot.mobileconfig",
    "/control/install/get_addresses",
    "/control/install/check_config",
    "/control/install/configure",
    "/install.html",
}


@dataclass(frozen=True)
class RecordedRequest:
    """What reached the fake, for assertions."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    cookies: dict[str, str]
    body: bytes
    remote: str | None
    status: int = 0
    user: str | None = None
    """Login of the user the request authenticated as, if any."""
    auth_source: str | None = None
    """"cookie" or "basic" when authenticated."""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class AdGuardSession:
    """One ``aghuser.Session``: token bytes (the cookie is their hex), owner, absolute expiry."""

    token: str
    user: str
    expire: float


@dataclass
class _Failed:
    until: float
    num: int


_USER_KEY: web.RequestKey[str | None] = web.RequestKey("adguard_fake_user")
_SOURCE_KEY: web.RequestKey[str | None] = web.RequestKey("adguard_fake_source")


def _go_duration(seconds: float) -> str:
    """Rough Go ``time.Duration.String()`` for messages like ``auth: blocked for 14m59s``."""
    whole = max(0, int(seconds))
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _parse_cookies(headers: Mapping[str, str]) -> dict[str, str]:
    """Go's ``r.Cookie``: first cookie of a name wins."""
    jar: dict[str, str] = {}
    for header in CIMultiDict(headers).getall("Cookie", []):
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name and name not in jar:
                jar[name] = value.strip().strip('"')
    return jar


class FakeAdGuard(LoopbackServer):
    """AdGuard Home web auth on a free 127.0.0.1 port; ``await start()``, ``await close()``."""

    def __init__(
        self,
        *,
        username: str = "admin",
        password: str = "adguard-test-password",
        users: Mapping[str, str] | None = None,
        session_ttl: float = SESSION_TTL,
        auth_attempts: int = 5,
        block_auth_min: int = 15,
        clock: FakeClock | None = None,
        language: str = "en",
        theme: str = "auto",
        version: str = "v0.107.65",
    ) -> None:
        self.users: dict[str, str] = dict(users) if users is not None else {username: password}
        self.username = username if users is None else next(iter(self.users))
        self.password = self.users[self.username]
        self.session_ttl = session_ttl
        self.auth_attempts = auth_attempts
        self.block_seconds = block_auth_min * 60
        self.clock = clock or FakeClock()
        self.language = language
        self.theme = theme
        self.version = version
        self.sessions: dict[str, AdGuardSession] = {}
        self.requests: list[RecordedRequest] = []
        self.failed_auths: dict[str, _Failed] = {}
        self.started_at = self.clock()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self.app = web.Application(middlewares=[self._record, self._auth_middleware])
        self.app.router.add_post("/control/login", self._login)
        self.app.router.add_get("/control/logout", self._logout)
        self.app.router.add_get("/control/profile", self._profile)
        self.app.router.add_get("/control/status", self._status)
        self.app.router.add_route("*", "/control/echo", self._echo)
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/index.html", self._index)
        self.app.router.add_get("/login.html", self._login_page)
        self.app.router.add_get("/assets/{name}", self._asset)

    # ------------------------------------------------------------------ lifecycle


    # ------------------------------------------------------------------ helpers for tests

    def create_session(self, user: str | None = None) -> AdGuardSession:
        """A session as if ``user`` had logged in (no rate limiter involved); returns it (``.token``)."""
        login = user or self.username
        session = AdGuardSession(
            token=os.urandom(16).hex(), user=login, expire=self.clock() + self.session_ttl
        )
        self.sessions[session.token] = session
        return session

    def revoke(self, token: str) -> None:
        self.sessions.pop(token, None)

    def clear_requests(self) -> None:
        self.requests.clear()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def blocked_for(self, peer: str = "127.0.0.1") -> float:
        """Seconds the peer is still blocked (0 when it may try again)."""
        return self._rl_check(peer)

    # ------------------------------------------------------------------ rate limiter (authratelimiter.go)

    def _rl_cleanup(self, now: float) -> None:
        for key in [k for k, v in self.failed_auths.items() if now > v.until]:
            del self.failed_auths[key]

    def _rl_check(self, peer: str) -> float:
        now = self.clock()
        self._rl_cleanup(now)
        entry = self.failed_auths.get(peer)
        if entry is None or entry.num < self.auth_attempts:
            return 0.0
        return entry.until - now

    def _rl_inc(self, peer: str) -> None:
        now = self.clock()
        entry = self.failed_auths.get(peer)
        until, num = (entry.until, entry.num + 1) if entry else (now + FAILED_AUTH_TTL, 1)
        if num >= self.auth_attempts:
            until = now + self.block_seconds
        self.failed_auths[peer] = _Failed(until=until, num=num)

    def _rl_remove(self, peer: str) -> None:
        self.failed_auths.pop(peer, None)

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        request[_USER_KEY] = None
        request[_SOURCE_KEY] = None
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            response = exc
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query_string=request.query_string,
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                cookies=_parse_cookies(request.headers),
                body=body,
                remote=request.remote,
                status=response.status,
                user=request[_USER_KEY],
                auth_source=request[_SOURCE_KEY],
            )
        )
        return response

    def _user_from_request(self, request: web.Request) -> tuple[str | None, str | None]:
        """``userFromRequest``: the cookie if present (alone), else Basic auth with the rate limiter."""
        jar = _parse_cookies(request.headers)
        if COOKIE_NAME in jar:
            value = jar[COOKIE_NAME]
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                return None, None
            if len(raw) != 16:
                return None, None
            session = self.sessions.get(value.lower())
            if session is None:
                return None, None
            if self.clock() > session.expire:
                del self.sessions[session.token]
                return None, None
            return session.user, "cookie"
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None, None
        try:
            login, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, None
        if not sep:
            return None, None
        peer = request.remote or ""
        if self._rl_check(peer) > 0:
            return None, None
        if self.users.get(login) != password:
            self._rl_inc(peer)
            return None, None
        self._rl_remove(peer)
        return login, "basic"

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """``authMiddlewareDefault.Wrap``."""
        user, source = self._user_from_request(request)
        path = request.path
        if user is not None:
            request[_USER_KEY], request[_SOURCE_KEY] = user, source
            if path in ("/login.html", "/forgot_password.html"):
                return _redirect("/")
            return await self._dispatch(request, handler)
        public = (
            path in _PUBLIC_PATHS
            or (path.startswith("/assets/") and "/" not in path.removeprefix("/assets/"))
            or path.startswith(("/login.", "/forgot_password."))
        )
        if public:
            return await self._dispatch(request, handler)
        if path in ("/", "/index.html"):
            return _redirect("/login.html")
        return web.Response(status=401)

    async def _dispatch(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPNotFound:
            return web.Response(status=404, text="404 page not found\n")
        except web.HTTPMethodNotAllowed:
            return web.Response(status=405, text="Method Not Allowed\n")
        return response

    # ------------------------------------------------------------------ handlers

    async def _login(self, request: web.Request) -> web.StreamResponse:
        """``handleLogin``."""
        try:
            req = json.loads(await request.read())
        except ValueError as exc:
            return _text(400, f"json decode: {exc}")
        if not isinstance(req, dict):
            return _text(400, "json decode: json: cannot unmarshal into Go value of type home.loginJSON")
        peer = request.remote or ""
        left = self._rl_check(peer)
        if left > 0:
            resp = _text(429, f"auth: blocked for {_go_duration(left)}")
            resp.headers["Retry-After"] = str(int(left))
            return resp
        name, password = req.get("name"), req.get("password")
        if not isinstance(name, str) or name not in self.users or self.users[name] != password:
            self._rl_inc(peer)
            return _text(403, "invalid username or password")
        self._rl_remove(peer)
        session = self.create_session(name)
        expires = formatdate(self.clock() + COOKIE_TTL, usegmt=True)
        cookie = f"{COOKIE_NAME}={session.token}; Path=/; Expires={expires}; HttpOnly; SameSite=Lax"
        return web.Response(
            status=200,
            body=b"OK\n",
            headers={
                "Set-Cookie": cookie,
                "Content-Type": "text/plain; charset=utf-8",
                "Cache-Control": "no-store, no-cache, must-revalidate, proxy-revalidate",
                "Pragma": "no-cache",
                "Expires": "0",
            },
        )

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        """``handleLogout`` (reached only when the middleware let the request through)."""
        jar = _parse_cookies(request.headers)
        if COOKIE_NAME not in jar:
            return web.Response(status=302, headers={"Location": "/login.html"})
        self.sessions.pop(jar[COOKIE_NAME].lower(), None)
        return web.Response(status=302, headers={"Location": "/login.html", "Set-Cookie": CLEAR_COOKIE})

    async def _profile(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"name": request[_USER_KEY], "language": self.language, "theme": self.theme})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "version": self.version,
                "language": self.language,
                "dns_addresses": ["127.0.0.1"],
                "dns_port": 53,
                "http_port": self.port,
                "protection_disabled_duration": 0,
                "start_time": int(self.started_at * 1000),
                "protection_enabled": True,
                "dhcp_available": False,
                "running": True,
            }
        )

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": {k: request.query.getall(k) for k in request.query},
                "headers": dict(request.headers.items()),
                "cookies": _parse_cookies(request.headers),
                "body": raw.decode("utf-8", "replace"),
                "user": request[_USER_KEY],
                "auth_source": request[_SOURCE_KEY],
                "remote": request.remote,
            }
        )

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            text="<!doctype html><html><head><title>AdGuard Home</title></head>"
            '<body><div id="root">AdGuard Home (fake)</div></body></html>\n',
            content_type="text/html",
        )

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            text="<!doctype html><html><head><title>Login</title></head>"
            '<body><form id="login"><input name="username"><input name="password" type="password">'
            "</form></body></html>\n",
            content_type="text/html",
        )

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="/* fake asset */\n", content_type="text/css")


def _text(status: int, message: str) -> web.Response:
    """Go's ``http.Error``: plain text, newline, nosniff."""
    return web.Response(
        status=status,
        body=(message + "\n").encode(),
        headers={"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"},
    )


def _redirect(location: str) -> web.Response:
    """Go's ``http.Redirect`` for GET: 302 with a tiny HTML body."""
    return web.Response(
        status=302,
        headers={"Location": location, "Content-Type": "text/html; charset=utf-8"},
        body=f'<a href="{location}">Found</a>.\n\n'.encode(),
    )
