"""Forward auth for Caddy `forward_auth`, nginx `auth_request` and Traefik `ForwardAuth`.

One decision (authz.decide), with a per-proxy front end to read the original request and to say
no in the way that proxy understands (README "Forward auth"; tests/e2e runs the real proxies):

    allowed            200 + the injected credential and Remote-User/-Groups/-Name/-Email
    not signed in      Caddy/Traefik: 302 (GET/HEAD) or 303 to the login page for browsers,
                       401 JSON for API clients; nginx: 401 + Location (nginx turns a 3xx into 500)
    signed in, denied  403 (never a redirect: no loops)
    bad forwarded info 400; not from a trusted proxy 403; no site for the host 403

Endpoints: `{prefix}/verify/caddy`, `/verify/traefik`, `/verify/nginx`, and `/verify` (auto-detect).

Where the original request is read from, and why only there:

* Caddy and Traefik always (re)compute `X-Forwarded-Method/-Proto/-Host/-Uri` for the auth request, so
  those are the only source for them; a client's `X-Original-URL` (which both pass on) is ignored.
* nginx's subrequest inherits *every* client header, so only what the location sets can be believed.
  The shipped config sets `X-Original-Method`/`X-Original-URL` and the `X-Forwarded-*` ones; other
  nginx recipes set one family or the other. When both families are present they must name the same
  request, otherwise a client added one of them (refused with 400).
* Caddy appends the client's query string to the verify URI; the verify request's own query is never
  read.

Everything here is refused unless TRUST_PROXY is on and the TCP peer is in TRUSTED_PROXIES. The
parsing helpers are pure (headers in, `Target` out), so they are unit-tested without sockets.

Who may ask at all, and why not merely "a trusted peer": the 200 answer carries the real upstream
credential, and when authproxy also serves the UI behind a TLS-terminating proxy that proxy is trusted
and forwards *every* path, so a browser (or a script in the upstream's origin) reached /verify with its
own cookie and its own X-Forwarded-Uri and read the token. So /verify* is served only

* on a listener of its own (FORWARD_AUTH_HOST/FORWARD_AUTH_PORT; `listener_app`), the public listener
  answering it like any unknown endpoint (404), and/or
* to a caller that sends FORWARD_AUTH_SECRET in the X-Authproxy-Secret header (compared in constant
  time; a missing or wrong one gets 403 and nothing else);

and with neither set up it is not served (404) on the public listener.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from hmac import compare_digest
from typing import Literal
from urllib.parse import quote, unquote

from aiohttp import web
from multidict import MultiMapping

from authproxy import authz, crosssite, keys
from authproxy.accounts.claims import KIND as LOCAL_KIND
from authproxy.config.schema import ECHO_METHODS, FORWARD_AUTH_SECRET_HEADER, IPNetwork
from authproxy.log import log
from authproxy.metrics import CONTENT_TYPE, observe_verify
from authproxy.sessions.model import Credential, site_identity
from authproxy.web import local
from authproxy.web.bearer import MISSING, bearer_credential
from authproxy.web.common import (
    SECURITY_HEADERS,
    cookie_value,
    error_response,
    json_error,
    no_endpoint,
    wants_html,
)
from authproxy.web.middleware import Handler, peer_in, request_rules
from authproxy.web.service import service_credential

__all__ = ["KINDS", "LISTENER", "BadTarget", "ProxyKind", "Target", "detect", "listener_app",
           "read_target", "setup"]

ProxyKind = Literal["caddy", "traefik", "nginx"]
KINDS: tuple[ProxyKind, ...] = ("caddy", "traefik", "nginx")

# RFC 9110 method tokens as proxies send them (GET, PROPFIND, M-SEARCH, VERSION-CONTROL, ...).
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,23}")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{1,5}")
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))
_URI_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\#\s]")  # controls, (any) whitespace, backslash, fragment
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_SLASHES = re.compile(r"/{2,}")
MAX_URI = 8192
MAX_HOST = 260
IDENTITY = ("Remote-User", "Remote-Groups", "Remote-Name", "Remote-Email")


class BadTarget(ValueError):
    """The forwarded description of the original request is missing, ambiguous or malformed."""


@dataclass(frozen=True, slots=True)
class Target:
    """The request the proxy is asking about (validated; `host` lower case, `uri` raw and ASCII)."""

    method: str
    proto: str
    host: str
    uri: str
    method_known: bool = True   # False: no method header came (nginx subrequests are GETs themselves)

    @property
    def origin(self) -> str:
        return f"{self.proto}://{self.host}"

    @property
    def url(self) -> str:
        return f"{self.origin}{self.uri}"

    @property
    def path(self) -> str:
        """The raw (still percent-encoded) path, without the query."""
        return self.uri.split("?", 1)[0]

    @property
    def route_path(self) -> str:
        """The path as proxies route on it: percent-decoded, `//` merged, dot segments resolved."""
        path = self.path
        if "%" not in path and "//" not in path and "/." not in path:
            return path  # the common case: nothing to decode or resolve
        return normalise_path(unquote(path, errors="replace"))

    def names_same_request(self, other: Target, *, compare_method: bool) -> bool:
        same = (self.proto, self.host, self.uri) == (other.proto, other.host, other.uri)
        return same and (not compare_method or self.method == other.method)


# ---- pure helpers ------------------------------------------------------------------------------------


def forwarded_client(forwarded_for: list[str] | tuple[str, ...], peer: str,
                     trusted: tuple[IPNetwork, ...]) -> str:
    """Who the person is, for the audit log: the last X-Forwarded-For hop that is not a trusted proxy
    (what aiohttp-remotes does for proxied requests; /verify reads the proxy's headers itself). The
    proxy's own address when the header is missing or not a list of addresses."""
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop.split("%", 1)[0])
        except ValueError:
            return peer
        if not peer_in(hop, trusted):
            return hop
    return hops[0] if hops else peer


