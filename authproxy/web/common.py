"""Small helpers every handler shares: who is asking, which session, and how to say no."""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from authproxy import keys
from authproxy.errors import AuthError
from authproxy.sessions.manager import LoadedSession

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
HSTS = "Strict-Transport-Security"


def hsts_value(max_age: int, include_subdomains: bool) -> str:
    """The Strict-Transport-Security value of every HTTPS answer ("" = none), built once at start-up.

    No `preload`: that is a promise about the whole domain, which only its owner can make. Not
    `includeSubDomains` by default either: authproxy cannot know that every sibling host speaks HTTPS.
    """
    if max_age <= 0:
        return ""
    return f"max-age={max_age}" + ("; includeSubDomains" if include_subdomains else "")


def parse_json(raw: bytes) -> Any:
    """A client's JSON body: the one place one is parsed, so every way it can fail is a 400 `bad_json`.

    `json.loads` fails with ValueError (bad syntax, bytes that are no UTF-8/16/32, an integer past
    Python's 4,300-digit limit), but with RecursionError on deep nesting (15,000 `[` fit in a login
    body): both are the client's mistake, neither may become a 500."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise AuthError("The body is not valid JSON.", code="bad_json", status=400) from None


ExpectHandler = Callable[[web.Request], Coroutine[Any, Any, web.StreamResponse | None]]


def plain_expect(default: ExpectHandler) -> ExpectHandler:
    """A route's `Expect:` handling: `100-continue` as aiohttp does it, anything else a 417 quoting nothing.

    aiohttp's own handler answers an unknown expectation with a 417 whose text quotes the header, and
    fails with a 500 while building it when the header holds bytes that are no UTF-8 (aiohttp decodes
    header bytes with surrogateescape, and the text cannot be encoded back). It runs before any middleware.
    """
    async def expect(request: web.Request) -> web.StreamResponse | None:
        if request.version >= (1, 1) and request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text="Only Expect: 100-continue is understood.",
                                            headers=SECURITY_HEADERS)
        return await default(request)

    return expect


def wants_html(request: web.Request) -> bool:
    """A browser navigation (not XHR/fetch/API client): those get pages and redirects, not JSON."""
    if request.headers.get("X-Requested-With", "").lower() == "xmlhttprequest":
        return False
    if request.headers.get("Sec-Fetch-Mode", "").lower() in {"cors", "no-cors", "same-origin", "websocket"}:
        return False
    return "text/html" in request.headers.get("Accept", "")


def client_ip(request: web.Request) -> str:
    return request.remote or ""


def cookie_value(request: web.Request) -> str | None:
    """The session cookie's raw value, from every Cookie header (a client or an HTTP/2 hop may send
    several; aiohttp's `request.cookies` reads only the first). Split on `;` as browsers join
    cookies: a plain scan, cheaper than http.cookies' full parse by more than the rest of a cached
    session check, and it never raises. Tickets are never quoted; surrounding quotes are dropped."""
    name = request.app[keys.SESSIONS].cookie_name
    for header in request.headers.getall("Cookie", ()):
        for part in header.split(";"):
            key, sep, value = part.partition("=")
            if sep and key.strip() == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
    return None


@dataclass(frozen=True, slots=True)
class RequestSession:
    """The request's session as loaded (None: nobody is signed in), kept on the request (keys.SESSION)."""

    loaded: LoadedSession | None


async def current_session(request: web.Request) -> LoadedSession | None:
    """The session the request's cookie unlocks: loaded on first use, then kept on the request, the way
    Starlette keeps the user on the scope, so a request loads (and slides) its session once."""
    known: RequestSession | None = request.get(keys.SESSION)
    if known is not None:
        return known.loaded
    loaded = await request.app[keys.SESSIONS].load(cookie_value(request), client_ip=client_ip(request))
    request[keys.SESSION] = RequestSession(loaded)
    return loaded


def json_error(status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
               **extra: Any) -> web.Response:
    body = {"error": code, "message": message}
    body.update(extra)
    return web.Response(status=status, text=json.dumps(body), content_type="application/json",
                        headers={**SECURITY_HEADERS, **(headers or {})})


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title><link rel="stylesheet" href="{prefix}/static/portal.css"></head>
<body><main class="card" role="main"><h1>{title}</h1><p>{message}</p>{extra}</main></body></html>"""


def html_error(request: web.Request, status: int, title: str, message: str, *, extra_html: str = "",
               headers: dict[str, str] | None = None) -> web.Response:
    prefix = request.app[keys.CONFIG].server.prefix
    body = PAGE.format(title=html.escape(title), message=html.escape(message), prefix=html.escape(prefix),
                       extra=extra_html)
    return web.Response(status=status, text=body, content_type="text/html",
                        headers={**SECURITY_HEADERS, **(headers or {})})


def no_endpoint(request: web.Request) -> web.Response:
    """An unknown path or method under the reserved prefix: authproxy's own, never the upstream's."""
    return error_response(request, 404, "not_found", "No such authproxy endpoint.", title="Not found")


def error_response(request: web.Request, status: int, code: str, message: str, *, title: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """JSON for API clients, a small page for browsers; never a stack trace or a secret."""
    if wants_html(request):
        return html_error(request, status, title or message, message, headers=headers)
    return json_error(status, code, message, headers=headers)
