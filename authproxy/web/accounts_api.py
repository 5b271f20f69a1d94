"""The local-accounts API under `/_authproxy/api/auth/`: password change, and (admin only) users, keys
and sessions; everyone's own sessions and "sign out everywhere".

Everything here is JSON. A change to a person's role, keys or status, and their deletion, ends their
sessions on every worker and replica before the answer (the per-account index and the store's
revocation), so a session never acts with rights its account no longer has. Nobody deletes, disables
or demotes themselves, nor the last enabled admin. Every change is audited with who did it and to
whom, never with a password or a key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from authproxy import crosssite, keys
from authproxy.accounts import claims, passwords
from authproxy.accounts.model import ROLES, USERNAME, Account, Resource, at_least, new_id
from authproxy.accounts.store import NameTaken
from authproxy.bodies import read_up_to
from authproxy.errors import AuthError
from authproxy.log import audit
from authproxy.sessions.admin import SessionAdmin, SessionInfo
from authproxy.sessions.manager import LoadedSession
from authproxy.web import bearer
from authproxy.web.api import clear_session_cookie
from authproxy.web.common import SECURITY_HEADERS, client_ip, current_session, json_error, parse_json
from authproxy.web.local import password_change_required

MAX_BODY = 16 * 1024
MAX_SECRET = 4096


@dataclass(frozen=True, slots=True)
class Caller:
    loaded: LoadedSession
    claim: claims.Claim

    def audit(self, request: web.Request, outcome: str, **extra: Any) -> None:
        audit("admin", outcome=outcome, user=self.claim.username, client_ip=client_ip(request), **extra)


class Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def ok(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response({"success": True, **body}, status=status, headers=SECURITY_HEADERS)


async def read_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise Refused(json_error(415, "unsupported_media_type", "Send JSON (application/json)."))
    raw = await read_up_to(request.content, MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise Refused(json_error(413, "bad_request", "The request is too large."))
    try:
        data = parse_json(raw or b"null")
    except AuthError as exc:
        raise Refused(json_error(exc.status, exc.code, str(exc))) from None
    if not isinstance(data, dict):
        raise Refused(json_error(400, "bad_request", "Send a JSON object."))
    return data


async def signed_in(request: web.Request, *, admin: bool = False, changing_password: bool = False) -> Caller:
    if request.method not in ("GET", "HEAD") and crosssite.from_other_site(request):
        raise Refused(json_error(403, "cross_site", "Cross-site request refused."))
    loaded = await current_session(request)
    claim = claims.any_claim(loaded.session) if loaded is not None else None
    if loaded is None or claim is None:
        raise Refused(json_error(401, "unauthenticated", "Sign in with an authproxy account first."))
    if claim.must_change_password and not changing_password:
        raise Refused(password_change_required(request))
    if admin and not at_least(claim.role, "admin"):
        raise Refused(json_error(403, "insufficient_permissions", "This needs the admin role; you are "
                                 f"{claim.role}.", requiredRole="admin", role=claim.role))
    return Caller(loaded, claim)


def _local_sites(request: web.Request) -> list[str]:
    return [s.name for s in request.app[keys.ROUTER].sites if s.config.local_accounts]


async def end_sessions_of(request: web.Request, username: str, *, keep: str | None = None) -> int:
    """End every session of a local account, at every local site (and its copies on every replica)."""
    manager = request.app[keys.SESSIONS]
    return sum([await manager.end_account(site, username, keep=keep) for site in _local_sites(request)])


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def handler(fn: Handler) -> Handler:
    """A handler whose checks raise Refused with the answer to give."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except Refused as exc:
            return exc.response
    return wrapped


# ---- everyone -------------------------------------------------------------------------------------

