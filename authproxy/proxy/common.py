"""What the HTTP proxy (proxy/http.py) and the WebSocket bridge (proxy/websocket.py) share: the
request as the upstream sees it, and the answers when there is no live credential."""

from __future__ import annotations

from aiohttp import web

from authproxy import keys
from authproxy.log import audit, log
from authproxy.login.service import API_KEY_HEADER
from authproxy.policy import OTP_KIND
from authproxy.proxy.headers import upstream_request_headers
from authproxy.routing import Site
from authproxy.sessions.manager import LoadedSession
from authproxy.upstreams.base import UpstreamRequest
from authproxy.web import bearer, portal, uicalls
from authproxy.web.api import login_location
from authproxy.web.common import client_ip, error_response, json_error, wants_html


def unauthenticated(request: web.Request, *, expired: bool = False) -> web.StreamResponse:
    """Browsers go to the login page with a return URL; API clients get a JSON 401."""
    if wants_html(request) and request.method in ("GET", "HEAD"):
        location = login_location(request, request.rel_url.raw_path_qs)
        if expired:
            location += "&expired=1"
        raise web.HTTPFound(location=location, headers={"Cache-Control": "no-store"})
    if expired:
        return error_response(request, 401, "session_expired", "Your session has ended; sign in again.")
    if request.app[keys.CONFIG].auth_mode == "otp" and not wants_html(request):
        return bearer.missing()   # scripts sign in with a bearer token here
    return error_response(request, 401, "unauthenticated", "Sign in first.")


def signed_out(request: web.Request, site: Site, *, expired: bool = False) -> web.StreamResponse:
    """No live session for this site: the adapter may answer as its product answers a dead token (so
    the product's own UI shows its own sign-in form); otherwise `unauthenticated`. The browser's
    `/favicon.ico` gets authproxy's icon."""
    if request.rel_url.path == "/favicon.ico" and request.method in ("GET", "HEAD"):
        return portal.favicon(request)
    answer = site.adapter.signed_out(site.upstream_path(request.rel_url.raw_path), request.headers,
                                     request.rel_url.query)
    return uicalls.reply(answer) if answer is not None else unauthenticated(request, expired=expired)


def build_upstream_request(request: web.Request, site: Site) -> UpstreamRequest:
    headers = upstream_request_headers(request.headers, drop_cookie=request.app[keys.SESSIONS].cookie_name)
    if request.app[keys.SERVICE_GATE]:
        # A service client's key is authproxy's, never the upstream's (also when it came as a Bearer).
        headers.popall(API_KEY_HEADER, None)
        if keys.SERVICE_CLIENT in request:
            headers.popall("Authorization", None)
    if keys.BEARER in request:   # authproxy's own JWT: never the upstream's
        headers.popall("Authorization", None)
    rel = request.rel_url
    return UpstreamRequest(method=request.method, raw_path=site.upstream_path(rel.raw_path),
                           raw_query=rel.raw_query_string, headers=headers)


async def credential_died(
    request: web.Request, site: Site, loaded: LoadedSession | None
) -> web.StreamResponse:
    """The upstream says the token is dead: end it here too, then ask the person to sign in again."""
    own = loaded.session.credentials.get(site.name) if loaded is not None else None
    if loaded is not None and own is not None and own.kind != OTP_KIND:   # (otp: the service's, below)
        await request.app[keys.SESSIONS].drop_credential(loaded, site.name, client_ip=client_ip(request))
        return signed_out(request, site, expired=True)
    held = request.get(keys.TOKEN_CREDENTIAL)
    tokens = request.app[keys.TOKENS]
    if loaded is None and held is not None and tokens is not None:   # a token's copy of its holder's own
        await tokens.drop_credential(held, site.name)
        audit("token_request", outcome="upstream_expired", user=held.sub, site=site.name,
              client_ip=client_ip(request), token=held.jti[:8])
        return json_error(401, "session_expired",
                          f"{site.name} ended the sign-in this token carries; sign in and mint another.")
    log.error("the service credential was refused by the upstream", extra={"fields": {"site": site.name}})
    return error_response(request, 502, "service_credential_invalid",
                          f"{site.name} refused authproxy's service credential.", title="Upstream refused")
