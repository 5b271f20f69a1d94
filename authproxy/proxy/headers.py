"""Pure header and query-string rules for forwarding (no aiohttp import: tested without sockets)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, MutableMapping
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

from multidict import CIMultiDict, MultiMapping

from authproxy.upstreams.query import query_pairs

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "proxy-connection",
})

# Headers that carry identity or forwarding facts: only authproxy may set them upstream.
IDENTITY_HEADERS = frozenset({
    "remote-user", "remote-groups", "remote-name", "remote-email", "x-forwarded-user", "x-forwarded-email",
    "x-forwarded-groups", "x-auth-request-user", "x-auth-request-email", "x-authproxy-token",
    "x-authproxy-user", "x-real-ip", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
    "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-uri", "x-forwarded-method", "x-original-url",
    "x-original-uri", "x-original-method", "forwarded", "x-real-remote-addr", "x-client-ip",
    # what CDNs and load balancers set, which some upstreams read before X-Real-IP (AdGuard: realIP)
    "cf-connecting-ip", "true-client-ip", "x-cluster-client-ip", "fastly-client-ip", "x-forwarded-server",
    "x-forwarded-scheme", "x-forwarded-ssl", "x-url-scheme", "front-end-https", "x-original-host",
    # FORWARD_AUTH_SECRET travels only from the front proxy to /verify; a proxy set up to add it to every
    # request must not hand it on to the upstream
    "x-authproxy-secret",
})


# Never forwarded upstream as the client sent them: hop-by-hop, identity/forwarding facts, Host.
_NOT_UPSTREAM = HOP_BY_HOP | IDENTITY_HEADERS | {"host"}
# Never passed on from the upstream's answer: hop-by-hop; Server (what runs behind the gateway is
# nobody's business; every answer says `Server: authproxy`); Strict-Transport-Security (the public
# host's policy is authproxy's, set from HSTS_MAX_AGE: an upstream that speaks plain HTTP behind it
# cannot know, and one `includeSubDomains` from it would pin every host of the operator's domain).
_NOT_DOWNSTREAM = HOP_BY_HOP | {"server", "strict-transport-security"}


def connection_named(values: Iterable[str]) -> frozenset[str]:
    """The (lower-cased) header names a `Connection` header lists: hop-by-hop for this message only."""
    named = {token.strip().lower() for value in values for token in value.split(",")}
    named.discard("")
    return frozenset(named)


def upstream_request_headers(src: MultiMapping[str], *, drop_cookie: str) -> CIMultiDict[str]:
    """The client's headers as the upstream may see them, built in one pass (a proxy does this on
    every request): hop-by-hop (and what `Connection` names), identity and forwarding headers and Host
    dropped; the `drop_cookie` cookie removed from every Cookie header, the rest merged into one
    Cookie header at the end (empty → none)."""
    named = connection_named(src.getall("Connection", ())) if "Connection" in src else frozenset()
    out: CIMultiDict[str] = CIMultiDict()
    cookies: list[str] | None = None
    for name, value in src.items():
        low = name.lower()
        if low in _NOT_UPSTREAM or low in named:
            continue
        if "_" in low and low.replace("_", "-") in _NOT_UPSTREAM:
            continue  # Remote_User: CGI-style upstreams read it as Remote-User
        if low == "cookie":
            kept = cookie_without(value, (drop_cookie,))
            if kept:
                if cookies is None:
                    cookies = []
                cookies.append(kept)
            continue
        out.add(name, value)
    if cookies:
        out.add("Cookie", "; ".join(cookies))
    return out


def downstream_response_headers(src: MultiMapping[str], out: CIMultiDict[str], *,
                                drop_length: bool = False) -> None:
    """Copy the upstream's answer headers into `out` without hop-by-hop ones (nor what its `Connection`
    names), Server and Strict-Transport-Security, and without Content-Length when the body sent on is
    not the upstream's as-is."""
    named = connection_named(src.getall("Connection", ())) if "Connection" in src else frozenset()
    for name, value in src.items():
        low = name.lower()
        if low in _NOT_DOWNSTREAM or low in named or (drop_length and low == "content-length"):
            continue
        out.add(name, value)