@handler
async def change_password(request: web.Request) -> web.StreamResponse:
    caller = await signed_in(request, changing_password=True)
    data = await read_body(request)
    current, new = data.get("currentPassword"), data.get("newPassword")
    if not isinstance(current, str) or not isinstance(new, str) or not current or not new:
        return json_error(400, "bad_request", "Send currentPassword and newPassword.")
    accounts = request.app[keys.ACCOUNTS]
    account = await accounts.get(caller.claim.id)
    who = {"user": caller.claim.username, "client_ip": client_ip(request)}
    if account is None or account.disabled:
        return json_error(401, "unauthenticated", "This account no longer exists.")
    attempt = await request.app[keys.REGULATOR].begin("local:password", account.username, client_ip(request))
    if attempt.retry_after is not None:
        audit("password", outcome="throttled", **who)
        return json_error(429, "too_many_attempts", "Too many failed attempts. Try again later.",
                          headers={"Retry-After": str(attempt.retry_after)})
    try:
        if not await asyncio.to_thread(passwords.verify, account.password_hash, current):
            attempt.failed()
            audit("password", outcome="wrong_current_password", **who)
            return json_error(401, "invalid_credentials", "The current password is not right.")
        problem = passwords.problem(new, account.username)
        if problem is None and new == current:
            problem = "The new password must differ from the current one."
        if problem is not None:
            return json_error(400, "weak_password", problem)
        account.password_hash = await asyncio.to_thread(passwords.hash_password, new)
        account.must_change_password = False
        await accounts.save(account)
        await attempt.succeeded()
    finally:
        await attempt.refund()
    ended = await end_sessions_of(request, account.username, keep=caller.loaded.store_key)
    claims.clear_must_change(caller.loaded.session, account.id)
    await request.app[keys.SESSIONS].save(caller.loaded)
    audit("password", outcome="changed", other_sessions_ended=ended, **who)
    return ok({"message": "Password changed", "otherSessionsEnded": ended})


@handler
async def my_sessions(request: web.Request) -> web.StreamResponse:
    caller = await signed_in(request)
    mine = set(_local_sites(request))
    return ok({"sessions": await _sessions(
        request, lambda e: e.user == caller.claim.username and e.site in mine, caller)})


@handler
async def logout_everywhere(request: web.Request) -> web.StreamResponse:
    caller = await signed_in(request, changing_password=True)
    ended = await end_sessions_of(request, caller.claim.username)
    await request.app[keys.SESSIONS].destroy(caller.loaded)
    await bearer.revoke_all(request, caller.claim.username)
    audit("logout", outcome="everywhere", user=caller.claim.username, client_ip=client_ip(request),
          sessions_ended=ended)
    response = ok({"message": "Logged out everywhere", "sessionsEnded": ended})
    clear_session_cookie(request, response)
    return response


# ---- users (admin) --------------------------------------------------------------------------------

def _role(value: object) -> str:
    if not isinstance(value, str) or value not in ROLES:
        raise Refused(json_error(400, "bad_request", f"role must be one of {', '.join(ROLES)}."))
    return value


def _key_ids(data: dict[str, Any]) -> list[str] | None:
    value = data.get("allowedKeyIds", data.get("allowedResources"))
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 64 for v in value):
        raise Refused(json_error(400, "bad_request", "allowedKeyIds must be a list of key ids."))
    return list(dict.fromkeys(value))


