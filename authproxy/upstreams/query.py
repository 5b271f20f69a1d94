"""Query-string rules for adapters that take or must strip a credential in the query (pure: no aiohttp).

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


def query_without(raw_query: str, names: Iterable[str]) -> str:
    """The query with every parameter in `names` (decoded, case-insensitive) removed, rest untouched."""
    if not raw_query:  # most requests: nothing to take out, and this runs on every one
        return raw_query
    drop = {n.lower() for n in names}
    kept = [item for name, item in query_pairs(raw_query) if unquote_plus(name).lower() not in drop]
    return "&".join(kept)


def query_with(raw_query: str, name: str, value: str) -> str:
    pair = f"{quote(name, safe='')}={quote(value, safe='')}"
    return f"{raw_query}&{pair}" if raw_query else pair
