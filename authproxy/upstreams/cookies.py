"""Cookie rules shared by the adapters of cookie-session UIs (pure: no aiohttp import).

Upstream session cookies live only in the sealed session. On the way up the client's copies are
removed before authproxy adds its own; on the way down the upstream's `Set-Cookie`s for them are
dropped (Pi-hole and qBittorrent re-send theirs on every answer).

Names match exactly (cookie names are case-sensitive); `prefixes` catch families such as
qBittorrent 5.2's `QBT_SID_<port>`.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict


def _matches(name: str, names: Iterable[str], prefixes: Iterable[str]) -> bool:
    return name in set(names) or any(name.startswith(p) for p in prefixes)


def set_cookie_name(value: str) -> str:
    """The cookie name a `Set-Cookie` value sets."""
    return value.split(";", 1)[0].split("=", 1)[0].strip()


def request_cookies(headers: CIMultiDict[str]) -> list[tuple[str, str]]:
    """(name, value) of every cookie in the request's Cookie headers, in order."""
    out: list[tuple[str, str]] = []
    for header in headers.getall("Cookie", ()):
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name:
                out.append((name.strip(), value.strip()))
    return out


def strip_request_cookies(
    headers: CIMultiDict[str], names: Iterable[str], prefixes: Iterable[str] = ()
) -> None:
    """Remove the named cookies from the Cookie header(s); other cookies are kept verbatim, in one header."""
    names, prefixes = set(names), tuple(prefixes)
    kept = []
    for header in headers.getall("Cookie", ()):
        for part in header.split(";"):
            item = part.strip()
            if not item:
                continue
            if _matches(item.split("=", 1)[0].strip(), names, prefixes):
                continue
            kept.append(item)
    headers.popall("Cookie", None)
    if kept:
        headers["Cookie"] = "; ".join(kept)


def add_request_cookie(headers: CIMultiDict[str], name: str, value: str) -> None:
    """Put `name=value` first in the Cookie header (call strip_request_cookies for `name` before)."""
    rest = headers.get("Cookie")
    headers["Cookie"] = f"{name}={value}; {rest}" if rest else f"{name}={value}"


def drop_set_cookies(headers: CIMultiDict[str], names: Iterable[str], prefixes: Iterable[str] = ()) -> None:
    """Remove every `Set-Cookie` that sets one of the named cookies; the others stay in order."""
    names, prefixes = set(names), tuple(prefixes)
    values = headers.getall("Set-Cookie", ())
    kept = [v for v in values if not _matches(set_cookie_name(v), names, prefixes)]
    if len(kept) == len(values):
        return
    headers.popall("Set-Cookie", None)
    for v in kept:
        headers.add("Set-Cookie", v)