def normalise_path(path: str) -> str:
    """RFC 3986 remove_dot_segments plus merged slashes, as nginx/Caddy/Traefik match locations."""
    out: list[str] = []
    for segment in _SLASHES.sub("/", path).split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    trailing = path.endswith(("/", "/.", "/..")) and bool(out) and out[-1] != ""
    return "/" + "/".join(out) + ("/" if trailing else "")


def _method(value: str, source: str) -> str:
    if not _METHOD.fullmatch(value):
        raise BadTarget(f"{source} is not an HTTP method")
    return value


def _proto(value: str, source: str) -> str:
    proto = value.lower()
    proto = crosssite.WS_SCHEMES.get(proto, proto)  # Traefik says ws/wss for WebSocket upgrades
    if proto not in ("http", "https"):
        raise BadTarget(f"{source} must be http or https (or ws/wss)")
    return proto


def _host(value: str, source: str) -> str:
    """`host[:port]`: a DNS name, an IPv4 address or a bracketed IPv6 address; lower case."""
    host = value.lower()
    if len(host) > MAX_HOST:
        raise BadTarget(f"{source} is too long")
    port: str | None = None
    if host.startswith("["):
        end = host.find("]")
        if end == -1:
            raise BadTarget(f"{source} is not a valid host[:port]")
        name, rest = host[: end + 1], host[end + 1 :]
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            raise BadTarget(f"{source} is not a valid IPv6 address") from None
        if rest:
            if not rest.startswith(":"):
                raise BadTarget(f"{source} is not a valid host[:port]")
            port = rest[1:]
    else:
        name, sep, port_text = host.partition(":")
        port = port_text if sep else None
        if len(name) > 253 or not _HOSTNAME.fullmatch(name):
            raise BadTarget(f"{source} is not a valid host name")
    if port is not None and (not _PORT.fullmatch(port) or not 0 < int(port) < 65536):
        raise BadTarget(f"{source} has an invalid port")
    return host


def _uri(value: str, source: str) -> str:
    """An origin-form request target (`/path?query`), raw; non-ASCII is percent-encoded like browsers do."""
    if len(value) > MAX_URI:
        raise BadTarget(f"{source} is too long")
    if not value.startswith("/") or value.startswith("//"):
        raise BadTarget(f"{source} must be an absolute path (/...), not {value[:2]!r}...")
    if _URI_FORBIDDEN.search(value):
        raise BadTarget(f"{source} contains whitespace, control characters, a backslash or a fragment")
    return value if value.isascii() else quote(value, safe=_PRINTABLE_ASCII)


