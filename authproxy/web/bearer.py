"""`Authorization: Bearer <JWT>` on a request without a session: the proxy and forward auth ask
`bearer_credential` and nothing else (login/tokens.py checks the token, the site's policy says what
the upstream is sent: the service credential in AUTH_MODE=otp; the JWT itself never goes upstream).
A local account's token at a local site stands for that account as it is now (`_local`), and then
meets the same role and key gate as its cookie (web/local.py). A token minted by a person signed in
with an upstream's own account carries the key (`ck`) of its sealed copy of that person's upstream
credentials (web/tokens_api.py): at a site it holds one for, that credential is the upstream's, and when
the upstream ends it the copy goes too (proxy/common.py `credential_died`).

Only reached when no person's session answered for the site. In AUTH_MODE=otp the bearer is *the* way
for a script in, so the header is read strictly and every problem is named (`Missing authorization
header`, `Invalid authorization header`, `Invalid or expired token`); in the other modes a value that is
no JWT may be a UI's own header or an API key, and is left to the rest of the chain.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web

from authproxy import authz, keys
from authproxy.accounts import claims as local_claims
from authproxy.errors import StoreError
from authproxy.log import audit
from authproxy.login.tokens import CLOCK_SKEW, JwtTokens, TokenClaims, TokenError
from authproxy.routing import Site
from authproxy.sessions.model import Credential, Session
from authproxy.web.common import SECURITY_HEADERS, client_ip, json_error

MISSING = "Missing authorization header"
INVALID_HEADER = "Invalid authorization header"
INVALID_TOKEN = "Invalid or expired token"
_BEARER = re.compile(r"Bearer ([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)")


def missing() -> web.Response:
    return json_error(401, "missing_authorization", MISSING)


def invalid_header() -> web.Response:
    return json_error(401, "invalid_authorization", INVALID_HEADER)


def invalid_token() -> web.Response:
    return json_error(401, "invalid_token", INVALID_TOKEN)


def presented(request: web.Request, tokens: JwtTokens) -> str | web.Response | None:
    """The JWT the request presents; the 401 for a malformed header in AUTH_MODE=otp; None when it
    presents none, or, outside AUTH_MODE=otp, none that authproxy signed (by its `kid`): an app behind
    authproxy may use Bearer JWTs of its own, and a UI its own placeholder or an API key."""
    values = request.headers.getall("Authorization", ())
    if not values:
        return None
    strict = request.app[keys.CONFIG].auth_mode == "otp"
    match = _BEARER.fullmatch(values[0]) if len(values) == 1 else None
    if strict:
        return match.group(1) if match is not None else invalid_header()
    return match.group(1) if match is not None and tokens.ours(match.group(1)) else None


async def claims_of(request: web.Request) -> TokenClaims | web.Response | None:
    """The verified claims of the request's bearer JWT; the 401 to answer; None: no JWT presented.
    503 when revocations cannot be read (fail closed)."""
    tokens = request.app[keys.TOKENS]
    if tokens is None:
        return None
    token = presented(request, tokens)
    if token is None or isinstance(token, web.Response):
        return token
    try:
        claims = await tokens.verify(token)
    except TokenError:
        return invalid_token()
    except StoreError:
        return json_error(503, "store_unavailable", "The session store is not answering; try again soon.")
    request[keys.BEARER] = claims
    return claims


def _address(client_ip: str | Callable[[], str]) -> str:
    return client_ip if isinstance(client_ip, str) else client_ip()


async def bearer_credential(
    request: web.Request, site: Site, *, client_ip: str | Callable[[], str], method: str, path: str
) -> tuple[Credential | None, web.Response | None]:
    """(credential, None) for a valid JWT the site serves; (None, answer) when refused; (None, None)
    when the request carries no JWT (an anonymous one). `client_ip` (or how to find it) is for the
    audit lines only, so a served request in AUTH_MODE=otp never works it out."""
    found = await claims_of(request)
    if found is None or isinstance(found, web.Response):
        return None, found
    if site.config.local_accounts and found.method == local_claims.KIND:
        return await _local(request, site, found, client_ip=client_ip, method=method, path=path)
    if found.ck:
        own, refused = await _own(request, site, found, client_ip=client_ip, method=method, path=path)
        if own is not None or refused is not None:
            return own, refused
    credential = site.policy.for_token(found.roles)
    if credential is None:
        audit("token_request", outcome="not_served", user=found.sub, site=site.name,
              client_ip=_address(client_ip), method=method, path=path)
        return None, json_error(403, "token_not_served",
                                f"A token does not carry what {site.name}'s upstream needs; sign in there.")
    if request.app[keys.CONFIG].auth_mode == "hybrid":
        # A token with the `service` role is a service client: the same privilege check and audit line.
        fields = {"actor": "service", "user": found.sub, "via": "jwt", "site": site.name,
                  "client_ip": _address(client_ip), "method": method, "path": path}
        if not request.app[keys.BACKGROUND].usable(site.name):
            audit("service_request", outcome="service_credential_unsafe", **fields)
            return None, json_error(503, "service_credential_unsafe",
                                    f"{site.name}'s service token failed its privilege check; see /me.")
        audit("service_request", outcome="allowed", **fields)
    return credential, None


async def _own(
    request: web.Request, site: Site, found: TokenClaims, *, client_ip: str | Callable[[], str], method: str,
    path: str
) -> tuple[Credential | None, web.Response | None]:
    """The token holder's own upstream credential for the site, opened with the token's `ck`; (None,
    None) when it holds none for this site (the site's policy decides); 401 when its copy is gone
    (revoked, ended by the upstream) or does not open (a `ck` not the one it was sealed under)."""
    tokens = request.app[keys.TOKENS]
    assert tokens is not None
    try:
        held = await tokens.credentials(found)
    except StoreError:
        return None, json_error(503, "store_unavailable",
                                "The session store is not answering; try again soon.")
    if held is None:
        audit("token_request", outcome="credentials_gone", user=found.sub, site=site.name,
              client_ip=_address(client_ip), method=method, path=path)
        return None, invalid_token()
    data = held.get(site.name)
    if not isinstance(data, dict):
        return None, None
    request[keys.TOKEN_CREDENTIAL] = found
    return Credential.from_dict(data), None


async def _local(
    request: web.Request, site: Site, found: TokenClaims, *, client_ip: str | Callable[[], str], method: str,
    path: str
) -> tuple[Credential | None, web.Response | None]:
    """A local account's token at a local site: the account as it is *now* (a disabled, deleted or
    re-created account's tokens are refused; a lowered role or fewer keys apply at once), shaped as the
    session its holder would have, for the same allow lists and, after this, the same role and key gate
    (web/local.py) as their cookie."""
    try:
        account = await request.app[keys.ACCOUNTS].by_name(found.sub)
    except StoreError:
        return None, json_error(503, "store_unavailable",
                                "The session store is not answering; try again soon.")
    if account is None or account.disabled or account.created_at > found.iat + CLOCK_SKEW:
        audit("token_request", outcome="account_unusable", user=found.sub, site=site.name,
              client_ip=_address(client_ip), method=method, path=path)
        return None, invalid_token()
    marker = local_claims.credential_for(account)
    session = Session(user=account.username, site=site.name, identity=local_claims.identity_for(account),
                      credentials={site.name: marker}, auth_method=local_claims.KIND)
    if authz.decide(session, site.config, session_mode=True) != "allow":
        audit("token_request", outcome="forbidden", user=found.sub, site=site.name,
              client_ip=_address(client_ip), method=method, path=path)
        return None, json_error(403, "forbidden", f"This account may not use {site.name}.")
    request[keys.LOCAL_BEARER] = session
    request[keys.BEARER] = replace(found, roles=(account.role,))   # what the upstream is told: the role now
    return site.policy.credential(session, site.name), None


async def bearer_logout(request: web.Request) -> web.StreamResponse | None:
    """`POST .../logout` with a bearer JWT: that token's `jti` is refused on every replica until it
    expires. None when the request carries no JWT (a cookie sign-out)."""
    if request.app[keys.TOKENS] is None or "Authorization" not in request.headers:
        return None
    found = await claims_of(request)
    if found is None:
        return None
    if isinstance(found, web.Response):
        return found
    await revoke(request, found)
    return web.json_response({"authenticated": False, "loggedOut": True, "revoked": True},
                             headers=SECURITY_HEADERS)


async def revoke(request: web.Request, claims: TokenClaims) -> None:
    tokens = request.app[keys.TOKENS]
    assert tokens is not None
    await tokens.revoke(claims)
    audit("token_revoked", outcome="success", user=claims.sub, client_ip=client_ip(request),
          token=claims.jti[:8])


async def revoke_all(request: web.Request, user: str) -> int:
    """Sign out everywhere: every live token minted for `user` is revoked too (with its sealed copy of
    their upstream credentials). The number revoked."""
    tokens = request.app[keys.TOKENS]
    if tokens is None:
        return 0
    found = await tokens.listed(user)
    for claims in found:
        await revoke(request, claims)
    return len(found)