@functools.lru_cache(maxsize=256)
def private_cache_control(value: str) -> str:
    """An upstream's Cache-Control as an answer made with one person's credential may carry it: no
    shared cache may keep it (RFC 9111 5.2.2.7). Kept as is when it says `no-store` or `private`;
    otherwise `public`, `s-maxage` and a `private` naming only some fields go, and `private` leads
    (`max-age` and the rest stay: the person's own browser may still cache). Few distinct values
    come from an upstream, so the answer is remembered per value."""
    directives = _directives(value)
    names = [d.partition("=")[0].strip().lower() for d in directives]
    pairs = list(zip(names, directives, strict=True))
    if "no-store" in names or any(n == "private" and "=" not in d for n, d in pairs):
        return value
    kept = [d for n, d in pairs if n not in ("public", "s-maxage", "private")]
    return ", ".join(["private", *kept])


def _directives(value: str) -> list[str]:
    """Comma-separated directives, commas inside a quoted string (`no-cache="a, b"`) kept."""
    out: list[str] = []
    start, quoted, escaped = 0, False, False
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append(value[start:i])
            start = i + 1
    out.append(value[start:])
    return [d.strip() for d in out if d.strip()]


def location_without(location: str, secret: str) -> str:
    """A redirect target without any query parameter carrying `secret`.

    Upstreams that take their credential in the query (Technitium v14, generic `inject.as = "query"`)
    echo the query back in redirects (ASP.NET's trailing-slash redirect keeps it): the injected
    token would then reach the browser in `Location`. Whatever the parameter is called, it goes.
    """
    if not secret or "?" not in location:
        return location
    parts = urlsplit(location)
    kept = [item for _, item in query_pairs(parts.query) if secret not in _spellings(item.partition("=")[2])]
    return urlunsplit(parts._replace(query="&".join(kept)))


def _spellings(value: str) -> tuple[str, ...]:
    """`value` as written and as a URL decoder may read it (an upstream re-encodes as it likes: `%2B`
    or `%2b`, `+` or `%20`, `/` or `%2F`)."""
    if "%" not in value and "+" not in value:
        return (value,)
    return (value, unquote(value), unquote_plus(value))


def carries(value: str, secret: str) -> bool:
    """Whether a header value holds `secret` in any URL spelling."""
    if not secret:
        return False
    if secret in value:
        return True
    if "%" in value:
        return secret in unquote(value) or ("+" in value and secret in unquote_plus(value))
    return "+" in value and secret in value.replace("+", " ")


def drop_carrying(headers: CIMultiDict[str], secret: str) -> None:
    """Remove every header value that holds `secret` (Content-Location, Refresh, Link, a reflected
    header...: whatever an upstream echoes its own URL or request into). Runs on every answer: the
    common case (no value holds it, nothing escaped) is one scan."""
    if not secret:
        return
    for value in headers.values():
        if secret in value or "%" in value or "+" in value:
            break
    else:
        return
    names = {name for name, value in headers.items() if carries(value, secret)}
    for name in names:
        kept = [v for v in headers.getall(name) if not carries(v, secret)]
        headers.popall(name)
        for value in kept:
            headers.add(name, value)


def cookie_without(cookie_header: str, names: Iterable[str]) -> str:
    """A Cookie header value without the named cookies (the rest kept verbatim)."""
    drop = set(names)
    kept = []
    for part in cookie_header.split(";"):
        item = part.strip()
        if not item:
            continue
        if item.split("=", 1)[0].strip() in drop:
            continue
        kept.append(item)
    return "; ".join(kept)


def set_forwarded(headers: MutableMapping[str, str], *, client_ip: str, proto: str, host: str) -> None:
    """Honest X-Forwarded-*/X-Real-IP: the client as authproxy determined it, nothing the client claimed
    (upstream_request_headers already dropped the client's own)."""
    headers["X-Forwarded-For"] = client_ip
    headers["X-Forwarded-Proto"] = proto
    headers["X-Forwarded-Host"] = host
    headers["X-Real-IP"] = client_ip
