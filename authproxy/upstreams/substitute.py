"""Placeholders: what a browser holds instead of an upstream token (pure: no aiohttp, no I/O).

Some upstream UIs must see *a* token (Technitium keeps one in localStorage and sends it back on every
call). The browser gets a placeholder instead; the real credential always comes from the sealed session
that the HttpOnly cookie unlocks, so the placeholder never has to be looked up or trusted.

    placeholder = hex(HMAC-SHA256(ticket key, "authproxy-placeholder-v1" | site | kind | value))

* **Shape**: 64 lower-case hex characters, exactly like a Technitium token, so the UI accepts it.
* **Deterministic per (session, site)**: every answer in one session shows the same value, so a UI that
  compares or re-stores it stays consistent; a new session (new ticket key) gives a new value.
* **Worthless on its own**: the ticket key exists only in the person's cookie (never in the store), so the
  value cannot be recomputed from a store dump, says nothing about the real token, and a request that
  carries it without the cookie gets no credential at all.
* **Derived placeholders** stand in for *other* tokens an answer may carry (a single-use token, a freshly
  created API token): HMAC over the real value as well, so each one is distinct and stable.

`StreamReplacer` does the first half of that for answers too large to hold: the secret is replaced as
the body passes, across the upstream's write boundaries.

`rewrite_tokens` is the one body rewrite: every occurrence of the session's real token becomes the
session placeholder, then the token fields a JSON answer may carry (`token`, `response.token`) become
derived placeholders when they still hold something else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

CONTEXT = b"authproxy-placeholder-v1\x00"
TOKEN_FIELDS: tuple[tuple[str, ...], ...] = (("token",), ("response", "token"))
_TOKEN_KEY = b'"token"'
_HEX_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def _mac(key: bytes, *parts: str) -> str:
    message = CONTEXT + b"\x00".join(p.encode("utf-8", "surrogatepass") for p in parts)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def session_placeholder(key: bytes, site: str) -> str:
    """The placeholder for the session's own token at `site` (key: the session's ticket key)."""
    return _mac(key, "session", site)


def derived_placeholder(key: bytes, site: str, real: str) -> str:
    """A placeholder for another token the upstream handed out in this session (single-use, API token)."""
    return _mac(key, "derived", site, real)


def replace_all(body: bytes, secret: str, replacement: str) -> bytes:
    """`body` with every occurrence of `secret` replaced (a no-op for empty or absent secrets)."""
    if not secret:
        return body
    raw = secret.encode()
    return body.replace(raw, replacement.encode()) if raw in body else body


class StreamReplacer:
    """Replace every occurrence of `secret` in a body that arrives in pieces.

    Holds back only a tail of what it has seen that could still grow into the secret (the longest
    suffix that is a prefix of it), so nothing that could be a split secret goes out, and a piece
    that ends otherwise (a server-sent event's blank line) goes out whole at once.
    A same-length replacement keeps the body's length (and its Content-Length) unchanged.
    """

    __slots__ = ("_first", "_held", "_keep", "_replacement", "_secret")

    def __init__(self, secret: str, replacement: str) -> None:
        if not secret:
            raise ValueError("StreamReplacer needs a non-empty secret")
        self._secret = secret.encode()
        self._first = self._secret[:1]
        self._replacement = replacement.encode()
        self._keep = len(self._secret) - 1
        self._held = b""

    @property
    def keeps_length(self) -> bool:
        return len(self._secret) == len(self._replacement)

    def feed(self, data: bytes) -> bytes:
        """What may go out now, the secret replaced in it (as bytes.replace would on the whole body)."""
        buf = self._held + data if self._held else data
        limit = len(buf) - self._keep   # a match starting before here lies in `buf` whole
        secret = self._secret
        parts: list[bytes] = []
        pos = 0
        found = buf.find(secret)
        while found != -1 and found < limit:
            parts += (buf[pos:found], self._replacement)
            pos = found + len(secret)
            found = buf.find(secret, pos)
        cut = self._partial_start(buf, max(pos, limit))
        parts.append(buf[pos:cut])
        self._held = buf[cut:]
        return b"".join(parts)

    def _partial_start(self, buf: bytes, start: int) -> int:
        """Where the tail that is a proper prefix of the secret begins (len(buf) when there is none)."""
        secret = self._secret
        at = buf.find(self._first, start)
        while at != -1:
            if secret.startswith(buf[at:]):
                return at
            at = buf.find(self._first, at + 1)
        return len(buf)

    def flush(self) -> bytes:
        """The held-back tail at the end of the body (too short to hold the secret)."""
        held, self._held = self._held, b""
        return held


class ReplacerChain:
    """Several StreamReplacers one after the other (a secret as written, and as a URL spells it)."""

    __slots__ = ("_links",)

    def __init__(self, links: Sequence[StreamReplacer]) -> None:
        self._links = tuple(links)

    @property
    def keeps_length(self) -> bool:
        return all(link.keeps_length for link in self._links)

    def feed(self, data: bytes) -> bytes:
        for link in self._links:
            data = link.feed(data)
        return data

    def flush(self) -> bytes:
        out = b""
        for link in self._links:
            out = link.feed(out) + link.flush()
        return out


def url_spellings(value: str) -> list[str]:
    """`value` as written, as URL encoders write it (`/` kept or escaped, upper- or lower-case hex) and
    as JSON encoders escape it (`\\/` from PHP, `\\u002B` from .NET), the raw form first. A page or
    an answer that echoes its URL holds one of these."""
    out = [value]
    for safe in ("", "/"):
        encoded = quote(value, safe=safe)
        for spelled in (encoded, _HEX_ESCAPE.sub(lambda m: m.group(0).lower(), encoded)):
            if spelled not in out:
                out.append(spelled)
    for spelled in (value.replace("/", "\\/"), value.replace("+", "\\u002B"),
                    value.replace("/", "\\/").replace("+", "\\u002B")):
        if spelled not in out:
            out.append(spelled)
    return out


def scrubber(secret: str, replacement: str) -> StreamReplacer | ReplacerChain:
    """Replace `secret` in every spelling (one replacer when it has nothing to escape, as tokens of
    hex or base64url do). A same-length replacement stays same-length for every spelling (repeated
    to fit), so the body's length holds."""
    spellings = url_spellings(secret)
    if len(spellings) == 1:
        return StreamReplacer(secret, replacement)
    same_length = bool(replacement) and len(replacement) == len(secret)

    def stand_in(spelled: str) -> str:
        if spelled == secret:
            return replacement
        if same_length:
            return (replacement * (len(spelled) // len(replacement) + 1))[:len(spelled)]
        return quote(replacement, safe="")

    return ReplacerChain([StreamReplacer(spelled, stand_in(spelled)) for spelled in spellings])


def _get(obj: Any, path: Sequence[str]) -> Any:
    for name in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj


def _set(obj: Any, path: Sequence[str], value: str) -> None:
    for name in path[:-1]:
        obj = obj[name]
    obj[path[-1]] = value


def rewrite_tokens(body: bytes, *, key: bytes, site: str, real: str | None,
                   fields: Iterable[tuple[str, ...]] = TOKEN_FIELDS) -> bytes:
    """The answer as the browser may see it: no real token left, placeholders in their place.

    `real` is the session's own token at `site` (None when the session holds none). Bodies that are not
    JSON objects are only scanned for `real`; JSON is re-serialised only when a field had to change.
    """
    own = session_placeholder(key, site)
    body = replace_all(body, real or "", own)
    if _TOKEN_KEY not in body:
        return body
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    if not isinstance(doc, dict):
        return body
    changed = False
    for path in fields:
        value = _get(doc, path)
        if not isinstance(value, str) or not value or value == own:
            continue
        _set(doc, path, derived_placeholder(key, site, value))
        changed = True
    if not changed:
        return body
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
