"""Pure header and query-string rules for forwarding (no aiohttp import: tested without sockets)."""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from urllib.parse import quote, unquote_plus

from multidict import CIMultiDict

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
})


def strip_hop_by_hop(headers: CIMultiDict[str]) -> None:
    """Remove hop-by-hop headers, including any the Connection header names."""
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(token.strip().lower() for token in value.split(",") if token.strip())
    for name in list(headers.keys()):
        low = name.lower()
        if low in HOP_BY_HOP or low in named:
            headers.popall(name, None)


def strip_names(headers: CIMultiDict[str], names: Iterable[str]) -> None:
    for name in names:
        headers.popall(name, None)


def query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """(raw_name, raw_pair) for each `&`-separated item, keeping the original encoding."""
    out: list[tuple[str, str]] = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name = item.split("=", 1)[0]
        out.append((name, item))
    return out


def query_without(raw_query: str, names: Iterable[str]) -> str:
    """The query with every parameter in `names` (decoded, case-insensitive) removed, rest untouched."""
    drop = {n.lower() for n in names}
    if not raw_query:
        return raw_query
    kept = [item for name, item in query_pairs(raw_query) if unquote_plus(name).lower() not in drop]
    return "&".join(kept)


def query_with(raw_query: str, name: str, value: str) -> str:
    pair = f"{quote(name, safe='')}={quote(value, safe='')}"
    return f"{raw_query}&{pair}" if raw_query else pair


def query_value(raw_query: str, name: str) -> str | None:
    """The first decoded value of `name` (case-insensitive), or None."""
    low = name.lower()
    for raw_name, item in query_pairs(raw_query):
        if unquote_plus(raw_name).lower() == low:
            return unquote_plus(item.split("=", 1)[1]) if "=" in item else ""
    return None


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


def set_forwarded(headers: MutableMapping[str, str], *, client_ip: str, proto: str, host: str,
                  prior_for: str | None = None) -> None:
    """Honest X-Forwarded-*/X-Real-IP: the client as authproxy determined it, nothing the client claimed."""
    headers["X-Forwarded-For"] = f"{prior_for}, {client_ip}" if prior_for else client_ip
    headers["X-Forwarded-Proto"] = proto
    headers["X-Forwarded-Host"] = host
    headers["X-Real-IP"] = client_ip


def has_crlf(value: str) -> bool:
    return "\r" in value or "\n" in value or "\x00" in value
