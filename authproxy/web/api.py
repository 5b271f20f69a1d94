"""The JSON API under the reserved prefix: login, logout, session, heartbeat, me.

The login page posts to the same endpoint (JSON from its script, or a plain form without script).
Errors are `{"error": <stable code>, "message": <human text>}`; never a trace, never a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import parse_qsl, quote

from aiohttp import web

from authproxy import crosssite, keys
from authproxy.bodies import read_up_to
from authproxy.config.schema import Config
from authproxy.errors import AuthError, AuthProxyError, UpstreamError, UpstreamProtocolError
from authproxy.log import audit, log
from authproxy.login.passthrough import LoginInput
from authproxy.redirects import RedirectPolicy
from authproxy.routing import Site
from authproxy.sessions.manager import LoadedSession
from authproxy.sessions.model import Credential, site_identity
from authproxy.upstreams.technitium import TechnitiumAdapter
from authproxy.upstreams.technitium_admin import MigrationError
from authproxy.web import bearer, local
from authproxy.web.common import (
    SECURITY_HEADERS,
    RequestSession,
    client_ip,
    current_session,
    json_error,
    parse_json,
)
from authproxy.web.portal import render_login, resolve_site

MAX_LOGIN_BODY = 16 * 1024
UPSTREAM_LOGOUT_TIMEOUT = 5.0


def safe_redirect(request: web.Request, rd: str | None) -> str:
    """Where to send the person after sign-in: `rd` if it is safe, else "/".

    Safe: a relative path, an absolute URL on a configured domain (COOKIE_DOMAIN, ALLOWED_REDIRECT_DOMAINS,
    the sites' hosts; see app.redirect_policy), or an absolute URL on the very origin this request came to
    (forward auth always sends the full original URL, also when no host names are configured).
    """
    if rd:
        checked = request.app[keys.REDIRECTS].validate(rd) or _same_origin_redirect(request, rd)
        if checked:
            return checked
    return "/"


def _same_origin_redirect(request: web.Request, rd: str) -> str | None:
    if not request.secure or not rd.lower().startswith("https://"):
        return None
    try:
        policy = RedirectPolicy([request.host])
    except ValueError:
        return None  # not a host[:port] we could compare
    return policy.validate(rd)


def see_other(location: str) -> web.Response:
    """A 303 that can carry Set-Cookie: aiohttp deprecates *returning* HTTPException objects."""
    return web.Response(status=303, headers={**SECURITY_HEADERS, "Location": location})


def set_session_cookie(request: web.Request, response: web.StreamResponse, value: str) -> None:
    attrs = request.app[keys.SESSIONS].cookie_attributes()
    response.set_cookie(request.app[keys.SESSIONS].cookie_name, value, **attrs)  # type: ignore[arg-type]


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    attrs = request.app[keys.SESSIONS].cookie_attributes()
    response.del_cookie(request.app[keys.SESSIONS].cookie_name, path="/",
                        domain=attrs.get("domain") or None,  # type: ignore[arg-type]
                        secure=True, httponly=True, samesite="Lax")


def session_json(request: web.Request, loaded: LoadedSession, idle_expires_at: float) -> dict[str, Any]:
    s = loaded.session
    return {"authenticated": True, "user": s.user, "displayName": s.identity.display_name, "site": s.site,
            "sites": sorted(s.credentials), "permissions": s.identity.permissions,
            "idleExpiresAt": round(idle_expires_at, 3), "expiresAt": round(s.expires_at, 3),
            **local.user_fields(s)}   # a local account: `user` is the account object


async def _read_login(request: web.Request, *, fields: str = "username and password"
                      ) -> tuple[dict[str, Any], bool]:
    """The login (or logout) fields and whether they came from a plain HTML form."""
    if request.content_length is not None and request.content_length > MAX_LOGIN_BODY:
        raise AuthError("The request is too large.", code="bad_request", status=413)
    ctype = request.content_type
    raw = await read_up_to(request.content, MAX_LOGIN_BODY + 1)
    if len(raw) > MAX_LOGIN_BODY:
        raise AuthError("The request is too large.", code="bad_request", status=413)
    if ctype == "application/json":
        data = parse_json(raw or b"null")
        if not isinstance(data, dict):
            raise AuthError(f"Send a JSON object with {fields}.", code="bad_request", status=400)
        return data, False
    if ctype == "application/x-www-form-urlencoded":
        try:
            # errors="strict": a mangled name must not reach the upstream as U+FFFD (and count a failure).
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                              errors="strict")
        except UnicodeDecodeError:
            raise AuthError("The form is not valid UTF-8.", code="bad_request", status=400) from None
        return dict(pairs), True
    raise AuthError("Send JSON (application/json) or a form.", code="unsupported_media_type", status=415)


async def sign_in(request: web.Request, site: Site, fields: LoginInput) -> tuple[LoadedSession, str]:
    """Sign in at `site` (throttled and audited) under a new session id, which keeps the person's other
    sites; the new session and its cookie value, or AuthError/UpstreamError. The one sign-in of the
    login API and of a UI's own login form (web/uicalls.py)."""
    previous = await current_session(request)
    metrics = request.app.get(keys.METRICS)
    try:
        loaded, cookie = await request.app[keys.LOGIN].sign_in(site, fields, client_ip(request))
        if previous is not None:
            await request.app[keys.SESSIONS].adopt(loaded, previous)
    except AuthProxyError as exc:
        if metrics is not None:
            metrics.on_sign_in(site.name, exc.code)
        raise
    if metrics is not None:
        metrics.on_sign_in(site.name, "success")
    request[keys.SESSION] = RequestSession(loaded)
    return loaded, cookie


# The portal's own script sends this with its sign-in call (web/static/login.js): a one-time-code prompt
# is then an ordinary answer, not the 401 a script gets.
PORTAL_HEADER = "X-Authproxy-Portal"


def _not_signed_in(request: web.Request, exc: AuthError, *, form_post: bool, rd: str | None,
                   username: str) -> web.StreamResponse:
    """A sign-in that did not (yet) succeed, answered to the form, the portal's script or a script."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    if exc.code == "totp_required" and (form_post or request.headers.get(PORTAL_HEADER) == "1"):
        # The portal's second step is a prompt, not a failure: 200 and a notice (scripts, which do
        # not send PORTAL_HEADER, keep their 401 totp_required).
        if form_post:
            return render_login(request, notice=str(exc), rd=rd, totp=True, username=username)
        return web.json_response({"authenticated": False, "step": "totp", "message": str(exc)},
                                 headers=SECURITY_HEADERS)
    if form_post:
        return render_login(request, status=exc.status, error=str(exc), rd=rd,
                            totp=exc.code == "totp_required", headers=headers, username=username)
    return json_error(exc.status, exc.code, str(exc), headers=headers)


async def login(request: web.Request) -> web.StreamResponse:
    config = request.app[keys.CONFIG]
    form_post = False
    rd: str | None = None
    username = ""  # shown again on the form's second (TOTP) step; never the password
    try:
        if not config.session_mode:
            raise AuthError("Sign-in is not enabled (AUTH_MODE=none).", code="login_disabled", status=404)
        if not request.secure:
            raise AuthError(
                "Sign-in needs HTTPS; open this page over https://.", code="https_required", status=400
            )
        data, form_post = await _read_login(request)
        if form_post and crosssite.from_other_site(request):  # login CSRF (JSON needs CORS: it cannot)
            raise AuthError("Cross-site sign-in refused.", code="cross_site", status=403)
        rd = data.get("rd") if isinstance(data.get("rd"), str) else None
        given = data.get("username")
        username = given if isinstance(given, str) else ""
        site = resolve_site(request, data.get("site") if isinstance(data.get("site"), str) else None, rd)
        if site is None:
            raise AuthError("No site is configured for this address.", code="unknown_site", status=404)
        loaded, cookie = await sign_in(request, site, LoginInput.parse(data))
    except AuthError as exc:
        return _not_signed_in(request, exc, form_post=form_post, rd=rd, username=username)
    except UpstreamError as exc:
        # Unreachable is transient; a protocol error is the upstream's setup (the log names the fix).
        broken = isinstance(exc, UpstreamProtocolError)
        log.log(logging.ERROR if broken else logging.WARNING,
                "login: upstream refused to work with authproxy" if broken else "login: upstream unavailable",
                extra={"fields": {"error": str(exc)}})
        if broken:
            code = "upstream_error"
            message = ("The upstream service answered in a way authproxy cannot use; the administrator will "
                       "find the cause in authproxy's log.")
        else:
            code, message = "upstream_unavailable", "The upstream service is not answering; try again soon."
        if form_post:
            return render_login(request, status=502, error=message, rd=rd)
        return json_error(502, code, message)
    target = safe_redirect(request, rd)
    if form_post:
        response: web.StreamResponse = see_other(target)
    else:
        idle = await request.app[keys.SESSIONS].idle_expires_at(loaded)
        response = web.json_response({**session_json(request, loaded, idle), "redirect": target},
                                     headers=SECURITY_HEADERS)
    set_session_cookie(request, response, cookie)
    return response


async def end_session(request: web.Request, loaded: LoadedSession, *, reason: str) -> None:
    """Destroy the session here and, best effort, each upstream session it holds."""
    await request.app[keys.SESSIONS].destroy(loaded)
    request[keys.SESSION] = RequestSession(None)
    router = request.app[keys.ROUTER]
    for name, cred in loaded.session.credentials.items():
        site = router.by_name.get(name)
        if site is None or cred.actor != "user":
            continue
        try:
            await asyncio.wait_for(site.adapter.logout(cred), UPSTREAM_LOGOUT_TIMEOUT)
        except (UpstreamError, TimeoutError) as exc:
            log.warning(
                "upstream logout failed", extra={"fields": {"site": name, "error": type(exc).__name__}}
            )
    address = client_ip(request)
    named = await request.app[keys.BACKGROUND].name_for(address)   # the PTR name, when a safe token can tell
    audit("logout", outcome=reason, user=loaded.session.user, site=loaded.session.site,
          client_ip=address, session=loaded.public_id, **({"client_name": named} if named else {}))


_FORM_BOOLEANS = {"1": True, "on": True, "true": True, "": False, "0": False, "off": False, "false": False}


async def _sign_out_everywhere(request: web.Request) -> bool:
    """Whether a sign-out asks to end every session of the account too: `{"everywhere": true}` in
    JSON, `everywhere=1` in a form. No body, or another kind of body, is a plain sign-out as ever."""
    if request.content_length == 0 or request.content_type not in ("application/json",
                                                                    "application/x-www-form-urlencoded"):
        return False
    data, form_post = await _read_login(request, fields='"everywhere": true or false')
    value = data.get("everywhere", False)
    if form_post and isinstance(value, str):
        value = _FORM_BOOLEANS.get(value.lower(), value)
    if isinstance(value, bool):
        return value
    raise AuthError("`everywhere` must be true or false.", code="bad_request", status=400)


async def logout(request: web.Request) -> web.StreamResponse:
    if crosssite.from_other_site(request):
        return json_error(403, "cross_site", "Cross-site sign-out refused.")
    revoked = await bearer.bearer_logout(request)   # a JWT's sign-out: its jti, everywhere
    if revoked is not None:
        return revoked
    try:
        everywhere = await _sign_out_everywhere(request)
    except AuthError as exc:
        return json_error(exc.status, exc.code, str(exc))
    loaded = await current_session(request)
    answer: dict[str, Any] = {"authenticated": False, "loggedOut": loaded is not None}
    if request.app[keys.CONFIG].local_accounts:   # what local-account clients read
        answer.update(success=True, message="Logged out successfully")
    if loaded is not None:
        await end_session(request, loaded, reason="success")
        if everywhere:
            others = await request.app[keys.SESSIONS].destroy_everywhere(loaded)
            await bearer.revoke_all(request, loaded.session.user)
            audit("logout", outcome="everywhere", user=loaded.session.user, site=loaded.session.site,
                  client_ip=client_ip(request), session=loaded.public_id, sessions_ended=others)
            answer["otherSessionsEnded"] = others
    if request.content_type == "application/x-www-form-urlencoded":
        prefix = request.app[keys.CONFIG].server.prefix
        response: web.StreamResponse = see_other(f"{prefix}/login?logged_out=1")
    else:
        response = web.json_response(answer, headers=SECURITY_HEADERS)
    clear_session_cookie(request, response)
    return response


async def session_info(request: web.Request) -> web.StreamResponse:
    loaded = await current_session(request)
    if loaded is None:
        return web.json_response({"authenticated": False}, headers=SECURITY_HEADERS)
    idle = await request.app[keys.SESSIONS].idle_expires_at(loaded)
    body = session_json(request, loaded, idle)
    # Where the session was opened from, with its reverse name when a safe background token can tell.
    address = loaded.session.client_ip
    body.update(clientIp=address, clientName=await request.app[keys.BACKGROUND].name_for(address))
    return web.json_response(body, headers=SECURITY_HEADERS)


async def heartbeat(request: web.Request) -> web.StreamResponse:
    loaded = await current_session(request)
    if loaded is None:
        return json_error(401, "session_expired", "Your session has ended; sign in again.")
    manager = request.app[keys.SESSIONS]
    if not await manager.touch(loaded):  # ended elsewhere since this replica cached it
        return json_error(401, "session_expired", "Your session has ended; sign in again.")
    router = request.app[keys.ROUTER]
    used, dead = False, []
    for name, cred in list(loaded.session.credentials.items()):
        site = router.by_name.get(name)
        if site is None or cred.upstream_ttl is None:
            continue
        if manager.clock() - cred.touched_at < cred.upstream_ttl / 3:
            continue
        try:
            alive = await site.adapter.keepalive(cred)
        except UpstreamError:
            continue  # transient: the next heartbeat tries again
        if alive:
            request.app[keys.KEEPALIVE].note_use(loaded, name)  # the upstream saw it just now
            used = True
        else:
            dead.append(name)
    if dead:
        if not await manager.drop_credential(loaded, *dead, client_ip=client_ip(request)):
            ended = "upstream session" if not loaded.session.credentials else "session"
            return json_error(401, "session_expired", f"Your {ended} has ended; sign in again.")
    elif used and not await manager.save(loaded):  # signed out elsewhere while the upstream was asked
        return json_error(401, "session_expired", "Your session has ended; sign in again.")
    idle = await manager.idle_expires_at(loaded)
    return web.json_response(session_json(request, loaded, idle), headers=SECURITY_HEADERS)


# What /me tells whom (README "What /me answers"). Everyone: the mode, whether sign-in is on, the
# caller's own identity, and whether the background token is usable (the booleans scripts check).
# Administrators (a signed-in person whose own upstream account may administer it, asked with their
# own token, as the migration asks): also why the token is (not) safe, each site and the proxy setup.
PUBLIC_TOKEN_FIELDS = ("configured", "validated", "okForPtr")
ADMIN_CHECK_TIMEOUT = 5.0


async def is_admin(request: web.Request, loaded: LoadedSession | None) -> bool:
    """Whether the signed-in person may administer an upstream they are signed in to (the adapter's
    `may_administer`; Technitium: Administration View, Modify and Delete), asked with their own
    credential; False when it cannot be told (no session, an adapter that cannot tell, the upstream
    not answering)."""
    if loaded is None:
        return False
    for site in request.app[keys.ROUTER].sites:
        credential = loaded.session.credentials.get(site.name)
        if credential is None or credential.actor != "user":
            continue
        try:
            if await asyncio.wait_for(site.adapter.may_administer(credential), ADMIN_CHECK_TIMEOUT):
                return True
        except (UpstreamError, TimeoutError):
            continue
    return False


async def me(request: web.Request) -> web.StreamResponse:
    config = request.app[keys.CONFIG]
    loaded = await current_session(request)
    background = request.app[keys.BACKGROUND]
    admin = await is_admin(request, loaded)
    token = background.state(_background_site(request).name).summary()
    body: dict[str, Any] = {
        "authMode": config.auth_mode,
        "sessionAuthEnabled": config.session_mode,
        "httpsDetected": request.secure,
        "authenticated": loaded is not None,
        "user": loaded.session.user if loaded else None,
        "admin": admin,
        "loginUrl": f"{config.server.prefix}/login",
        # The names existing scripts already query (README "The background token").
        "backgroundPtrToken": token if admin else {k: token[k] for k in PUBLIC_TOKEN_FIELDS},
        "migrationRequired": migration_required(config),
    }
    if admin:
        body["trustProxy"] = config.server.trust_proxy
        body["sites"] = [{"name": s.name, "type": s.config.type,
                          "backgroundToken": background.state(s.name).summary()}
                         for s in request.app[keys.ROUTER].sites]
    if config.auth_mode == "none":
        body["warning"] = ("AUTH_MODE=none: every request reaches the upstream with the shared service "
                           "credential, whoever sends it")
    return web.json_response(body, headers=SECURITY_HEADERS)


def _background_site(request: web.Request) -> Site:
    """The site whose background token /me reports at the top: the first Technitium site with one,
    else the first Technitium site, else the first site."""
    sites = request.app[keys.ROUTER].sites
    technitium = [s for s in sites if s.config.type == "technitium"]
    with_token = [s for s in technitium if s.config.service_token is not None]
    return (with_token or technitium or sites)[0]


def migration_required(config: Config) -> bool:
    """A shared admin token (TECHNITIUM_CLUSTER_TOKEN) is still configured where people sign in."""
    return config.session_mode and any(s.cluster_token is not None for s in config.sites)


async def migrate_background_token(request: web.Request) -> web.StreamResponse:
    """POST .../background-token/migrate: only while a migration is pending (the site still has
    TECHNITIUM_CLUSTER_TOKEN; else `409 migration_not_pending`), and only after the signed-in person
    has re-entered their own Technitium password (a step-up, checked upstream and throttled like a
    sign-in). With the fresh token that gives (which must administer users), create a
    DnsClient-View-only user and its API token, check it, and answer the token once with the line
    for the env file. Nothing of it is logged or stored."""
    config = request.app[keys.CONFIG]
    if crosssite.from_other_site(request):
        return json_error(403, "cross_site", "Cross-site request refused.")
    if not config.session_mode:
        return json_error(404, "not_available", "The migration needs AUTH_MODE=session or hybrid.")
    if not migration_required(config):
        return json_error(409, "migration_not_pending", "No migration is pending: no site has "
                          "TECHNITIUM_CLUSTER_TOKEN (see /me: migrationRequired).")
    loaded = await current_session(request)
    if loaded is None:
        return json_error(401, "unauthenticated", "Sign in first, with a Technitium administrator account.")
    try:
        data, _ = await _read_login(request, fields='"password" (and "totp", "site")')
        site = _migration_site(request, loaded, data.get("site"))
        if site.config.cluster_token is None:
            raise AuthError(f"No migration is pending at {site.name}: TECHNITIUM_CLUSTER_TOKEN is not "
                            "configured there.", code="migration_not_pending", status=409)
        fresh = await _step_up(request, loaded, site, data)
    except AuthError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return json_error(exc.status, exc.code, str(exc), headers=headers)
    except UpstreamError as exc:   # the step-up could not ask Technitium
        return _migration_unavailable(str(data.get("site") or "technitium"), exc)
    try:
        return await _migrate(request, loaded, site, fresh)
    finally:
        with contextlib.suppress(UpstreamError, TimeoutError):   # the step-up's own upstream session
            await asyncio.wait_for(site.adapter.logout(fresh), UPSTREAM_LOGOUT_TIMEOUT)


def _migration_site(request: web.Request, loaded: LoadedSession, wanted: object) -> Site:
    """The Technitium site to migrate: `{"site": name}`, or the one Technitium site signed in to."""
    if wanted is not None and not isinstance(wanted, str):
        raise AuthError("`site` must be a site name.", code="bad_request", status=400)
    sites = [s for s in request.app[keys.ROUTER].sites if s.config.type == "technitium"
             and (wanted is None or s.name == wanted) and s.name in loaded.session.credentials]
    if len(sites) != 1 or not isinstance(sites[0].adapter, TechnitiumAdapter):
        raise AuthError("Name the Technitium site you are signed in to: {\"site\": \"...\"}.",
                        code="bad_request", status=400)
    return sites[0]


async def _step_up(request: web.Request, loaded: LoadedSession, site: Site, data: dict[str, Any]
                   ) -> Credential:
    """The signed-in person's password (and code) for their own account at `site`, checked upstream
    by the sign-in's own path (throttle, code replay guard, audit `step_up`): a fresh credential."""
    identity = site_identity(loaded.session, site.name)
    if not isinstance(data.get("password"), str) or not data["password"] or identity is None:
        raise AuthError("Re-enter your Technitium password to confirm: {\"password\": \"...\"}.",
                        code="step_up_required", status=401)
    form = LoginInput.parse({"username": identity.username, "password": data["password"],
                             "totp": data.get("totp")})
    result = await request.app[keys.LOGIN].step_up(site, form, client_ip(request))
    assert result.credential is not None
    return result.credential


def _migration_unavailable(site: str, exc: UpstreamError) -> web.Response:
    log.warning("migration: upstream unavailable",
                extra={"fields": {"site": site, "error": type(exc).__name__}})
    return json_error(502, "upstream_unavailable", "Technitium is not answering; try again soon.")


async def _migrate(request: web.Request, loaded: LoadedSession, site: Site, credential: Credential
                   ) -> web.StreamResponse:
    adapter = site.adapter
    assert isinstance(adapter, TechnitiumAdapter)
    who = {"user": loaded.session.user, "site": site.name, "client_ip": client_ip(request)}
    try:
        if not await adapter.may_administer(credential):
            audit("background_token_migration", outcome="forbidden", **who)
            return json_error(403, "forbidden", "Your Technitium account may not administer users "
                              "(Administration: View, Modify and Delete).")
        made = await adapter.create_background_token(credential)
    except MigrationError as exc:
        audit("background_token_migration", outcome=exc.code, **who)
        return json_error(exc.status, exc.code, str(exc))
    except UpstreamError as exc:
        return _migration_unavailable(site.name, exc)
    audit("background_token_migration", outcome="success", background_user=made.username, **who)
    return web.json_response({
        "site": site.name, "username": made.username, "token": made.token,
        "envLine": f"TECHNITIUM_BACKGROUND_TOKEN={made.token}",
        "check": {"validated": made.check.validated, "okForPtr": made.check.ok, "reason": made.check.reason},
        "shownOnce": True,
        "next": ["Put envLine into the env file authproxy reads", "Remove TECHNITIUM_CLUSTER_TOKEN",
                 ("Restart authproxy (Compose: docker compose up -d --force-recreate; systemd: systemctl "
                  "restart authproxy)"), "Check: curl -s https://<host>/_authproxy/api/auth/me"],
    }, headers=SECURITY_HEADERS)


def login_location(request: web.Request, rd: str) -> str:
    prefix = request.app[keys.CONFIG].server.prefix
    return f"{prefix}/login?rd={quote(rd, safe='')}"


def setup(app: web.Application, prefix: str) -> None:
    app.router.add_post(f"{prefix}/api/auth/login", login)
    app.router.add_post(f"{prefix}/api/auth/logout", logout)
    app.router.add_get(f"{prefix}/api/auth/session", session_info)
    app.router.add_post(f"{prefix}/api/auth/heartbeat", heartbeat)
    app.router.add_get(f"{prefix}/api/auth/me", me)
    app.router.add_post(f"{prefix}/api/auth/background-token/migrate", migrate_background_token)