def _email(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 254 or (value and "@" not in value):
        raise Refused(json_error(400, "bad_request", "email must be an address (or empty)."))
    return value


@handler
async def list_users(request: web.Request) -> web.StreamResponse:
    await signed_in(request, admin=True)
    return ok({"users": [a.public() for a in await request.app[keys.ACCOUNTS].all()]})


@handler
async def create_user(request: web.Request) -> web.StreamResponse:
    caller = await signed_in(request, admin=True)
    data = await read_body(request)
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or USERNAME.fullmatch(username) is None:
        return json_error(400, "bad_request", "username: 1 to 64 letters, digits, and . _ @ - "
                          "(starting with a letter or digit).")
    if not isinstance(password, str):
        return json_error(400, "bad_request", "Send a password.")
    problem = passwords.problem(password, username)
    if problem is not None:
        return json_error(400, "weak_password", problem)
    account = Account(id=new_id(), username=username, role=_role(data.get("role", "viewer")),  # type: ignore[arg-type]
                      password_hash=await asyncio.to_thread(passwords.hash_password, password),
                      email=_email(data.get("email")), allowed_key_ids=_key_ids(data) or [],
                      must_change_password=bool(data.get("mustChangePassword", False)))
    try:
        await request.app[keys.ACCOUNTS].create(account)
    except NameTaken:
        return json_error(409, "user_exists", f"There is already an account named {username!r}.")
    caller.audit(request, "user_created", target=username, role=account.role)
    return ok({"user": account.public()}, status=201)


async def _target(request: web.Request) -> Account:
    account = await request.app[keys.ACCOUNTS].get(request.match_info["id"])
    if account is None:
        raise Refused(json_error(404, "not_found", "No such user."))
    return account


async def _keeps_an_admin(request: web.Request, account: Account) -> bool:
    """Whether another enabled admin remains when `account` stops being one."""
    return any(a.id != account.id for a in await request.app[keys.ACCOUNTS].admins())


@handler
async def update_user(request: web.Request) -> web.StreamResponse:
    caller = await signed_in(request, admin=True)
    account = await _target(request)
    data = await read_body(request)
    role = _role(data["role"]) if "role" in data else account.role
    disabled = data.get("disabled", account.disabled)
    if not isinstance(disabled, bool):
        return json_error(400, "bad_request", "disabled must be true or false.")
    losing_admin = account.role == "admin" and not account.disabled and (role != "admin" or disabled)
    if losing_admin and account.id == caller.claim.id:
        return json_error(409, "self_protection", "You cannot demote or disable yourself.")
    if losing_admin and not await _keeps_an_admin(request, account):
        return json_error(409, "last_admin", "This is the last admin; make another admin first.")
    key_ids = _key_ids(data)
    rights_changed = (role != account.role or disabled != account.disabled
                      or (key_ids is not None and key_ids != account.allowed_key_ids))
    account.role, account.disabled = role, disabled  # type: ignore[assignment]
    if key_ids is not None:
        account.allowed_key_ids = key_ids
    if "email" in data:
        account.email = _email(data["email"])
    if "password" in data:   # an admin's reset: the person must choose their own at the next sign-in
        password = data["password"]
        problem = (passwords.problem(password, account.username) if isinstance(password, str)
                   else "Send the password as text.")
        if problem is not None:
            return json_error(400, "weak_password", problem)
        account.password_hash = await asyncio.to_thread(passwords.hash_password, password)
        account.must_change_password = True
        rights_changed = True
    if data.get("resetTotp") is True:
        account.totp = type(account.totp)()
        rights_changed = True
        caller.audit(request, "totp_reset", target=account.username)
    await request.app[keys.ACCOUNTS].save(account)
    ended = await end_sessions_of(request, account.username) if rights_changed else 0
    caller.audit(request, "user_updated", target=account.username, role=account.role,
                 disabled=account.disabled, sessions_ended=ended)
    return ok({"user": account.public(), "sessionsEnded": ended})


@handler
async def delete_user(request: web.Request) -> web.StreamResponse:
    caller = await signed_in(request, admin=True)
    account = await _target(request)
    if account.id == caller.claim.id:
        return json_error(409, "self_protection", "You cannot delete yourself.")
    if account.role == "admin" and not account.disabled and not await _keeps_an_admin(request, account):
        return json_error(409, "last_admin", "This is the last admin; make another admin first.")
    await request.app[keys.ACCOUNTS].delete(account)
    ended = await end_sessions_of(request, account.username)
    caller.audit(request, "user_deleted", target=account.username, sessions_ended=ended)
    return ok({"sessionsEnded": ended})


# ---- keys (admin) ---------------------------------------------------------------------------------

@handler
async def list_keys(request: web.Request) -> web.StreamResponse:
    await signed_in(request, admin=True)
    return ok({"keys": [k.public() for k in await request.app[keys.ACCOUNTS].keys()]})


@handler
async def create_key(request: web.Request) -> web.StreamResponse:
    caller = await signed_in(request, admin=True)
    data = await read_body(request)
    try:
        resource = new_resource(data, {s.name for s in request.app[keys.ROUTER].sites})
    except ValueError as exc:
        return json_error(400, "bad_request", str(exc))
    try:
        await request.app[keys.ACCOUNTS].add_key(resource)
    except NameTaken:
        return json_error(409, "key_exists", f"There is already a key named {resource.name!r}.")
    caller.audit(request, "key_created", key=resource.name, key_id=resource.id)
    return ok({"key": resource.public()}, status=201)


def new_resource(data: dict[str, Any], sites: set[str]) -> Resource:
    """A key from `{name, secret, algorithm?, site?}` (API and CLI); ValueError says what is wrong."""
    from authproxy.accounts.model import KEY_NAME

    name, secret = data.get("name"), data.get("secret")
    algorithm, site = data.get("algorithm", ""), data.get("site", "")
    if not isinstance(name, str) or KEY_NAME.fullmatch(name) is None:
        raise ValueError("name: 1 to 128 letters, digits, and . _ : @ / - (starting with a letter or digit).")
    if not isinstance(secret, str) or not secret or len(secret) > MAX_SECRET or not secret.isprintable():
        raise ValueError(f"secret: the key's value, printable, at most {MAX_SECRET} characters.")
    if not isinstance(algorithm, str) or len(algorithm) > 64 or not algorithm.isprintable():
        raise ValueError("algorithm: a name such as hmac-sha256.")
    if not isinstance(site, str) or (site and site not in sites):
        raise ValueError(f"site: one of {', '.join(sorted(sites))}, or left out (any site).")
    return Resource(id=new_id(), name=name, secret=secret, algorithm=algorithm, site=site)


@handler
async def delete_key(request: web.Request) -> web.StreamResponse:
    caller = await signed_in(request, admin=True)
    key_id = request.match_info["id"]
    found = await request.app[keys.ACCOUNTS].key(key_id)
    if found is None or not await request.app[keys.ACCOUNTS].delete_key(key_id):
        return json_error(404, "not_found", "No such key.")
    caller.audit(request, "key_deleted", key=found.name, key_id=key_id)
    return ok({})


# ---- sessions -------------------------------------------------------------------------------------

def _admin(request: web.Request) -> SessionAdmin:
    """The store's session listing (sessions/admin.py, also `authproxy sessions`): each session's sealed
    marker says who, where, since when and from where; no session is opened."""
    manager = request.app[keys.SESSIONS]
    return SessionAdmin(manager.store, manager.marker_keys)


async def _sessions(request: web.Request, wanted: Callable[[SessionInfo], bool],
                    caller: Caller) -> list[dict[str, Any]]:
    manager = request.app[keys.SESSIONS]
    now = manager.clock()
    idle = manager.config.idle_timeout
    found = []
    for info in await _admin(request).sessions():
        if wanted(info):
            # Every touch sets the idle TTL to the idle timeout: it was last slid idle_timeout before
            # the idle end (within the touch interval; near the absolute end the TTL is shorter).
            seen = min(now, max(info.created_at or 0.0, info.idle_expires_at - idle))
            found.append({"id": info.id, "user": info.user, "site": info.site, "clientIp": info.client_ip,
                          "createdAt": info.created_at, "lastSeenAt": round(seen, 3),
                          "idleExpiresAt": round(info.idle_expires_at, 3), "expiresAt": info.expires_at,
                          "authMethod": info.auth_method, "current": info.id == caller.loaded.public_id})
    return found


@handler
async def all_sessions(request: web.Request) -> web.StreamResponse:
    caller = await signed_in(request, admin=True)
    return ok({"sessions": await _sessions(request, lambda e: True, caller)})


@handler
async def end_session(request: web.Request) -> web.StreamResponse:
    caller = await signed_in(request, admin=True)
    admin = _admin(request)
    wanted = request.match_info["id"]
    listed = {s.id: s for s in await admin.sessions()}
    info = listed.get(wanted)
    if info is None or not await admin.revoke([wanted]):
        return json_error(404, "not_found", "No such session (it may have ended already).")
    caller.audit(request, "session_ended", target=info.user, site=info.site, session=info.id)
    return ok({})


def setup(app: web.Application, prefix: str) -> None:
    base = f"{prefix}/api/auth"
    app.router.add_post(f"{base}/change-password", change_password)
    app.router.add_get(f"{base}/sessions/mine", my_sessions)
    app.router.add_post(f"{base}/logout-everywhere", logout_everywhere)
    app.router.add_get(f"{base}/users", list_users)
    app.router.add_post(f"{base}/users", create_user)
    app.router.add_patch(f"{base}/users/{{id}}", update_user)
    app.router.add_delete(f"{base}/users/{{id}}", delete_user)
    app.router.add_get(f"{base}/keys", list_keys)
    app.router.add_post(f"{base}/keys", create_key)
    app.router.add_delete(f"{base}/keys/{{id}}", delete_key)
    app.router.add_get(f"{base}/sessions", all_sessions)
    app.router.add_delete(f"{base}/sessions/{{id}}", end_session)

