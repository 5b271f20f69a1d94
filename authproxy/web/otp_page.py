"""The sign-in page of AUTH_MODE=otp: "send me a code", then the code. Plain HTML forms that work
without script (each post answers this page again, or 303 to the return URL once signed in), under the
same strict Content-Security-Policy as the password page (web/portal.py)."""

from __future__ import annotations

import html

from aiohttp import web

from authproxy import keys
from authproxy.web.common import SECURITY_HEADERS

# The password page's policy (web/portal.py CSP, which imports this module; a test holds them equal).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

OTP_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Sign in</title><link rel="icon" href="{prefix}/static/favicon.ico">
<link rel="stylesheet" href="{prefix}/static/portal.css"></head>
<body><main class="card" role="main">
<h1>Sign in</h1>
<p class="hint">A one-time code goes to the owner's chat channel.</p>
<div id="error" class="error" role="alert" aria-live="assertive"{error_hidden}>{error}</div>
<div id="notice" class="notice" role="status"{notice_hidden}>{notice}</div>
<form id="otp-request" method="post" action="{prefix}/api/auth/otp/request">
  <input type="hidden" name="rd" value="{rd}">
  <div class="field">
    <label for="otp-username">Username</label>
    <input id="otp-username" name="username" autocomplete="username" autocapitalize="none"
      spellcheck="false" value="{username}">
  </div>
  <button type="submit" id="send-code">Send me a code</button>
</form>
<form id="otp-verify" method="post" action="{prefix}/api/auth/otp/verify">
  <input type="hidden" name="rd" value="{rd}">
  <input type="hidden" name="username" value="{username}">
  <div class="field">
    <label for="otp">Code</label>
    <input id="otp" name="otp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]*"
      maxlength="6" required{autofocus}>
  </div>
  <button type="submit" id="submit">Sign in</button>
</form>
</main></body></html>"""


def render_otp_login(request: web.Request, *, status: int = 200, error: str = "", notice: str = "",
                     rd: str | None = None, username: str = "admin", sent: bool = False,
                     headers: dict[str, str] | None = None) -> web.Response:
    prefix = request.app[keys.CONFIG].server.prefix
    rd = rd if rd is not None else request.query.get("rd", "")
    body = OTP_PAGE.format(
        prefix=html.escape(prefix), rd=html.escape(rd or ""), username=html.escape(username[:256]),
        error=html.escape(error), error_hidden="" if error else " hidden",
        notice=html.escape(notice), notice_hidden="" if notice else " hidden",
        autofocus=" autofocus" if sent else "",
    )
    return web.Response(status=status, text=body, content_type="text/html",
                        headers={**SECURITY_HEADERS, "Content-Security-Policy": CSP, **(headers or {})})