def _from_forwarded(uri: str | None, proto: str | None, host: str | None,
                    method: str | None) -> Target | None:
    """Target from X-Forwarded-Method/-Proto/-Host/-Uri (None without X-Forwarded-Uri)."""
    if uri is None:
        return None
    if proto is None or host is None:
        raise BadTarget("X-Forwarded-Uri came without X-Forwarded-Proto and X-Forwarded-Host")
    return Target(method=_method(method, "X-Forwarded-Method") if method else "GET",
                  proto=_proto(proto, "X-Forwarded-Proto"), host=_host(host, "X-Forwarded-Host"),
                  uri=_uri(uri, "X-Forwarded-Uri"), method_known=method is not None)


def _from_original(url: str | None, method: str | None) -> Target | None:
    """Target from X-Original-URL (absolute) and X-Original-Method (None without X-Original-URL)."""
    if url is None:
        return None
    match = _ABSOLUTE.fullmatch(url)
    if match is None:
        raise BadTarget("X-Original-URL must be an absolute URL (scheme://host/path)")
    scheme, authority, rest = match.groups()
    if rest and rest[0] == "?":
        rest = "/" + rest
    return Target(
        method=_method(method, "X-Original-Method") if method else "GET",
        proto=_proto(scheme, "X-Original-URL's scheme"),
        host=_host(authority, "X-Original-URL's host"),
        uri=_uri(rest or "/", "X-Original-URL's path"),
        method_known=method is not None,
    )


def detect(headers: MultiMapping[str]) -> ProxyKind:
    """Which proxy is asking, for `/verify`: nginx sends X-Original-*, Caddy says so in Via.

    Only a hint (a client can send either; Caddy keeps a client's Via instead of adding `1.1 Caddy`):
    Caddy and Traefik get the same answers, and read_target refuses X-Original-* that disagree with
    X-Forwarded-*, so a wrong guess can only change the shape of a "no" for the client who forged it.
    """
    if "X-Original-URL" in headers or "X-Original-Method" in headers:
        return "nginx"
    if any("caddy" in v.lower() for v in headers.getall("Via", [])):
        return "caddy"
    return "traefik"


TARGET_HEADERS = ("X-Forwarded-Uri", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Method",
                  "X-Original-URL", "X-Original-Method")


def read_target(headers: MultiMapping[str], kind: ProxyKind) -> Target:
    """The original request the proxy asks about; raises BadTarget when it is missing or suspicious.

    Each header must appear at most once (proxies set them exactly once); the parse itself is a pure
    function of the values, memoised because a proxy asks about the same URLs over and over.
    """
    values: list[str | None] = []
    for name in TARGET_HEADERS:
        found = headers.getall(name, ())
        if len(found) > 1:
            raise BadTarget(f"{name} appears more than once")
        values.append((found[0].strip() or None) if found else None)
    return _parse_target(kind, *values)


@functools.lru_cache(maxsize=4096)
def _parse_target(kind: ProxyKind, fwd_uri: str | None, fwd_proto: str | None, fwd_host: str | None,
                  fwd_method: str | None, orig_url: str | None, orig_method: str | None) -> Target:
    forwarded = _from_forwarded(fwd_uri, fwd_proto, fwd_host, fwd_method)
    if kind != "nginx":
        if forwarded is None:
            raise BadTarget(f"{kind} sends X-Forwarded-Uri/-Host/-Proto; they are missing")
        return forwarded
    original = _from_original(orig_url, orig_method)
    if (original is not None and forwarded is not None
            and not original.names_same_request(forwarded, compare_method=original.method_known
                                                and forwarded.method_known)):
        raise BadTarget("X-Original-* and X-Forwarded-* describe different requests")
    chosen = original or forwarded
    if chosen is None:
        raise BadTarget(
            "nginx must send X-Original-URL (or X-Forwarded-Proto/-Host/-Uri); see nginx/authproxy.conf"
        )
    return chosen


