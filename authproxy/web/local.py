"""The local-accounts gate of a request, for the proxy and for forward auth alike.

For a site signed in to with authproxy's own accounts, after the session check:

1. a password that must be changed first: `403 password_change_required`;
2. the role the request needs (accounts/roles.py) against the session's: `403 insufficient_permissions`
   naming the role that would be needed;
3. the key the request names (the upstream's own header such as `x-dns-key-name`, a query parameter, or
   a zone -> key map), against the person's `allowedKeyIds` (admins: every key):
   `403 key_access_denied` naming the key. The client's key material is always stripped; the real
   secret is injected in the headers the upstream expects.

A request that names its key twice (two headers, or a header and the query) must name the same key,
else it is refused: the upstream could read the other one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy import keys
from authproxy.accounts import claims, roles
from authproxy.accounts.model import Resource, at_least
from authproxy.bodies import read_up_to
from authproxy.config.schema import LocalRules
from authproxy.log import audit
from authproxy.routing import Site
from authproxy.sessions.model import Session
from authproxy.upstreams.query import query_without
from authproxy.web.common import SECURITY_HEADERS, client_ip, error_response, json_error, wants_html

MAX_KEY_NAME = 128
READERS = frozenset({"viewer", "editor", "admin"})   # every role reads


@dataclass(frozen=True, slots=True)
class Passed:
    """The gate let the request through, with the key (if any) to inject, and the start of the body
    when it was read to find JSON-RPC method names (it must go upstream before the rest)."""

    key: Resource | None
    head: bytes | None = None


NO_KEY = Passed(None)


def plain_read(site: Site, session: Session, method: str) -> bool:
    """The common case, decided without building anything: a read method, by anyone with a role, at a
    site whose requests name no keys. (Every check of such a site pays this; bench/verify.py (g).)"""
    rules = site.config.local
    if rules.strip_headers or rules.key_param or method not in rules.read_methods:
        return False
    credential = session.credentials.get(site.name)
    if credential is None or credential.kind != claims.KIND:
        return False
    data = credential.extra.get(claims.CLAIM)
    return isinstance(data, dict) and data.get("role") in READERS and data.get("mustChange") is not True


def password_change_required(request: web.Request) -> web.Response:
    """403 for scripts; a browser's page load goes to the change-password page, and back after."""
    prefix = request.app[keys.CONFIG].server.prefix
    if wants_html(request) and request.method in ("GET", "HEAD"):
        back = quote(request.rel_url.raw_path_qs if request.path.startswith("/") else "/", safe="")
        return web.Response(status=303,
                            headers={**SECURITY_HEADERS, "Location": f"{prefix}/password?rd={back}"})
    return json_error(403, "password_change_required",
                      "Change your password first: POST {\"currentPassword\", \"newPassword\"} to "
                      f"{prefix}/api/auth/change-password.")


def _named_keys(rules: LocalRules, headers: CIMultiDictProxy[str] | CIMultiDict[str],
                raw_query: str) -> set[str] | None:
    """Every key name the request gives (None: it names none)."""
    names: set[str] = set()
    if rules.key_header:
        names.update(v.strip() for v in headers.getall(rules.key_header, ()))
    pairs = parse_qsl(raw_query, keep_blank_values=True) if (rules.key_param or rules.zone_param) else []
    if rules.key_param:
        names.update(v.strip() for k, v in pairs if k == rules.key_param)
    if rules.zone_param and rules.zone_keys:
        zones = dict(rules.zone_keys)
        for k, v in pairs:
            if k == rules.zone_param:
                zone = v.strip().lower().rstrip(".")
                # the zone itself or the nearest parent listed
                labels = zone.split(".")
                for i in range(len(labels)):
                    found = zones.get(".".join(labels[i:]))
                    if found is not None:
                        names.add(found)
                        break
    return names or None


async def gate_proxied(request: web.Request, site: Site,
                       session: Session) -> web.StreamResponse | Passed:
    """The gate for a request the proxy forwards: it may read the start of a JSON-RPC body."""
    head = None
    if request.body_exists and roles.wants_rpc_peek(site.config.local, request.method, request.content_type):
        head = await read_up_to(request.content, roles.RPC_PEEK + 1)
    passed = await gate(request, site, session, method=request.method.upper(),
                        upstream_path=lambda: site.upstream_path(request.rel_url.raw_path),
                        raw_query=request.rel_url.raw_query_string, headers=request.headers,
                        body_head=head if head is not None and len(head) <= roles.RPC_PEEK else None)
    return Passed(passed.key, head) if isinstance(passed, Passed) and head is not None else passed


