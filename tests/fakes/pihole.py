"""FakePihole: a real aiohttp server that behaves like Pi-hole v6's FTL web server at the auth layer.

Why a fake: Pi-hole (FTL) has no Debian package to run in tests. This follows FTL's own code
(pi-hole/FTL `src/api/auth.c`, `src/api/api.c`, `src/webserver/lua_web.c`, `src/config/password.c`,
`src/api/2fa.c`, 2025-11) including its quirks, so adapter tests meet the real failure modes:

* ``POST /api/auth`` JSON ``{"password", "totp"?}`` -> 200
  ``{"session":{valid,totp,sid,csrf,validity,message}}``
  and ``Set-Cookie: sid=…; SameSite=Lax; Path=/; Max-Age=1800; HttpOnly`` (the login/status reply always
  uses the *default* 1800 s, as FTL's ``timeout.d`` does). Wrong password -> 401 ``session.valid:false``
  "password incorrect" + cookie deletion. No body -> 400; no ``password`` -> 400.
* TOTP (if ``totp_secret``): missing -> 400 ``bad_request`` "No 2FA token found in JSON payload"; wrong ->
  401 ``unauthorized`` "Invalid 2FA token"; same code twice -> 401 "Reused 2FA token"; two TOTP checks in
  the same second -> 429 ``rate_limiting``. Previous/current/next 30 s steps are accepted.
* More than 3 password checks in one clock second (all clients together) -> 429 ``rate_limiting``
  (``login_rate_limit``; None turns it off).
* Credential lookup order: ``sid`` in the body (form, then JSON root), header ``sid``/``X-FTL-SID``,
  cookie ``sid``, query ``?sid=``. Cookie auth on ``/api`` data endpoints needs ``X-CSRF-TOKEN`` equal to
  the session's csrf (``/api/auth`` itself and ``/admin`` pages do not check CSRF).
* Sliding expiry (``timeout``, default 1800 s) on a controllable clock; every authenticated request
  extends it and re-sends ``Set-Cookie: sid=…; Max-Age=<timeout>``.
* Expiry quirk: since commit 49a5a0c6 (2024-04, in every v6.x up to 6.4.1 and ``development`` 2025-12)
  FTL's ``check_client_auth`` no longer skips expired seats: an expired sid is *accepted and revived*
  until a later login reclaims its seat (then it is "session unknown"), so "session expired" is never
  actually sent. The fake defaults to the documented/intended behaviour (expired -> rejected, "session
  expired"); ``accept_expired_sessions=True`` reproduces the real quirk. ``reclaim_expired()`` frees
  expired seats as a login would.
* Unauthenticated data endpoints -> 401 ``{"error":{"key":"unauthorized","message":"Unauthorized",
  "hint":null},"took":…}`` **without** touching the cookie; only ``GET /api/auth`` answers 401
  ``session.valid:false`` with message "no SID provided" / "session unknown" / "session expired" /
  "CSRF token mismatch"-style reasons and deletes the cookie.
* ``DELETE /api/auth`` -> 204 + cookie deletion; without a valid session FTL's code answers **401** with the
  session object (its OpenAPI spec says 404; the code wins here).
* ``max_sessions`` seats (default 16; expired seats are reclaimed at login) -> 429 ``api_seats_exceeded``.
* ``/admin/<page>`` (no dot in the last segment) needs a session (cookie, header or query; no CSRF) and
  otherwise 302 -> ``/admin/login``; the page carries ``<meta name="csrf-token" content="…">``.
  ``/admin/login`` with a session -> 302 ``/admin/``. Paths with a dot (static files) are public.

Fake-only: ``/api/echo`` (any method, needs auth like every data endpoint) returns what it received.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import pyotp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.fakes.clock import OffsetClock as FakeClock
from tests.fakes.server import LoopbackServer

__all__ = ["FakeClock", "FakePihole", "PiholeSession", "RecordedRequest"]

DEFAULT_TIMEOUT = 1800
SET_COOKIE = "sid={sid}; SameSite=Lax; Path=/; Max-Age={max_age}; HttpOnly"
DELETE_COOKIE = "sid=deleted; SameSite=Lax; Path=/; Max-Age=-1; Expires=Thu, 01 Jan 1970 00:00:00 GMT;"
JSON_TYPE = "application/json; charset=utf-8"


@dataclass(frozen=True)
class RecordedRequest:
    """What reached the fake, for assertions (headers as received, body raw)."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    cookies: dict[str, str]
    body: bytes
    remote: str | None
    status: int = 0
    sid_source: str | None = None
    """Where the fake found the sid: "payload", "header", "cookie", "query" or None."""
    session_id: int | None = None
    """The seat of the session that authenticated this request, if any."""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class PiholeSession:
    """One FTL seat (``struct session``)."""

    id: int
    sid: str
    csrf: str
    login_at: int
    valid_until: float
    remote_addr: str
    user_agent: str | None
    x_forwarded_for: str | None
    app: bool = False
    cli: bool = False


