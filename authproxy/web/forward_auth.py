"""Forward auth for Caddy `forward_auth`, nginx `auth_request` and Traefik `ForwardAuth`.

One decision (authz.decide), with a per-proxy front end to read the original request and to say
no in the way that proxy understands (PROXIES.md):

    allowed            200 + the injected credential and Remote-User/-Groups/-Name/-Email
    not signed in      Caddy/Traefik: 302 (GET/HEAD) or 303 to the login page for browsers,
                       401 JSON for API clients; nginx: 401 + Location (nginx turns a 3xx into 500)
    signed in, denied  403 (never a redirect: no loops)

The original method/proto/host/URI are read only from a trusted proxy and validated strictly.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit

from aiohttp import web

from authproxy import authz, keys
from authproxy.proxy.headers import has_crlf
from authproxy.web.common import SECURITY_HEADERS, cookie_value

ProxyKind = Literal["caddy", "traefik", "nginx"]
KINDS: tuple[ProxyKind, ...] = ("caddy", "traefik", "nginx")

_METHOD = re.compile(r"^[A-Z]{1,16}$")
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253})(:[0-9]{1,5})?$")
MAX_URI = 8192
IDENTITY = ("Remote-User", "Remote-Groups", "Remote-Name", "Remote-Email")


@dataclass(frozen=True, slots=True)
class Target:
    """The request the proxy is asking about."""

    method: str
    proto: str
    host: str
    uri: str

    @property
    def url(self) -> str:
        return f"{self.proto}://{self.host}{self.uri}"

    @property
    def path(self) -> str:
        return self.uri.split("?", 1)[0]


class BadTarget(Exception):
    pass


def _peer_trusted(request: web.Request) -> bool:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return False
    try:
        ip = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    return any(ip in net for net in request.app[keys.CONFIG].server.trusted_proxies)


def _one(request: web.Request, name: str) -> str | None:
    values = request.headers.getall(name, ())
    if len(values) > 1:
        raise BadTarget(f"{name} appears more than once")
    return values[0].strip() if values else None


def detect(request: web.Request) -> ProxyKind:
    if "X-Original-URL" in request.headers or "X-Original-Method" in request.headers:
        return "nginx"
    if request.headers.get("Via", "").lower().find("caddy") >= 0:
        return "caddy"
    return "traefik"


def read_target(request: web.Request, kind: ProxyKind) -> Target:
    """The original request, from X-Original-* (nginx) or X-Forwarded-* (all three)."""
    method = proto = host = uri = None
    if kind == "nginx":
        method = _one(request, "X-Original-Method")
        original = _one(request, "X-Original-URL")
        if original:
            parts = urlsplit(original)
            proto, host = parts.scheme, parts.netloc
            uri = original[len(f"{parts.scheme}://{parts.netloc}"):] or "/"
    method = method or _one(request, "X-Forwarded-Method") or "GET"
    proto = (proto or _one(request, "X-Forwarded-Proto") or "").lower()
    host = host or _one(request, "X-Forwarded-Host") or request.headers.get("Host", "")
    uri = uri or _one(request, "X-Forwarded-Uri") or "/"
    proto = {"ws": "http", "wss": "https"}.get(proto, proto)
    if "," in proto:
        proto = proto.split(",")[0].strip()
    if proto not in ("http", "https"):
        raise BadTarget("X-Forwarded-Proto must be http or https")
    if not _METHOD.match(method):
        raise BadTarget("the forwarded method is not a valid HTTP method")
    if not _HOST.match(host):
        raise BadTarget("the forwarded host is not a valid host[:port]")
    if (not uri.startswith("/") or uri.startswith("//") or len(uri) > MAX_URI or has_crlf(uri)
            or any(c in uri for c in " \t\\")):
        raise BadTarget("the forwarded URI must be an absolute path without whitespace or control characters")
    return Target(method=method, proto=proto, host=host.lower(), uri=uri)


def _login_url(request: web.Request, target: Target) -> str:
    prefix = request.app[keys.CONFIG].server.prefix
    return f"{target.proto}://{target.host}{prefix}/login?rd={quote(target.url, safe='')}"


def _is_browser(request: web.Request) -> bool:
    if request.headers.get("X-Requested-With", "").lower() == "xmlhttprequest":
        return False
    return "text/html" in request.headers.get("Accept", "")


def _json(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": code, "message": message}),
                        content_type="application/json", headers={**SECURITY_HEADERS, **(headers or {})})


def _ask_to_sign_in(request: web.Request, kind: ProxyKind, target: Target) -> web.Response:
    location = _login_url(request, target)
    if kind == "nginx":
        # nginx turns any 3xx from the auth service into a 500; its config redirects on 401 + Location.
        headers = {"Location": location} if _is_browser(request) else {}
        return _json(401, "unauthenticated", "Sign in first.", headers)
    if _is_browser(request):
        status = 302 if target.method in ("GET", "HEAD") else 303
        return web.Response(status=status, headers={**SECURITY_HEADERS, "Location": location})
    return _json(401, "unauthenticated", "Sign in first.")


def _safe(value: str) -> str | None:
    return None if has_crlf(value) else value


async def verify(request: web.Request) -> web.StreamResponse:
    kind_name = request.match_info.get("proxy")
    if kind_name is not None and kind_name not in KINDS:
        return _json(404, "unknown_proxy", f"Use one of /verify/{', /verify/'.join(KINDS)}.")
    kind: ProxyKind = kind_name if kind_name is not None else detect(request)  # type: ignore[assignment]
    if not _peer_trusted(request):
        return _json(403, "untrusted_proxy", "Forward-auth requests must come from TRUSTED_PROXIES.")
    try:
        target = read_target(request, kind)
    except BadTarget as exc:
        return _json(400, "bad_forwarded_request", str(exc))
    config = request.app[keys.CONFIG]
    site = request.app[keys.ROUTER].match(target.host, target.path)
    if site is None:
        return _json(403, "unknown_site", "No site is configured for this host.")
    loaded = await request.app[keys.SESSIONS].load(cookie_value(request)) if config.session_mode else None
    decision = authz.decide(loaded.session if loaded else None, site.config, session_mode=config.session_mode)
    if decision == "login":
        return _ask_to_sign_in(request, kind, target)
    if decision == "deny":
        return _json(403, "forbidden", "You are signed in but not allowed here.")
    if loaded is not None:
        credential = loaded.session.credentials[site.name]
        identity = loaded.session.identity
        values = {"Remote-User": loaded.session.user, "Remote-Groups": ",".join(identity.groups),
                  "Remote-Name": identity.display_name, "Remote-Email": identity.email}
    else:
        from authproxy.proxy.http import _service_credential

        credential = _service_credential(site)  # type: ignore[assignment]
        values = {}
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    if credential is not None:
        headers.update(site.adapter.forward_auth_headers(credential))
    for name in IDENTITY:
        value = values.get(name)
        if value and _safe(value):
            headers[name] = value
    return web.Response(status=200, headers={k: v for k, v in headers.items() if _safe(v) is not None})


def setup(app: web.Application, prefix: str) -> None:
    app.router.add_route("GET", f"{prefix}/verify", verify)
    app.router.add_route("HEAD", f"{prefix}/verify", verify)
    app.router.add_route("GET", f"{prefix}/verify/{{proxy}}", verify)
    app.router.add_route("HEAD", f"{prefix}/verify/{{proxy}}", verify)
