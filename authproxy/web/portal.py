"""The sign-in page: plain HTML that works without script, enhanced by a small same-origin script.

No inline script or style, so the page can carry a strict Content-Security-Policy.
"""

from __future__ import annotations

import html
from pathlib import Path

from aiohttp import web

from authproxy import keys
from authproxy.routing import Site
from authproxy.web.common import SECURITY_HEADERS
from authproxy.web.otp_page import render_otp_login

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Sign in{site_title}</title><link rel="icon" href="{prefix}/static/favicon.ico">
<link rel="stylesheet" href="{prefix}/static/portal.css">
<script src="{prefix}/static/login.js" defer></script></head>
<body><main class="card" role="main">
<h1>Sign in{site_title}</h1>
<p class="hint">Use your {site_kind} account.</p>
<div id="error" class="error" role="alert" aria-live="assertive"{error_hidden}>{error}</div>
<div id="notice" class="notice" role="status"{notice_hidden}>{notice}</div>
{migration}
<form id="login" method="post" action="{prefix}/api/auth/login" novalidate>
  <input type="hidden" name="rd" value="{rd}">
  <input type="hidden" name="site" value="{site}">
  <div class="field" id="credentials"{cred_hidden}>
    <label for="username">Username</label>
    <input id="username" name="username" autocomplete="username" autocapitalize="none" spellcheck="false"
      required value="{username}">
    <label for="password">Password</label>
    <input id="password" name="password" type="password" autocomplete="current-password" required>
  </div>
  <div class="field" id="totp-field"{totp_hidden}>
    <label for="totp">One-time code</label>
    <input id="totp" name="totp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]*"
           maxlength="10">
  </div>
  <button type="submit" id="submit">Sign in</button>
</form>
</main></body></html>"""


# Shown while a shared Technitium admin token (TECHNITIUM_CLUSTER_TOKEN) is still configured.
MIGRATION_NOTICE = """<div id="migration" class="notice" role="status"><strong>Migration required.</strong>
This server still holds a shared Technitium admin token (TECHNITIUM_CLUSTER_TOKEN, deprecated). A Technitium
administrator: sign in, then create the least-privileged background token with
<code>POST {prefix}/api/auth/background-token/migrate</code> or <code>authproxy technitium migrate</code>,
set TECHNITIUM_BACKGROUND_TOKEN and remove TECHNITIUM_CLUSTER_TOKEN (README: "Migrating from a shared admin
token").</div>"""


def _migration_required(request: web.Request) -> bool:
    config = request.app[keys.CONFIG]
    return config.session_mode and any(s.cluster_token is not None for s in config.sites)


def resolve_site(request: web.Request, explicit: str | None = None, rd: str | None = None) -> Site | None:
    """Which site a portal request is about: named, else the return URL's path, else the host."""
    router = request.app[keys.ROUTER]
    if explicit:
        return router.by_name.get(explicit)
    if rd and rd.startswith("/") and not rd.startswith("//"):
        site = router.match(request.host, rd.split("?", 1)[0])
        if site is not None:
            return site
    site = router.match(request.host, "/")
    if site is None and len(router.sites) == 1:
        site = router.sites[0]
    return site


def render_login(request: web.Request, *, status: int = 200, error: str = "", rd: str | None = None,
                 totp: bool = False, notice: str = "", headers: dict[str, str] | None = None,
                 username: str = "") -> web.Response:
    prefix = request.app[keys.CONFIG].server.prefix
    rd = rd if rd is not None else request.query.get("rd", "")
    site = resolve_site(request, request.query.get("site"), rd)
    site_kind = site.config.type.capitalize() if site else "upstream"
    body = LOGIN_PAGE.format(
        prefix=html.escape(prefix), rd=html.escape(rd or ""), site=html.escape(site.name if site else ""),
        site_title=html.escape(f" to {site.name}") if site else "", site_kind=html.escape(site_kind),
        error=html.escape(error), error_hidden="" if error else " hidden",
        notice=html.escape(notice), notice_hidden="" if notice else " hidden",
        username=html.escape(username[:256]), cred_hidden="", totp_hidden="" if totp else " hidden",
        migration=MIGRATION_NOTICE.format(prefix=html.escape(prefix)) if _migration_required(request) else "",
    )
    return web.Response(status=status, text=body, content_type="text/html",
                        headers={**SECURITY_HEADERS, "Content-Security-Policy": CSP, **(headers or {})})


async def login_page(request: web.Request) -> web.StreamResponse:
    notice = "You have signed out." if request.query.get("logged_out") else ""
    if request.query.get("expired"):
        notice = "Your session has ended. Sign in again."
    site = resolve_site(request, request.query.get("site"), request.query.get("rd"))
    config = request.app[keys.CONFIG]
    if config.auth_mode == "otp" or (site is not None and config.otp_site(site.config)):
        return render_otp_login(request, notice=notice)   # "send me a code", then the code
    return render_login(request, notice=notice)


async def logout_page(request: web.Request) -> web.StreamResponse:
    prefix = html.escape(request.app[keys.CONFIG].server.prefix)
    body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign out</title>'
            f'<link rel="icon" href="{prefix}/static/favicon.ico">'
            f'<link rel="stylesheet" href="{prefix}/static/portal.css"></head><body><main class="card">'
            f'<h1>Sign out</h1><form method="post" action="{prefix}/api/auth/logout">'
            f'<button type="submit">Sign out</button> <button type="submit" name="everywhere" value="1">'
            f'Sign out everywhere</button></form></main></body></html>')
    return web.Response(text=body, content_type="text/html",
                        headers={**SECURITY_HEADERS, "Content-Security-Policy": CSP})


FAVICON = (STATIC / "favicon.ico").read_bytes()


def favicon(request: web.Request) -> web.Response:
    """authproxy's icon: for `/favicon.ico` of a site while no one is signed in (a browser asks for
    it on every portal page; the upstream's own icon is for signed-in people), so no page logs a 401."""
    # no-store: once signed in, the browser should ask again and get the upstream's own icon.
    return web.Response(body=FAVICON, content_type="image/x-icon", headers=SECURITY_HEADERS)


def setup(app: web.Application, prefix: str) -> None:
    app.router.add_get(f"{prefix}/login", login_page)
    app.router.add_get(f"{prefix}/logout", logout_page)
    app.router.add_static(f"{prefix}/static", STATIC, append_version=False)
