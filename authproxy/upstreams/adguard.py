"""AdGuard Home: `POST /control/login` {name, password} -> cookie `agh_session`.

A thin configuration of the generic adapter, following AdGuard Home's own code (`internal/home/authhttp.go`):
* wrong credentials answer 403, a blocked client 429 with Retry-After (AdGuard counts failures per
  TCP peer, i.e. per authproxy: authproxy's own throttle stops typos first, and a signed-in
  person's own `POST /control/login` is refused rather than forwarded);
* the cookie is injected; the browser's own `agh_session` and `Authorization` (AdGuard accepts Basic
  on any request, which would let a client pick another AdGuard user) are removed, and any
  `Set-Cookie: agh_session` is dropped;
* expiry: 401 on `/control/*`, and the 302 to `/login.html` that `/` answers without a session;
  sessions are absolute (720 h), so no keepalive cadence; logout `GET /control/logout`, and the UI's
  own sign-out link ends the authproxy session too.

Site `options` use the generic schema and override this configuration table by table.
"""

from __future__ import annotations

from typing import Any, ClassVar

from authproxy.upstreams.generic import GenericAdapter

ADGUARD: dict[str, Any] = {
    "login": {"method": "POST", "path": "/control/login", "encoding": "json", "username_field": "name",
              "password_field": "password", "blocked_status": [429]},
    "credential": {"from": "cookie", "name": "agh_session"},
    "inject": {"as": "cookie", "name": "agh_session"},
    "expiry": {"status": [401], "paths": ["/control/"], "redirect_to": ["/login.html"]},
    "hide": {"set_cookies": ["agh_session"], "request_cookies": ["agh_session"],
             "request_headers": ["Authorization"]},
    "logout": {"method": "GET", "path": "/control/logout", "intercept": True},
    "keepalive": {"method": "GET", "path": "/control/status"},
}


class AdGuardAdapter(GenericAdapter):
    name: ClassVar[str] = "adguard"
    preset: ClassVar[dict[str, Any]] = ADGUARD
    label: ClassVar[str] = "AdGuard Home"
