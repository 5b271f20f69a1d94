"""The endpoints of one-time codes and JWTs: request and verify a code, revoke a bearer token, the JWKS.

    POST {prefix}/api/auth/otp/request   {"username"?}          -> {"message": "OTP sent..."}
    POST {prefix}/api/auth/otp/verify    {"otp", "username"?}   -> {"token", "expires_at"} + cookie
    GET  {prefix}/.well-known/jwks.json                          -> the public signing keys
    POST /api/v1/auth/login, /api/v1/auth/verify                 -> the same two, with OTP_LEGACY_PATHS

`setup` builds the parts (login/otp.py, login/tokens.py, login/webhook.py, login/notices.py) on the
application, adds the token endpoints (web/tokens_api.py), and starts the revocation listener once the
store runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from authproxy import crosssite, keys
from authproxy.errors import AuthError
from authproxy.log import audit, audit_log
from authproxy.login.notices import Notices
from authproxy.login.otp import (
    DEFAULT_USER,
    ROLES,
    CodeRequest,
    DeliveryFailed,
    OneTimeCodes,
    parse_code,
    parse_username,
)
from authproxy.login.tokens import CHANNEL as TOKENS_CHANNEL
from authproxy.login.tokens import JwtTokens, record_key, rfc3339
from authproxy.login.webhook import webhook_for
from authproxy.policy import OTP_KIND
from authproxy.routing import Site
from authproxy.sessions.manager import LoadedSession
from authproxy.sessions.model import Credential, Identity
from authproxy.web import tokens_api
from authproxy.web.api import _read_login, safe_redirect, see_other, set_session_cookie
from authproxy.web.common import SECURITY_HEADERS, RequestSession, client_ip, current_session, json_error
from authproxy.web.otp_page import render_otp_login
from authproxy.web.portal import resolve_site

LEGACY_REQUEST = "/api/v1/auth/login"
LEGACY_VERIFY = "/api/v1/auth/verify"
DELIVERY_FAILED = "The code could not be delivered; try again later."


def _refused(exc: AuthError) -> web.Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return json_error(exc.status, exc.code, str(exc), headers=headers)


async def _fields(request: web.Request, codes: OneTimeCodes | None
                  ) -> tuple[OneTimeCodes, dict[str, Any], bool]:
    """The code endpoints' common guards, then the body (optional: no body is `{}`)."""
    if codes is None:
        raise AuthError("One-time codes need AUTH_MODE=otp.", code="not_available", status=404)
    if not request.secure:
        raise AuthError("Sign-in needs HTTPS; open this page over https://.", code="https_required",
                        status=400)
    if not request.body_exists or request.content_length == 0:
        return codes, {}, False
    data, form_post = await _read_login(request, fields='"username"')
    if form_post and crosssite.from_other_site(request):
        raise AuthError("Cross-site sign-in refused.", code="cross_site", status=403)
    return codes, data, form_post


def _form_answer(request: web.Request, data: dict[str, Any], *, status: int = 200, error: str = "",
                 notice: str = "", sent: bool = False, headers: dict[str, str] | None = None) -> web.Response:
    """The sign-in page again, for a plain form post (no script)."""
    rd = data.get("rd") if isinstance(data.get("rd"), str) else None
    given = data.get("username")
    username = given if isinstance(given, str) and given.isprintable() else DEFAULT_USER
    return render_otp_login(request, status=status, error=error, notice=notice, rd=rd, username=username,
                            sent=sent, headers=headers)


async def request_code(request: web.Request) -> web.StreamResponse:
    data: dict[str, Any] = {}
    form_post = False
    try:
        codes, data, form_post = await _fields(request, request.app[keys.OTP])
        message = await codes.request(CodeRequest(parse_username(data.get("username")), client_ip(request)))
    except AuthError as exc:
        if form_post:
            retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
            return _form_answer(request, data, status=exc.status, error=str(exc), headers=retry)
        return _refused(exc)
    except DeliveryFailed:
        if form_post:
            return _form_answer(request, data, status=502, error=DELIVERY_FAILED)
        return json_error(502, "otp_delivery_failed", DELIVERY_FAILED)
    if form_post:
        return _form_answer(request, data, notice=f"{message}. Enter the code below.", sent=True)
    return web.json_response({"message": message}, headers=SECURITY_HEADERS)


