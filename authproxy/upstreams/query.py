"""Query-string and form-field-name rules for adapters that take or must strip a credential in the query
or a form body (pure: no aiohttp).

The query stays percent-encoded exactly as the client sent it: one parameter is dropped or added
without re-encoding the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, unquote_plus


def query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """(raw_name, raw_pair) for each `&`-separated item, keeping the original encoding."""
    out: list[tuple[str, str]] = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name = item.split("=", 1)[0]
        out.append((name, item))
    return out


class FieldNames:
    """Request field names that must not come from the client (the credential's), matched as any
    upstream parser may read a raw name: `+`/`%XX`-decoded as UTF-8 or as Latin-1 (or not at all),
    raw UTF-8 read as such, surrounding whitespace ignored, in any case, both ways of folding it
    (`ı`/`ſ` upper-case to `I`/`S` as .NET's OrdinalIgnoreCase does, `K` (Kelvin) lower-cases to `k`).
    Over-inclusive on purpose: a name that merely could read as a credential name is one."""

    __slots__ = ("longest", "lower", "upper")

    def __init__(self, names: Iterable[str]) -> None:
        listed = [n for n in names if n]
        self.lower = frozenset(n.lower() for n in listed)
        self.upper = frozenset(n.upper() for n in listed)
        self.longest = max((len(n) for n in listed), default=0)

    def __bool__(self) -> bool:
        return bool(self.lower)

    def __contains__(self, raw_name: object) -> bool:
        if not isinstance(raw_name, str) or not self.lower:
            return False
        if (
            raw_name.isascii()
            and "%" not in raw_name
            and "+" not in raw_name
            and raw_name.strip() == raw_name
        ):
            return raw_name.lower() in self.lower   # the common case: one spelling only
        return any(r.lower() in self.lower or r.upper() in self.upper for r in _readings(raw_name))


def _readings(raw: str) -> set[str]:
    texts = {raw}
    if not raw.isascii():
        try:  # raw bytes held as Latin-1 (a body): as UTF-8, which is how most parsers read them
            texts.add(raw.encode("latin-1").decode("utf-8", "replace"))
        except UnicodeEncodeError:
            pass
    out: set[str] = set()
    for text in texts:
        out.add(text)
        if "%" in text or "+" in text:
            out.add(unquote_plus(text, encoding="utf-8", errors="replace"))
            out.add(unquote_plus(text, encoding="latin-1"))
    return out | {r.strip() for r in out}


def query_without(raw_query: str, names: FieldNames | Iterable[str]) -> str:
    """The query with every parameter in `names` (as FieldNames reads them) removed, rest untouched."""
    if not raw_query:  # most requests: nothing to take out, and this runs on every one
        return raw_query
    drop = names if isinstance(names, FieldNames) else FieldNames(names)
    return "&".join(item for name, item in query_pairs(raw_query) if name not in drop)


def query_with(raw_query: str, name: str, value: str) -> str:
    pair = f"{quote(name, safe='')}={quote(value, safe='')}"
    return f"{raw_query}&{pair}" if raw_query else pair
