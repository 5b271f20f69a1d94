"""Helpers for adapters' `intercept(request, site)` hooks: answer a UI's own login/logout calls.

A UI behind authproxy still runs its own sign-in page and sign-out button. When the person is
already signed in at authproxy, its login call is answered here (the upstream session exists
already); its logout call ends the authproxy session and, through the adapter, the upstream one.

The intercept hook runs on the web layer's behalf (it gets the aiohttp request), so ending a
session reuses `web.api.end_session` through a call-time import instead of a second copy of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from authproxy import keys
from authproxy.sessions.model import Credential

if TYPE_CHECKING:
    from authproxy.routing import Site
    from authproxy.sessions.manager import LoadedSession


def upstream_path(request: web.Request, site: Site) -> str:
    """The (still percent-encoded) path the upstream would see for this request."""
    return site.upstream_path(request.rel_url.raw_path)


async def current(request: web.Request, site: Site) -> tuple[LoadedSession | None, Credential | None]:
    """The person's session and their credential for `site` (None, None without session mode)."""
    if not request.app[keys.CONFIG].session_mode:
        return None, None
    from authproxy.web.common import current_session  # the web layer's one way to read the cookie

    loaded = await current_session(request)
    if loaded is None:
        return None, None
    return loaded, loaded.session.credentials.get(site.name)


async def drop_credential(request: web.Request, site: Site) -> None:
    """The upstream says this site's credential is dead: remove it from the session (audited)."""
    loaded, credential = await current(request, site)
    if loaded is None or credential is None:
        return
    await request.app[keys.SESSIONS].drop_credential(loaded, site.name, client_ip=request.remote or "")


async def sign_out(request: web.Request, site: Site, *, status: int = 204, body: str = "") -> web.StreamResponse:
    """End the authproxy session (and every upstream session it holds) for a UI's logout call.

    A browser navigation gets a redirect to authproxy's sign-in page; a script gets `status`/`body`.
    """
    from authproxy.web.api import clear_session_cookie, end_session
    from authproxy.web.common import SECURITY_HEADERS, wants_html

    loaded, _ = await current(request, site)
    if loaded is not None:
        await end_session(request, loaded, reason="ui_logout")
    response: web.StreamResponse
    if request.method in ("GET", "HEAD") and wants_html(request):
        prefix = request.app[keys.CONFIG].server.prefix
        response = web.Response(status=302, headers={**SECURITY_HEADERS,
                                                     "Location": f"{prefix}/login?logged_out=1"})
    elif status == 204:
        response = web.Response(status=204, headers=SECURITY_HEADERS)
    else:
        response = web.Response(status=status, text=body, content_type="text/plain", headers=SECURITY_HEADERS)
    if request.app[keys.CONFIG].session_mode:
        clear_session_cookie(request, response)
    return response