async def gate(request: web.Request, site: Site, session: Session, *, method: str,
               upstream_path: Callable[[], str], raw_query: str, headers: CIMultiDictProxy[str],
               body_head: bytes | None = None) -> web.StreamResponse | Passed:
    """`session`: the person's, or the one a local account's JWT stands for (web/bearer.py `_local`).
    `upstream_path` is asked only when the site has read paths (on every check, its cost counts)."""
    rules = site.config.local
    claim = claims.claim(session, site.name)
    if claim is None:   # signed in here some other way: the site is local, so that cannot decide
        return error_response(request, 403, "forbidden", f"Sign in to {site.name} with an authproxy account.")
    if claim.must_change_password:
        return password_change_required(request)
    if method in rules.read_methods and claim.role in READERS:   # the common case, decided at once
        return (NO_KEY if not rules.uses_keys
                else await _key(request, site, session, claim, headers, raw_query))
    rpc = roles.rpc_methods(body_head) if body_head is not None else None
    needed = roles.needed_role(rules, method, upstream_path() if rules.read_paths else "", rpc)
    if not at_least(claim.role, needed):
        who = {"user": session.user, "site": site.name, "client_ip": client_ip(request)}
        audit("access", outcome="insufficient_permissions", required_role=needed, role=claim.role,
              method=method, **who)
        return json_error(403, "insufficient_permissions",
                          f"This needs the {needed} role; you are {claim.role}.", requiredRole=needed,
                          role=claim.role)
    if not rules.uses_keys:
        return NO_KEY
    return await _key(request, site, session, claim, headers, raw_query)


async def _key(request: web.Request, site: Site, session: Session, claim: claims.Claim,
               headers: CIMultiDictProxy[str], raw_query: str) -> web.StreamResponse | Passed:
    """The key the request names, if the person may use it (see the module docstring)."""
    rules = site.config.local
    who = {"user": session.user, "site": site.name, "client_ip": client_ip(request)}
    names = _named_keys(rules, headers, raw_query)
    if names is None:
        return NO_KEY
    if len(names) > 1:
        audit("key_use", outcome="ambiguous", **who)
        return json_error(403, "key_access_denied", "The request names more than one key; name one.",
                          key=None)
    name = next(iter(names))
    shown = name[:MAX_KEY_NAME]
    resource = (await request.app[keys.ACCOUNTS].find_key(name, site.name) if len(name) <= MAX_KEY_NAME
                else None)
    allowed = claim.allowed_key_ids
    if resource is None or not (claim.role == "admin" or resource.id in allowed or resource.name in allowed):
        audit("key_use", outcome="refused", key=shown, **who)
        return json_error(403, "key_access_denied", f"You may not use the key {shown!r}.", key=shown)
    return Passed(resource)


def strip_and_inject(rules: LocalRules, headers: CIMultiDict[str], raw_query: str,
                     key: Resource | None) -> str:
    """Remove every key header the client sent and the key parameter; add the real key's fields.
    Returns the query the upstream gets."""
    for name in rules.strip_headers:
        headers.popall(name, None)
    if rules.key_param:
        raw_query = query_without(raw_query, frozenset({rules.key_param}))
    if key is not None:
        for header, what in rules.inject:
            headers[header] = key.field_value(what)
    return raw_query


def injected_headers(rules: LocalRules, key: Resource | None) -> dict[str, str]:
    """What forward auth answers for the proxy to set over the client's: every key header, empty
    without a key (nginx then sends none)."""
    return {header: key.field_value(what) if key is not None else "" for header, what in rules.inject}


def user_fields(session: Session) -> dict[str, object]:
    """What the login and session answers add for a local account: `user` becomes the account
    object (`username` keeps the name), and whether the password must be changed first."""
    claim = claims.any_claim(session)
    if claim is None:
        return {}
    return {"success": True, "username": session.user,
            "user": {"id": claim.id, "username": claim.username, "role": claim.role,
                     "email": session.identity.email, "allowedKeyIds": list(claim.allowed_key_ids)},
            "passwordChangeRequired": claim.must_change_password}
