"""Two self-hosted apps without a built-in adapter, as the generic adapter meets them (issue: onboarding
by configuration alone, round two). Each behaves the way the real kind of app does where it matters:

`FakeSyncApp`, a sync tool with a REST API and a single-page UI:
- its session cookie is named per instance, `sessionid-<first 5 characters of the instance id>`;
- the login answer carries a CSRF token (header `X-CSRF-Token-<id>`), which every `/rest/` call must
  send back in that header, together with the constant `X-Instance: <id>` its UI always sends;
- `GET /rest/config` holds the API key; `PUT /rest/config` replaces the whole config, and a blank or
  null API key makes the app generate a new random one (every script using the old key then breaks);
- `GET /rest/events` is a long-poll: the headers at once, then chunks after `event_gaps` seconds each.

`FakeConsole`, a server-admin console whose UI runs over a WebSocket:
- form login at `POST /login` (cookie `console_sid`), no logout endpoint over HTTP;
- "Log out" is a WebSocket text message `{"type":"logout"}`; from then on (or when its session dies
  otherwise) every page is its own login page, with `200`, at any path.

`FakeBasicApp`: Basic auth on every page, no login call of its own (`/` is as good a "login" as any).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.server import LoopbackServer

INSTANCE = "AB3XY9-QWERTZ-7"
SUFFIX = INSTANCE[:5]
COOKIE = f"sessionid-{SUFFIX}"
CSRF_HEADER = f"X-CSRF-Token-{SUFFIX}"
LOGIN_PAGE = "<!doctype html><title>Console login</title><form method=post action=/login>" \
             "<input name=user><input name=password type=password></form>"


class FakeSyncApp(LoopbackServer):
    def __init__(self, *, user: str = "admin", password: str = "sync-pass") -> None:
        self.user, self.password = user, password
        self.sessions: dict[str, str] = {}      # session id -> its CSRF token
        self.config: dict[str, Any] = {"version": 37, "gui": {"theme": "default", "apiKey": "real-api-key-1"}}
        self.event_gaps: list[float] = [0.1]
        self.seen: list[dict[str, Any]] = []    # what each /rest/ call carried
        self.app = web.Application()
        self.app.router.add_post("/rest/noauth/auth/password", self._login)
        self.app.router.add_get("/rest/config", self._get_config)
        self.app.router.add_put("/rest/config", self._put_config)
        self.app.router.add_route("*", "/rest/events", self._events)
        self.app.router.add_get("/rest/echo", self._echo)

    async def _login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("username") != self.user or body.get("password") != self.password:
            return web.json_response({"error": "bad credentials"}, status=403)
        sid, csrf = secrets.token_urlsafe(24), secrets.token_urlsafe(16)
        self.sessions[sid] = csrf
        resp = web.Response(status=204, headers={CSRF_HEADER: csrf})
        resp.set_cookie(COOKIE, sid, httponly=True, path="/")
        resp.set_cookie(f"CSRF-Token-{SUFFIX}", csrf, path="/")
        return resp

    def _check(self, request: web.Request) -> web.Response | None:
        sid = request.cookies.get(COOKIE, "")
        self.seen.append({"cookies": dict(request.cookies), "csrf": request.headers.get(CSRF_HEADER),
                          "instance": request.headers.get("X-Instance")})
        if sid not in self.sessions:
            return web.json_response({"error": "not authenticated"}, status=401)
        if request.headers.get(CSRF_HEADER) != self.sessions[sid]:
            return web.json_response({"error": "CSRF Error"}, status=403)
        if request.headers.get("X-Instance") != SUFFIX:
            return web.json_response({"error": "wrong instance"}, status=400)
        return None

    async def _get_config(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        resp = web.json_response(self.config)
        sid = request.cookies[COOKIE]
        resp.set_cookie(COOKIE, sid, httponly=True)             # sent again with every config, as apps do
        resp.set_cookie(f"CSRF-Token-{SUFFIX}", self.sessions[sid])
        resp.set_cookie("ui-lang", "en")
        return resp

    async def _put_config(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        config = await request.json()
        if not config.get("gui", {}).get("apiKey"):
            config.setdefault("gui", {})["apiKey"] = "random-" + secrets.token_hex(8)
        self.config = config
        return web.json_response(self.config)

    async def _echo(self, request: web.Request) -> web.Response:
        return self._check(request) or web.json_response(self.seen[-1])

    async def _events(self, request: web.Request) -> web.StreamResponse:
        refused = self._check(request)
        if refused is not None:
            return refused
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for n, gap in enumerate(self.event_gaps):
            await asyncio.sleep(gap)
            await resp.write(b'{"id":%d}\n' % n)
        await resp.write_eof()
        return resp


class FakeConsole(LoopbackServer):
    def __init__(self, *, user: str = "root", password: str = "console-pass") -> None:
        self.user, self.password = user, password
        self.sessions: set[str] = set()
        self.logins = 0
        self.app = web.Application()
        self.app.router.add_post("/login", self._login)
        self.app.router.add_get("/ws", self._ws)
        self.app.router.add_get("/{tail:.*}", self._page)

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("user") != self.user or form.get("password") != self.password:
            return web.Response(status=200, text=LOGIN_PAGE, content_type="text/html")
        self.logins += 1
        sid = secrets.token_urlsafe(24)
        self.sessions.add(sid)
        resp = web.Response(status=303, headers={"Location": "/"})
        resp.set_cookie("console_sid", sid, httponly=True)
        return resp

    async def _page(self, request: web.Request) -> web.Response:
        if request.cookies.get("console_sid") not in self.sessions:
            return web.Response(status=200, text=LOGIN_PAGE, content_type="text/html")
        return web.Response(
            text=f"<!doctype html><title>Console</title><p>{request.path}", content_type="text/html"
        )

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        sid = request.cookies.get("console_sid", "")
        if sid not in self.sessions:
            return web.Response(status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            if '"type":"logout"' in msg.data:
                self.sessions.discard(sid)
                await ws.send_str('{"type":"logged_out"}')
            else:
                await ws.send_str("echo:" + msg.data)
        return ws


class FakeBasicApp(LoopbackServer):
    def __init__(self, *, user: str = "ops", password: str = "basic-pass") -> None:
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._any)

    async def _any(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != self.expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="app"'})
        return web.Response(text=f"<!doctype html><title>Home</title><p>{request.method} {request.path}",
                            content_type="text/html")
