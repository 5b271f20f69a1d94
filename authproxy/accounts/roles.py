"""Which role a request needs at a local-accounts site: pure, from the site's `LocalRules`.

    viewer  reads: the site's read methods (GET, HEAD, OPTIONS by default), its read paths whatever the
            method, and JSON-RPC calls whose every method is a listed read
    editor  everything else the upstream offers
    admin   everything, plus authproxy's account, key and session management

So the same three roles serve a REST upstream (methods) and a JSON-RPC one (method names in the body).
"""

from __future__ import annotations

import json

from authproxy.config.schema import LocalRules

RPC_PEEK = 64 * 1024   # a JSON-RPC body longer than this is not read: it needs the editor role


def needed_role(rules: LocalRules, method: str, upstream_path: str, rpc_methods: list[str] | None) -> str:
    if method.upper() in rules.read_methods:
        return "viewer"
    if any(_under(upstream_path, p) for p in rules.read_paths):
        return "viewer"
    if rpc_methods and rules.read_rpc_methods and all(m in rules.read_rpc_methods for m in rpc_methods):
        return "viewer"
    return "editor"


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/") or (
        prefix.endswith("/") and path.startswith(prefix))


def rpc_methods(body: bytes) -> list[str] | None:
    """The method names of a JSON-RPC call or batch; None when the body is not one (then it is a write)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    calls = data if isinstance(data, list) else [data]
    names = [c.get("method") for c in calls if isinstance(c, dict)]
    if not calls or len(names) != len(calls) or not all(isinstance(n, str) for n in names):
        return None
    return [str(n) for n in names]


def wants_rpc_peek(rules: LocalRules, method: str, content_type: str) -> bool:
    """Whether the body must be read to decide: a POST of JSON where some RPC methods are reads."""
    return (bool(rules.read_rpc_methods) and method.upper() == "POST"
            and content_type.split(";", 1)[0].strip().lower() in ("application/json", "application/json-rpc"))