@dataclass
class _Auth:
    """Outcome of FTL's ``check_client_auth`` for one request."""

    session: PiholeSession | None
    message: str
    source: str | None


_AUTH_KEY: web.RequestKey[_Auth | None] = web.RequestKey("pihole_fake_auth")


def _ftl_token() -> str:
    """FTL's sid/csrf shape: base64 of 16 random bytes cut to 23 chars (22 chars + '=')."""
    return base64.b64encode(os.urandom(16)).decode()[:23]


def _parse_cookie_header(headers: Mapping[str, str]) -> dict[str, str]:
    """Lenient Cookie parsing like civetweb's (first occurrence wins)."""
    jar: dict[str, str] = {}
    for header in CIMultiDict(headers).getall("Cookie", []):
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name and name not in jar:
                jar[name] = value.strip().strip('"')
    return jar


class FakePihole(LoopbackServer):
    """Pi-hole v6 FTL auth behaviour on a free 127.0.0.1 port; ``await start()``, ``await close()``."""

    def __init__(
        self,
        *,
        password: str = "pihole-test-password",
        app_password: str | None = None,
        totp_secret: str | None = None,
        timeout: int = DEFAULT_TIMEOUT,
        max_sessions: int = 16,
        login_rate_limit: int | None = 3,
        clock: FakeClock | None = None,
        version: str = "v6.2.3",
        accept_expired_sessions: bool = False,
    ) -> None:
        self.password = password
        self.app_password = app_password
        self.totp_secret = totp_secret
        self.timeout = timeout
        self.max_sessions = max_sessions
        self.login_rate_limit = login_rate_limit
        self.clock = clock or FakeClock()
        self.version = version
        self.accept_expired_sessions = accept_expired_sessions
        self.seats: list[PiholeSession | None] = [None] * max_sessions
        self.auth_padding = 0  # fake-only: GET/POST /api/auth answers start with this many bytes of padding
        self.requests: list[RecordedRequest] = []
        self.blocking = True
        self._pw_second = -1
        self._pw_count = 0
        self._totp_last_attempt = -1
        self._totp_last_code: str | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0
        self.app = web.Application(middlewares=[self._record])
        self.app.router.add_route("*", "/api/{tail:.*}", self._api)
        self.app.router.add_route("*", "/api", self._api)
        self.app.router.add_route("*", "/admin/{tail:.*}", self._admin)

    # ------------------------------------------------------------------ lifecycle


    # ------------------------------------------------------------------ helpers for tests

    @property
    def sessions(self) -> list[PiholeSession]:
        """Seats in use (including expired ones not yet reclaimed)."""
        return [s for s in self.seats if s is not None]

    def session_by_sid(self, sid: str) -> PiholeSession | None:
        return next((s for s in self.sessions if s.sid == sid), None)

    def create_session(self, *, remote_addr: str = "127.0.0.1", app: bool = False) -> PiholeSession:
        """Put a session straight into a free seat (no login call, no rate limit)."""
        session = self._new_session(remote_addr=remote_addr, user_agent=None, xff=None, app=app, cli=False)
        if session is None:
            raise RuntimeError("no free seat")
        return session

    def expire_all(self) -> None:
        """Make every session expired now (as if the timeout passed)."""
        for s in self.sessions:
            s.valid_until = self.clock() - 1

    def reclaim_expired(self) -> None:
        """Free every expired seat (what FTL's login loop does on its way to a free seat)."""
        now = int(self.clock())
        for i, seat in enumerate(self.seats):
            if seat is not None and seat.valid_until < now:
                self.seats[i] = None

    def revoke(self, sid: str) -> None:
        """Delete the session with this sid (like ``DELETE /api/auth/session/{id}``)."""
        for i, seat in enumerate(self.seats):
            if seat is not None and seat.sid == sid:
                self.seats[i] = None

    def clear_requests(self) -> None:
        self.requests.clear()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    # ------------------------------------------------------------------ middleware

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        request[_AUTH_KEY] = None
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            response = exc
        auth: _Auth | None = request[_AUTH_KEY]
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query_string=request.query_string,
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                cookies=_parse_cookie_header(request.headers),
                body=body,
                remote=request.remote,
                status=response.status,
                sid_source=auth.source if auth else None,
                session_id=auth.session.id if auth and auth.session else None,
            )
        )
        return response

    # ------------------------------------------------------------------ FTL logic

    def _json(
        self, request: web.Request, payload: dict[str, Any], status: int = 200, *, cookie: str | None = None
    ) -> web.Response:
        payload["took"] = 0.0003
        headers = {"Set-Cookie": cookie} if cookie else None
        return web.Response(
            status=status,
            text=json.dumps(payload),
            content_type="application/json",
            charset="utf-8",
            headers=headers,
        )

    def _error(
        self,
        request: web.Request,
        status: int,
        key: str,
        message: str,
        hint: str | None = None,
        *,
        cookie: str | None = None,
    ) -> web.Response:
        return self._json(
            request, {"error": {"key": key, "message": message, "hint": hint}}, status, cookie=cookie
        )

    async def _payload(self, request: web.Request) -> tuple[bytes, Any, str | None]:
        """Raw body, parsed JSON (or None) and the JSON parse error (None if no body or parsed)."""
        raw = await request.read()
        if not raw:
            return raw, None, None
        try:
            return raw, json.loads(raw), None
        except ValueError as exc:
            return raw, None, str(exc)

    async def _check_client_auth(  # noqa: C901 - as FTL's check_client_auth, step by step
            self, request: web.Request, *, is_api: bool, payload: bool = True) -> _Auth:
        """FTL ``check_client_auth``: find the sid, check CSRF for cookie auth on /api, slide the expiry."""
        raw, body_json, _ = await self._payload(request) if payload else (b"", None, None)
        sid: str | None = None
        source: str | None = None
        if raw:
            form = parse_qs(raw.decode("latin-1"), keep_blank_values=True)
            if "sid" in form and not raw.lstrip().startswith(b"{"):
                sid, source = form["sid"][0].replace(" ", "+"), "payload"
            elif isinstance(body_json, dict) and isinstance(body_json.get("sid"), str):
                sid, source = body_json["sid"], "payload"
        if sid is None:
            header = request.headers.get("sid") or request.headers.get("X-FTL-SID")
            if header is not None:
                sid, source = header, "header"
        cookie_auth = False
        if sid is None:
            jar = _parse_cookie_header(request.headers)
            if "sid" in jar:
                sid, source, cookie_auth = jar["sid"], "cookie", True
        if sid is None and "sid" in request.query:
            sid, source = request.query["sid"].replace(" ", "+"), "query"
        if sid is None:
            return _Auth(None, "no SID provided", None)
        sid = sid[:23]

        need_csrf = cookie_auth and is_api
        csrf = request.headers.get("X-CSRF-TOKEN")
        if need_csrf and csrf is None:
            return _Auth(None, "Cookie authentication without CSRF token", source)

        now = self.clock()
        for session in self.sessions:
            if session.sid != sid:
                continue
            if need_csrf and session.csrf != (csrf or "")[:23]:
                return _Auth(None, "CSRF token mismatch", source)
            if session.valid_until < int(now) and not self.accept_expired_sessions:
                return _Auth(None, "session expired", source)
            session.valid_until = int(now) + self.timeout
            return _Auth(session, "correct password", source)
        return _Auth(None, "session unknown", source)

    def _refresh_cookie(self, session: PiholeSession, max_age: int | None = None) -> str:
        return SET_COOKIE.format(sid=session.sid, max_age=self.timeout if max_age is None else max_age)

    def _session_object(self, auth: _Auth, message: str | None = None) -> dict[str, Any]:
        totp = bool(self.totp_secret)
        if auth.session is not None:
            return {
                "valid": True,
                "totp": totp,
                "sid": auth.session.sid,
                "csrf": auth.session.csrf,
                "validity": int(auth.session.valid_until - int(self.clock())),
                "message": message or auth.message,
            }
        return {"valid": False, "totp": totp, "sid": None, "validity": -1, "message": message or auth.message}

    def _new_session(
        self, *, remote_addr: str, user_agent: str | None, xff: str | None, app: bool, cli: bool
    ) -> PiholeSession | None:
        now = int(self.clock())
        for i, seat in enumerate(self.seats):
            if seat is not None and seat.valid_until < now:
                self.seats[i] = seat = None  # expired seats are freed on the way
            if seat is None:
                session = PiholeSession(
                    id=i,
                    sid=_ftl_token(),
                    csrf=_ftl_token(),
                    login_at=now,
                    valid_until=now + self.timeout,
                    remote_addr=remote_addr,
                    user_agent=user_agent,
                    x_forwarded_for=xff,
                    app=app,
                    cli=cli,
                )
                self.seats[i] = session
                return session
        return None

    def _password_rate_limited(self) -> bool:
        """FTL allows 3 password checks per wall-clock second, globally."""
        if self.login_rate_limit is None:
            return False
        second = int(self.clock())
        if second == self._pw_second:
            self._pw_count += 1
            return self._pw_count > self.login_rate_limit
        self._pw_second, self._pw_count = second, 1
        return False

    def _verify_totp(self, code: Any) -> str:
        """'correct' | 'reused' | 'rate_limit' | 'invalid' as FTL's verifyTOTP."""
        now = int(self.clock())
        if now == self._totp_last_attempt:
            return "rate_limit"
        self._totp_last_attempt = now
        incode = f"{code:06d}" if isinstance(code, int) and not isinstance(code, bool) else "000000-invalid"
        totp = pyotp.TOTP(self.totp_secret or "")
        for step in (-1, 0, 1):
            if totp.at(now + step * 30) == incode:
                if incode == self._totp_last_code:
                    return "reused"
                self._totp_last_code = incode
                return "correct"
        return "invalid"

    async def _api(self, request: web.Request) -> web.StreamResponse:  # noqa: C901 - as FTL's routing
        path = request.path.rstrip("/") if request.path != "/api/" else "/api"
        method = request.method
        if path == "/api/auth":
            if method not in ("GET", "POST", "DELETE"):
                return self._error(request, 404, "not_found", "Not found", request.path)
            return await self._api_auth(request)

        routes: dict[str, tuple[str, ...]] = {
            "/api/auth/sessions": ("GET",),
            "/api/stats/summary": ("GET",),
            "/api/info/version": ("GET",),
            "/api/dns/blocking": ("GET", "POST"),
            "/api/echo": ("GET", "POST", "PUT", "PATCH", "DELETE"),
        }
        endpoint = path
        if path.startswith("/api/auth/session/") and method == "DELETE":
            endpoint = "/api/auth/session"
        elif path not in routes or method not in routes[path]:
            return self._error(request, 404, "not_found", "Not found", request.path)

        auth = await self._check_client_auth(request, is_api=True)
        request[_AUTH_KEY] = auth
        if auth.session is None:
            return self._error(request, 401, "unauthorized", "Unauthorized")
        cookie = self._refresh_cookie(auth.session)
        session = auth.session

        if endpoint == "/api/auth/sessions":
            now = int(self.clock())
            rows = [
                {
                    "id": s.id,
                    "current_session": s.id == session.id,
                    "valid": s.valid_until >= now,
                    "tls": {"login": False, "mixed": False},
                    "login_at": s.login_at,
                    "last_active": int(s.valid_until) - self.timeout,
                    "valid_until": int(s.valid_until),
                    "remote_addr": s.remote_addr,
                    "user_agent": s.user_agent,
                    "x_forwarded_for": s.x_forwarded_for,
                    "app": s.app,
                    "cli": s.cli,
                }
                for s in self.sessions
            ]
            return self._json(request, {"sessions": rows}, cookie=cookie)
        if endpoint == "/api/auth/session":
            item = path.removeprefix("/api/auth/session/")
            try:
                uid = int(item)
            except ValueError:
                return self._error(
                    request, 400, "bad_request", "Missing or invalid session ID", cookie=cookie
                )
            if uid < 0 or uid >= self.max_sessions:
                return self._error(request, 400, "bad_request", "Session ID out of bounds", cookie=cookie)
            if self.seats[uid] is None:
                return self._error(request, 400, "bad_request", "Session ID not in use", cookie=cookie)
            self.seats[uid] = None
            return web.Response(status=204, headers={"Set-Cookie": cookie})
        if endpoint == "/api/stats/summary":
            return self._json(request, _SUMMARY | {}, cookie=cookie)
        if endpoint == "/api/info/version":
            return self._json(request, _version(self.version), cookie=cookie)
        if endpoint == "/api/dns/blocking":
            if method == "POST":
                _, body_json, _ = await self._payload(request)
                if body_json is None:
                    return self._error(request, 400, "bad_request", "No request body data", cookie=cookie)
                if not isinstance(body_json, dict) or not isinstance(body_json.get("blocking"), bool):
                    return self._error(
                        request, 400, "bad_request", 'No "blocking" boolean in body data', cookie=cookie
                    )
                self.blocking = body_json["blocking"]
            return self._json(
                request,
                {"blocking": "enabled" if self.blocking else "disabled", "timer": None},
                cookie=cookie,
            )
        # /api/echo
        raw = await request.read()
        return self._json(
            request,
            {
                "method": method,
                "path": request.path,
                "query": {k: request.query.getall(k) for k in request.query},
                "headers": {k: v for k, v in request.headers.items()},
                "cookies": _parse_cookie_header(request.headers),
                "body": raw.decode("utf-8", "replace"),
                "sid_source": auth.source,
                "session_id": session.id,
                "remote": request.remote,
            },
            cookie=cookie,
        )

    async def _api_auth(self, request: web.Request) -> web.StreamResponse:  # noqa: C901 - as FTL's api_auth
        """FTL ``api_auth``: GET status, POST login, DELETE logout, in FTL's order of decisions."""
        method = request.method
        password: str | None = None
        body_json: Any = None
        if method == "POST":
            _, body_json, err = await self._payload(request)
            if body_json is None:
                if err is None:
                    return self._error(request, 400, "bad_request", "No request body data")
                return self._error(
                    request,
                    400,
                    "bad_request",
                    "Invalid request body data (no valid JSON), error at hint",
                    err,
                )
            if not isinstance(body_json, dict) or "password" not in body_json:
                return self._error(request, 400, "bad_request", "No password found in JSON payload")
            if not isinstance(body_json["password"], str):
                return self._error(request, 400, "bad_request", "Field password has to be of type 'string'")
            password = body_json["password"]

        auth = await self._check_client_auth(request, is_api=False)
        request[_AUTH_KEY] = auth
        if auth.session is not None and not password:
            return self._auth_status(request, auth)
        if method == "DELETE":
            return self._auth_status(request, auth)
        if password is None:
            return self._auth_status(request, auth)

        if self._password_rate_limited():
            return self._error(request, 429, "rate_limiting", "Rate-limiting login attempts")
        if password and password == self.password:
            result = "password"
        elif password and self.app_password is not None and password == self.app_password:
            result = "app"
        else:
            result = "incorrect"

        if result == "incorrect":
            return self._auth_status(request, auth, message="password incorrect")

        if self.totp_secret and result == "password":
            assert isinstance(body_json, dict)
            if "totp" not in body_json:
                return self._error(request, 400, "bad_request", "No 2FA token found in JSON payload")
            verdict = self._verify_totp(body_json["totp"])
            if verdict == "reused":
                return self._error(request, 401, "unauthorized", "Reused 2FA token", "wait for new token")
            if verdict == "rate_limit":
                return self._error(
                    request, 429, "rate_limiting", "Rate-limiting 2FA token requests, try again later"
                )
            if verdict != "correct":
                return self._error(request, 401, "unauthorized", "Invalid 2FA token")

        session = self._new_session(
            remote_addr=request.remote or "",
            user_agent=request.headers.get("User-Agent"),
            xff=request.headers.get("X-Forwarded-For"),
            app=result == "app",
            cli=False,
        )
        if session is None:
            return self._error(
                request,
                429,
                "api_seats_exceeded",
                "API seats exceeded",
                "increase webserver.api.max_sessions",
            )
        new_auth = _Auth(
            session, "app-password correct" if result == "app" else "password correct", auth.source
        )
        request[_AUTH_KEY] = new_auth
        return self._auth_status(request, new_auth)

    def _auth_status(self, request: web.Request, auth: _Auth, message: str | None = None) -> web.Response:
        """FTL ``send_api_auth_status``."""
        if auth.session is not None and request.method in ("GET", "POST"):
            # FTL uses the *default* timeout here (config...timeout.d), not the configured one.
            cookie = self._refresh_cookie(auth.session, DEFAULT_TIMEOUT)
            padding: dict[str, Any] = {"padding": "." * self.auth_padding} if self.auth_padding else {}
            return self._json(
                request, {**padding, "session": self._session_object(auth, message)}, cookie=cookie
            )
        if request.method == "DELETE":
            if auth.session is not None:
                self.seats[auth.session.id] = None
                return web.Response(status=204, headers={"Set-Cookie": DELETE_COOKIE})
            return self._json(request, {"session": self._session_object(auth, message)}, 401)
        return self._json(
            request, {"session": self._session_object(auth, message)}, 401, cookie=DELETE_COOKIE
        )

    async def _admin(self, request: web.Request) -> web.StreamResponse:
        """FTL ``request_handler`` for the web home: Lua pages need a session, files are public."""
        path = request.path
        if path.startswith("/admin/api"):
            return self._error(
                request,
                400,
                "bad_request",
                "Bad request",
                f"The API is hosted at {request.host}/api, not {request.host}/admin/api",
            )
        last = path.rsplit("/", 1)[-1]
        if "." in last:
            if last.endswith(".css"):
                return web.Response(text="/* fake */\n", content_type="text/css")
            if last.endswith(".js"):
                return web.Response(text="// fake\n", content_type="application/javascript")
            raise web.HTTPNotFound()
        auth = await self._check_client_auth(request, is_api=False, payload=False)
        request[_AUTH_KEY] = auth
        headers = {"Set-Cookie": self._refresh_cookie(auth.session)} if auth.session else {}
        if path == "/admin/login":
            if auth.session is not None:
                return web.Response(status=302, headers={"Location": "/admin/", **headers})
            return web.Response(text=_LOGIN_PAGE, content_type="text/html")
        if auth.session is None:
            return web.Response(status=302, headers={"Location": "/admin/login"})
        page = _ADMIN_PAGE.format(
            csrf=html.escape(auth.session.csrf, quote=True), path=html.escape(path), source=auth.source
        )
        return web.Response(text=page, content_type="text/html", headers=headers)