def login_url(prefix: str, target: Target) -> str:
    """The portal's login page on the original host, with the whole original URL as `rd`."""
    return f"{target.origin}{prefix}/login?rd={quote(target.url, safe='')}"


def _header_safe(value: str) -> bool:
    return bool(value) and not _HEADER_UNSAFE.search(value)


# ---- the handler -------------------------------------------------------------------------------------

WARNED: web.AppKey[set[str]] = web.AppKey("forward_auth_warned")
# FORWARD_AUTH_SECRET as bytes (None: not required), encoded once at start-up.
SECRET: web.AppKey[bytes | None] = web.AppKey("forward_auth_secret")
# The forward-auth listener's runner once it serves (its `addresses` say where; tests bind port 0).
LISTENER: web.AppKey[web.AppRunner] = web.AppKey("forward_auth_listener")


def _warn_once(request: web.Request, key: str, message: str, **fields: str) -> None:
    """Misconfigurations repeat on every request: say each once per application."""
    warned = request.app[WARNED]
    if key not in warned:
        warned.add(key)
        log.warning(message, extra={"fields": fields})


def _ask_to_sign_in(request: web.Request, kind: ProxyKind, target: Target) -> web.Response:
    location = login_url(request.app[keys.CONFIG].server.prefix, target)
    browser = wants_html(request)
    if kind == "nginx":
        # nginx answers 500 to any 3xx from the auth service; its config redirects on 401 + Location.
        return json_error(401, *_unauthenticated(request),
                          headers={"Location": location} if browser else None, login=location)
    if browser:
        status = 302 if target.method in ("GET", "HEAD") else 303
        return web.Response(status=status, headers={**SECURITY_HEADERS, "Location": location})
    return json_error(401, *_unauthenticated(request), login=location)


def _unauthenticated(request: web.Request) -> tuple[str, str]:
    """The 401's code and message: in AUTH_MODE=otp scripts come with a bearer token, so say it is missing."""
    if request.app[keys.CONFIG].auth_mode == "otp":
        return "missing_authorization", MISSING
    return "unauthenticated", "Sign in first."


def _secret_ok(request: web.Request) -> bool:
    """The request carries FORWARD_AUTH_SECRET exactly once (or none is required); constant time."""
    expected = request.app[SECRET]
    if expected is None:
        return True
    given = request.headers.getall(FORWARD_AUTH_SECRET_HEADER, ())
    # surrogatepass: whatever aiohttp decoded from the wire encodes back, so a bad header is a no, not a 500.
    return len(given) == 1 and compare_digest(given[0].encode("utf-8", "surrogatepass"), expected)


