"""Pi-hole v6 (FTL's web server): `POST /api/auth` {password, totp} -> `session.sid`.

A thin configuration of the generic adapter, following FTL's own code (`src/api/auth.c`):
* one admin, no user name: whatever name the person types is not sent; TOTP goes in the same body as
  an integer, and FTL's 400 "No 2FA token found in JSON payload" becomes `totp_required`;
* the sid is injected as `X-FTL-SID` (header auth needs no CSRF token), so the browser's own `sid`
  cookie / `sid` / `X-FTL-SID` headers / `?sid=` are removed and FTL's `Set-Cookie: sid`, re-sent on
  every authenticated answer, never reaches the browser; `GET /api/auth` echoes the sid and csrf in
  JSON, which are blanked;
* expiry: 401 on `/api/*` (`session.valid:false`, or `unauthorized` on data endpoints) and the Lua
  pages' 302 to `/admin/login`; sliding timeout from `session.validity` (1800 s by default), kept
  alive with `GET /api/auth`; logout `DELETE /api/auth`, and the UI's own `DELETE /api/auth` ends the
  authproxy session too.

FTL reads a `sid` in a request *body* before the header; urlencoded forms are cleaned, JSON bodies
stream untouched (one admin account, so a body sid cannot reach more than the injected one does).
Site `options` use the generic schema and override this configuration table by table.
"""

from __future__ import annotations

from typing import Any, ClassVar

from authproxy.upstreams.generic import GenericAdapter

PIHOLE: dict[str, Any] = {
    "login": {
        "method": "POST",
        "path": "/api/auth",
        "encoding": "json",
        "username_field": "",
        "password_field": "password",
        "totp_field": "totp",
        "totp_number": True,
        "totp_required_status": 400,
        "totp_required_text": "No 2FA token",
        "blocked_status": [429],
    },
    "credential": {
        "from": "json",
        "pointer": "/session/sid",
        "ttl_pointer": "/session/validity",
        "ttl": 1800,
    },
    "inject": {"as": "header", "name": "X-FTL-SID"},
    "expiry": {"status": [401], "paths": ["/api/"], "redirect_to": ["/admin/login"]},
    "hide": {
        "json": ["/session/sid", "/session/csrf"],
        "json_paths": ["/api/auth"],
        "set_cookies": ["sid"],
        "request_cookies": ["sid"],
        "request_headers": ["Authorization", "sid", "X-FTL-SID"],
        "params": ["sid"],
    },
    "logout": {"method": "DELETE", "path": "/api/auth", "intercept": True},
    "keepalive": {"method": "GET", "path": "/api/auth"},
}


class PiholeAdapter(GenericAdapter):
    name: ClassVar[str] = "pihole"
    preset: ClassVar[dict[str, Any]] = PIHOLE
    label: ClassVar[str] = "Pi-hole"