_SUMMARY: dict[str, Any] = {
    "queries": {
        "total": 7497,
        "blocked": 3465,
        "percent_blocked": 46.2,
        "unique_domains": 445,
        "forwarded": 4009,
        "cached": 23,
        "frequency": 1.1,
        "types": {
            "A": 3643,
            "AAAA": 3545,
            "ANY": 0,
            "SRV": 0,
            "SOA": 0,
            "PTR": 207,
            "TXT": 0,
            "NAPTR": 0,
            "MX": 0,
            "DS": 0,
            "RRSIG": 0,
            "DNSKEY": 0,
            "NS": 0,
            "SVCB": 0,
            "HTTPS": 102,
            "OTHER": 0,
        },
        "status": {"GRAVITY": 3465, "FORWARDED": 4009, "CACHE": 23},
        "replies": {"NODATA": 1, "NXDOMAIN": 0, "CNAME": 0, "IP": 7496},
    },
    "clients": {"active": 10, "total": 10},
    "gravity": {"domains_being_blocked": 104423, "last_update": 1725194639},
}


def _version(version: str) -> dict[str, Any]:
    local = {"version": version, "branch": "master", "hash": "a1b2c3d4"}
    return {
        "version": {
            "core": {"local": {"version": "v6.1", "branch": "master", "hash": "f00dbabe"}, "remote": None},
            "web": {"local": {"version": "v6.2", "branch": "master", "hash": "deadbeef"}, "remote": None},
            "ftl": {"local": local | {"date": "2025-11-27 18:02:19 +0000"}, "remote": None},
            "docker": {"local": None, "remote": None},
        }
    }


_LOGIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Pi-hole - Login</title></head>
<body class="page-login"><form id="loginform"><input id="current-password" type="password"></form>
<script src="/admin/scripts/js/login.js"></script></body></html>
"""

_ADMIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta name="csrf-token" content="{csrf}">
<title>Pi-hole - fake</title></head>
<body><h1>Pi-hole admin (fake)</h1><p id="path">{path}</p><p id="sid-source">{source}</p></body></html>
"""