async def verify(request: web.Request) -> web.StreamResponse:  # noqa: C901 - /verify hot path, kept flat
    if not _secret_ok(request):
        _warn_once(
            request,
            "secret",
            f"forward auth refused: the request did not carry the right "
            f"{FORWARD_AUTH_SECRET_HEADER} (FORWARD_AUTH_SECRET); the proxy must send it with each check",
            peer=request.remote or "",
        )
        return json_error(403, "forward_auth_refused", "This endpoint answers only the front proxy.")
    config = request.app[keys.CONFIG]
    kind_name = request.match_info.get("proxy")
    if kind_name is not None and kind_name not in KINDS:
        return json_error(404, "unknown_proxy", f"Use one of /verify/{', /verify/'.join(KINDS)} or /verify.")
    if not config.server.trust_proxy or not request.app[keys.TRUSTED_PEERS](request):
        _warn_once(
            request,
            "untrusted",
            "forward auth refused: TRUST_PROXY is off or the proxy is not in TRUSTED_PROXIES",
            peer=request.remote or "",
        )
        return json_error(403, "untrusted_proxy",
                          "Forward auth answers only proxies in TRUSTED_PROXIES (with TRUST_PROXY=true).")
    kind: ProxyKind = kind_name if kind_name is not None else detect(request.headers)
    try:
        target = read_target(request.headers, kind)
    except BadTarget as exc:
        return json_error(400, "bad_forwarded_request", str(exc))
    site = request.app[keys.ROUTER].match(target.host, target.route_path)
    if site is None:
        return error_response(request, 403, "unknown_site", "No site is configured for this address.",
                              title="Not configured")
    if target.method in ECHO_METHODS and target.method not in site.config.allow_methods:
        # The proxy would forward it with the credential, and the upstream echo that back.
        return json_error(405, "method_not_allowed", f"{target.method} is not forwarded to {site.name}.")
    # Without a method header a link cannot be told from a form post: from another site, neither passes.
    # The path as the upstream reads it (`//` merged, dot segments resolved): `//api/` is its API too.
    # The proxies pass the browser's own Sec-Fetch-*/Origin/Referer/Accept headers along (WebSocket
    # handshakes included: Chromium's carry only Origin).
    refusal = None if crosssite.plainly_own(request.headers) else crosssite.refused(
        target.method if target.method_known else "", request.headers, target.origin,
        site.upstream_path(target.route_path), site.adapter.gets_change_state)
    if refusal is not None:
        return error_response(request, 403, "cross_site", crosssite.explain(refusal, site.name),
                              title="Request from another site refused")
    loaded = None
    if config.session_mode:
        loaded = await request.app[keys.SESSIONS].load(
            cookie_value(request),
            client_ip=lambda: forwarded_client(
                request.headers.getall("X-Forwarded-For", ()),
                request.remote or "",
                config.server.trusted_proxies,
            ),
        )
    decision = authz.decide(loaded.session if loaded else None, site.config, session_mode=config.session_mode)
    service: Credential | None = None
    if decision == "login" and loaded is None:   # a service client's (hybrid), or an anonymous request
        # Parsing the hops costs ~10 us: only when an audit line may need them.
        proxied_from = functools.partial(forwarded_client, request.headers.getall("X-Forwarded-For", ()),
                                         request.remote or "", config.server.trusted_proxies)
        if request.app[keys.SERVICE_GATE]:
            service, refused = await service_credential(request, site, method=target.method,
                                                        path=target.path, client_ip=proxied_from())
            if refused is not None:
                return refused
        if service is None and request.app[keys.TOKENS] is not None:   # a JWT bearer's (web/bearer.py)
            service, refused = await bearer_credential(request, site, method=target.method, path=target.path,
                                                       client_ip=proxied_from)
            if refused is not None:
                return refused
    if decision == "login" and service is None:
        if site.adapter.public_call(target.method, site.upstream_path(target.route_path)):
            # A call the product answers for anyone (e.g. Technitium's api/sso/status): let it through,
            # with no credential to add.
            return web.Response(status=200, headers={"Cache-Control": "no-store"})
        return _ask_to_sign_in(request, kind, target)
    if decision == "deny":
        return error_response(request, 403, "forbidden", "You are signed in, but this account may not use "
                              f"{site.name}.", title="Not allowed")

    gated: local.Passed | None = None
    # the session's, or (no session) the account a local JWT stands for (web/bearer.py)
    gate_session = (loaded.session if loaded is not None and service is None
                    else request.get(keys.LOCAL_BEARER))
    if (site.config.local_accounts and gate_session is not None
            and not local.plain_read(site, gate_session, target.method if target.method_known else "")):
        # Roles and keys of authproxy's own accounts. Without the method header a request cannot be told
        # from a write: it needs the editor role. The body is not sent here: a JSON-RPC read by POST too.
        passed = await local.gate(request, site, gate_session,
                                  method=target.method if target.method_known else "",
                                  upstream_path=lambda: site.upstream_path(target.route_path),
                                  raw_query=target.uri.partition("?")[2], headers=request.headers)
        if not isinstance(passed, local.Passed):
            return passed
        gated = passed
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    credential: Credential | None
    if service is not None:
        credential = service
    elif loaded is not None:
        credential = site.policy.credential(loaded.session, site.name)
        if (credential is not None and credential is loaded.session.credentials.get(site.name)
                and credential.kind != LOCAL_KIND):   # a local sign-in's marker is no upstream's to prove
            request.app[keys.KEEPALIVE].note_unproven_use(loaded, site.name)
        identity = site_identity(loaded.session, site.name)
        if identity is not None:
            for name, value in zip(IDENTITY, (identity.username, ",".join(identity.groups),
                                              identity.display_name, identity.email), strict=True):
                if _header_safe(value):
                    headers[name] = value
    else:
        credential = site.policy.credential(None, site.name)
    if gated is not None and site.config.local.inject:
        # every key header, empty without a key: the proxy overwrites the client's
        headers.update(local.injected_headers(site.config.local, gated.key))
    claims = request.get(keys.BEARER)
    if claims is not None:   # who the token says (checked: web/bearer.py)
        headers.update(zip(IDENTITY[:2], (claims.sub, ",".join(claims.roles)), strict=True))
    if credential is not None and credential.kind != LOCAL_KIND:
        injected = site.adapter.forward_auth_headers(credential)
        if kind == "traefik" and "X-Authproxy-Token" in injected:
            _warn_once(
                request,
                "traefik-token",
                "Traefik cannot move X-Authproxy-Token into the query: this upstream "
                "needs the Caddy or nginx recipe (e.g. Technitium v14), or a version that takes a "
                "Bearer header",
                site=site.name,
            )
        headers.update({k: v for k, v in injected.items() if _header_safe(v)})
    return web.Response(status=200, headers=headers)