async def verify_code(request: web.Request) -> web.StreamResponse:
    tokens = request.app[keys.TOKENS]
    data: dict[str, Any] = {}
    form_post = False
    try:
        codes, data, form_post = await _fields(request, request.app[keys.OTP])
        username = parse_username(data.get("username"))
        code = parse_code(data.get("otp", data.get("code")))
        address = client_ip(request)
        identity = await codes.verify(username, code, address)
    except AuthError as exc:
        metrics = request.app.get(keys.METRICS)
        if metrics is not None and exc.code in ("invalid_otp", "too_many_attempts"):
            metrics.on_sign_in(_otp_sites(request, data)[0].name, exc.code)
        if form_post:
            retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
            return _form_answer(request, data, status=exc.status, error=str(exc), sent=True, headers=retry)
        return _refused(exc)
    assert tokens is not None  # AUTH_MODE=otp requires JWT keys (config/passwordless.py)
    token, claims = tokens.mint(identity.username, ROLES, method="otp")
    await tokens.record(claims)   # listed and revocable (web/tokens_api.py)
    rd = data.get("rd") if isinstance(data.get("rd"), str) else None
    try:
        loaded, cookie = await _open_session(request, identity, address, data)
    except AuthError as exc:   # signed out everywhere meanwhile (sessions/manager.py SessionRevoked)
        if form_post:
            return _form_answer(request, data, status=exc.status, error=str(exc), sent=True)
        return _refused(exc)
    audit("login", outcome="success", user=identity.username, site=loaded.session.site, client_ip=address,
          session=loaded.public_id, method="otp")
    metrics = request.app.get(keys.METRICS)
    if metrics is not None:
        metrics.on_sign_in(loaded.session.site, "success")
    response: web.StreamResponse
    if form_post:
        response = see_other(safe_redirect(request, rd))
    else:
        response = web.json_response({"token": token, "expires_at": rfc3339(claims.exp)},
                                     headers=SECURITY_HEADERS)
    set_session_cookie(request, response, cookie)
    return response


def _otp_sites(request: web.Request, data: dict[str, Any]) -> tuple[Site, list[Site]]:
    """The site a code signs in at (named, by the return URL, by host; else the first) and every site
    one-time codes open."""
    config = request.app[keys.CONFIG]
    sites = [s for s in request.app[keys.ROUTER].sites if config.otp_site(s.config)]
    rd = data.get("rd") if isinstance(data.get("rd"), str) else None
    named = resolve_site(request, data.get("site") if isinstance(data.get("site"), str) else None, rd)
    return (named if named is not None and named in sites else sites[0]), sites


async def _open_session(request: web.Request, identity: Identity, address: str,
                        data: dict[str, Any]) -> tuple[LoadedSession, str]:
    """A new session (the person's other sites kept, under the new id) with a marker for every site
    one-time codes sign in to: there, the site's policy sends the service credential."""
    site, sites = _otp_sites(request, data)
    manager = request.app[keys.SESSIONS]
    loaded, cookie = await manager.create(user=identity.username, site=site.name, identity=identity,
                                          credential=otp_marker(), client_ip=address, auth_method="otp")
    for other in sites:
        loaded.session.credentials.setdefault(other.name, otp_marker())
    previous = await current_session(request)
    if previous is not None:
        await manager.adopt(loaded, previous)
    elif len(sites) > 1:
        await manager.save(loaded)
    request[keys.SESSION] = RequestSession(loaded)
    return loaded, cookie


def otp_marker() -> Credential:
    """What a one-time code's sign-in holds for a site: no secret, only the proof (policy.OTP_KIND);
    `service` so nothing tries to sign it out upstream."""
    return Credential(secret="", kind=OTP_KIND, actor="service")


async def jwks(request: web.Request) -> web.StreamResponse:
    tokens = request.app[keys.TOKENS]
    if tokens is None:
        return json_error(404, "not_found", "No JWT signing keys are configured.")
    return web.json_response(tokens.jwks(), headers={**SECURITY_HEADERS, "Cache-Control": "max-age=300"})


def setup(app: web.Application, prefix: str) -> None:
    config = app[keys.CONFIG]
    store = app[keys.STORE]
    app[keys.TOKENS] = (JwtTokens(config.jwt, store, cache_ttl=config.session.cache_ttl)
                        if config.jwt.enabled else None)
    webhook = webhook_for(config.otp, lambda: app[keys.HTTP])
    app[keys.OTP] = None
    if config.otp_codes and webhook is not None:
        app[keys.OTP] = OneTimeCodes(store, app[keys.REGULATOR],
                                     app[keys.SESSIONS].keyring.derive("authproxy-otp"), config.otp, webhook)
    app.router.add_post(f"{prefix}/api/auth/otp/request", request_code)
    app.router.add_post(f"{prefix}/api/auth/otp/verify", verify_code)
    app.router.add_get(f"{prefix}/.well-known/jwks.json", jwks)
    tokens_api.setup(app, prefix)
    if config.otp.legacy_paths:
        app.router.add_post(LEGACY_REQUEST, request_code)
        app.router.add_post(LEGACY_VERIFY, verify_code)

    # System notices over the same webhook, read off the audit log (login/notices.py): listening from
    # before the start-up checks (first context), sending once the store runs (`listen`).
    notices = Notices(webhook, store) if webhook is not None and config.otp.notify else None

    async def hear(app: web.Application) -> AsyncIterator[None]:
        if notices is not None:
            audit_log.addHandler(notices)
        yield
        if notices is not None:
            audit_log.removeHandler(notices)

    async def listen(app: web.Application) -> AsyncIterator[None]:
        tokens = app[keys.TOKENS]
        if tokens is not None:
            tokens.start()   # the store has started (this context runs after app._lifecycle)
            # A revoked token's WebSockets re-check its record at once (proxy/bridges.py).
            app[keys.STORE].subscribe(TOKENS_CHANNEL, lambda message: app[keys.WEBSOCKETS].invalidated(
                record_key(message.partition(" ")[0])))
        if notices is not None:
            notices.ready.set()
        yield
        if notices is not None:
            await notices.drain()

    app.cleanup_ctx.insert(0, hear)

    app.cleanup_ctx.append(listen)
