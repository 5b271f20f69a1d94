"""Tokens for scripts, minted by people who signed in (a one-time code, an upstream account, ...):

    POST   {prefix}/api/auth/tokens  {"name", "expiresIn"}  -> 201 {"token", "expires_at", "jti", "name"}
    GET    {prefix}/api/auth/tokens                          -> {"tokens": [...]} (yours; an admin: all)
    DELETE {prefix}/api/auth/tokens/{jti}                    -> {"revoked": true} (yours; an admin: any)

Only a session (the cookie) may mint, list or revoke: a token never mints a longer-lived one. A token
carries the person's roles without `service` (that role is configuration's to give, not a person's),
and `expiresIn` is bounded by JWT_MAX_EXPIRATION_HOURS. What the upstream is sent for a token is the
site's policy (policy.py `for_token`), or, for a person signed in with an upstream's own account, a
copy of that person's upstream credentials taken at mint: sealed in the store under a fresh key that
only the token carries (its `ck` claim), kept until the token expires, revoked or the upstream ends it.
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

from authproxy import crosssite, keys
from authproxy.accounts.claims import KIND as LOCAL_KIND
from authproxy.config.loader import parse_duration
from authproxy.crypto import b64e
from authproxy.errors import AuthError
from authproxy.log import audit
from authproxy.login.tokens import JwtTokens, TokenClaims, rfc3339
from authproxy.policy import OTP_KIND
from authproxy.sessions.manager import LoadedSession
from authproxy.web.api import _read_login
from authproxy.web.bearer import revoke
from authproxy.web.common import SECURITY_HEADERS, client_ip, current_session, json_error

ADMIN_ROLES = frozenset({"admin", "administrators"})
MAX_NAME = 64


def is_admin(loaded: LoadedSession) -> bool:
    return bool(ADMIN_ROLES & {g.lower() for g in loaded.session.identity.groups})


async def _caller(request: web.Request) -> tuple[JwtTokens, LoadedSession]:
    tokens = request.app[keys.TOKENS]
    if tokens is None:
        raise AuthError("JWTs are not configured; set JWT_SECRET.", code="not_available", status=404)
    if request.method != "GET" and crosssite.from_other_site(request):
        raise AuthError("Cross-site request refused.", code="cross_site", status=403)
    loaded = await current_session(request)
    if loaded is None:
        raise AuthError("Sign in first (tokens are minted with a session, not with a token).",
                        code="unauthenticated", status=401)
    return tokens, loaded


def _lifetime(value: object, longest: float) -> float:
    seconds = parse_duration(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) \
        else None
    if seconds is None or seconds < 60:
        raise AuthError("`expiresIn` must be seconds or a duration (3600, 12h, 30d), at least a minute.",
                        code="bad_request", status=400)
    if seconds > longest:
        raise AuthError(f"`expiresIn` may be at most {round(longest / 3600)} hours "
                        "(JWT_MAX_EXPIRATION_HOURS).", code="bad_request", status=400)
    return seconds


def _facts(claims: TokenClaims) -> dict[str, Any]:
    return {"jti": claims.jti, "name": claims.name, "user": claims.sub, "roles": list(claims.roles),
            "issued_at": rfc3339(claims.iat), "expires_at": rfc3339(claims.exp), "method": claims.method}


async def mint(request: web.Request) -> web.StreamResponse:
    try:
        tokens, loaded = await _caller(request)
        data, _ = await _read_login(request, fields='"name" and "expiresIn"')
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME or not name.isprintable():
            raise AuthError(f"`name` must be a label of 1 to {MAX_NAME} characters.", code="bad_request",
                            status=400)
        ttl = _lifetime(data.get("expiresIn", tokens.config.expiration), tokens.config.max_expiration)
    except AuthError as exc:
        return json_error(exc.status, exc.code, str(exc))
    session = loaded.session
    roles = [g for g in session.identity.groups if g.lower() != "service"]
    # The person's own upstream credentials (never a service's, an OTP box's or a local sign-in's marker).
    own = {site: c.to_dict() for site, c in session.credentials.items()
           if c.actor == "user" and c.kind not in (OTP_KIND, LOCAL_KIND)}
    key = os.urandom(32) if own else b""
    token, claims = tokens.mint(session.user, roles, ttl=ttl, name=name.strip(), method=session.auth_method,
                                ck=b64e(key) if own else "")
    await tokens.record(claims)
    if own:
        await tokens.keep_credentials(claims, key, own)
    audit("token_minted", outcome="success", user=session.user, client_ip=client_ip(request),
          token=claims.jti[:8], name=claims.name)
    return web.json_response({"token": token, "expires_at": rfc3339(claims.exp), "jti": claims.jti,
                              "name": claims.name}, status=201, headers=SECURITY_HEADERS)


async def listed(request: web.Request) -> web.StreamResponse:
    try:
        tokens, loaded = await _caller(request)
    except AuthError as exc:
        return json_error(exc.status, exc.code, str(exc))
    found = await tokens.listed(None if is_admin(loaded) else loaded.session.user)
    return web.json_response({"tokens": [_facts(c) for c in found]}, headers=SECURITY_HEADERS)


async def revoked(request: web.Request) -> web.StreamResponse:
    try:
        tokens, loaded = await _caller(request)
    except AuthError as exc:
        return json_error(exc.status, exc.code, str(exc))
    claims = await tokens.find(request.match_info["jti"])
    if claims is None or (claims.sub != loaded.session.user and not is_admin(loaded)):
        return json_error(404, "unknown_token", "No such token of yours.")
    await revoke(request, claims)
    return web.json_response({"revoked": True, "jti": claims.jti}, headers=SECURITY_HEADERS)


def setup(app: web.Application, prefix: str) -> None:
    app.router.add_post(f"{prefix}/api/auth/tokens", mint)
    app.router.add_get(f"{prefix}/api/auth/tokens", listed)
    app.router.add_delete(f"{prefix}/api/auth/tokens/{{jti}}", revoked)