async def not_served(request: web.Request) -> web.StreamResponse:
    """/verify* on the public listener when it is not served there: the same 404 as any unknown
    authproxy endpoint (nothing says what forward auth would need), and a word in the log for whoever
    set up the proxy."""
    server = request.app[keys.CONFIG].server
    if server.forward_auth_listener:
        _warn_once(
            request,
            "public",
            "a forward-auth check came to the public listener and got 404; point the "
            "proxy's check at the forward-auth listener (FORWARD_AUTH_HOST:FORWARD_AUTH_PORT)",
            peer=request.remote or "",
            listener=server.forward_auth_address(),
        )
    else:
        _warn_once(
            request,
            "off",
            "forward auth is not set up, so /verify* answers 404; set FORWARD_AUTH_PORT "
            f"(a listener of its own) or FORWARD_AUTH_SECRET (sent by the proxy in "
            f"{FORWARD_AUTH_SECRET_HEADER}); see `authproxy check-config`",
            peer=request.remote or "",
        )
    return no_endpoint(request)  # the reserved prefix's "no such endpoint", as for any other path there


def _routes(app: web.Application, prefix: str, handler: Handler) -> None:
    # Any method: Traefik's preserveRequestMethod sends the original one; the decision ignores it.
    if handler is verify and keys.METRICS in app:
        handler = observe_verify(handler, app[keys.METRICS])
        # The metrics are served where /verify is (README "Metrics"); METRICS=false: nowhere.
        app.router.add_get(f"{prefix}/metrics", metrics_page)
    app.router.add_route("*", f"{prefix}/verify", handler)
    app.router.add_route("*", f"{prefix}/verify/{{proxy}}", handler)


async def metrics_page(request: web.Request) -> web.StreamResponse:
    """Prometheus text format: the forward-auth listener, or FORWARD_AUTH_SECRET in its header (a
    browser gets the same 404 as for any unknown endpoint)."""
    if not _secret_ok(request):
        return no_endpoint(request)
    body = await request.app[keys.METRICS].exposition(request.app)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})


def setup(app: web.Application, prefix: str) -> None:
    """The public listener's /verify*: served there only with a shared secret and no listener of its own."""
    server = app[keys.CONFIG].server
    app[WARNED] = set()
    app[SECRET] = (
        server.forward_auth_secret.reveal().encode() if server.forward_auth_secret is not None else None
    )
    public = server.forward_auth_secret is not None and not server.forward_auth_listener
    _routes(app, prefix, verify if public else not_served)


def listener_app(app: web.Application) -> web.Application:
    """The application of the forward-auth listener: /verify* and nothing else (any other path: 404),
    on the main application's state (store, sessions, sites: one of each per process). Built when the
    main application starts, once that state is complete."""
    listener = web.Application(middlewares=[request_rules(None)])
    for key, value in app.items():
        listener[key] = value
    _routes(listener, app[keys.CONFIG].server.prefix, verify)
    return listener
