"""TOTP for local accounts: enrol (a secret and its QR code), confirm with a first code (then ten
recovery codes, shown once), and turn it off with the password. An admin resets a person's TOTP with
`PATCH users/{id} {"resetTotp": true}` or `authproxy users reset-totp`.

    POST totp/setup                 -> {secret, uri, qrSvg}   (not in force until confirmed)
    POST totp/confirm {"code"}      -> {recoveryCodes: [10]}  (hashed in the store, each good once)
    POST totp/disable {"password"}
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from authproxy import keys
from authproxy.accounts import passwords, totp
from authproxy.accounts.model import Account, Totp
from authproxy.log import audit
from authproxy.web.accounts_api import Caller, handler, ok, read_body, signed_in
from authproxy.web.common import client_ip, json_error


async def _mine(request: web.Request, caller: Caller) -> Account | None:
    return await request.app[keys.ACCOUNTS].get(caller.claim.id)


def _audit(request: web.Request, account: Account, outcome: str) -> None:
    audit("totp", outcome=outcome, user=account.username, client_ip=client_ip(request))


@handler
async def setup_totp(request: web.Request) -> web.StreamResponse:
    caller = await signed_in(request)
    account = await _mine(request, caller)
    if account is None:
        return json_error(401, "unauthenticated", "This account no longer exists.")
    if account.totp.enabled:
        return json_error(409, "totp_enabled", "TOTP is on already; turn it off first.")
    account.totp = Totp(secret=totp.new_secret())
    await request.app[keys.ACCOUNTS].save(account)
    uri = totp.uri(account.totp.secret, account.username)
    _audit(request, account, "enrolment_started")
    return ok({"secret": account.totp.secret, "uri": uri, "qrSvg": totp.qr_svg(uri)})


@handler
async def confirm_totp(request: web.Request) -> web.StreamResponse:
    caller = await signed_in(request)
    data = await read_body(request)
    code = data.get("code")
    account = await _mine(request, caller)
    if account is None:
        return json_error(401, "unauthenticated", "This account no longer exists.")
    if account.totp.enabled or not account.totp.secret:
        return json_error(409, "totp_not_pending", "Start with POST totp/setup.")
    if not isinstance(code, str) or not totp.code_ok(account.totp.secret, code.strip()):
        _audit(request, account, "confirmation_failed")
        return json_error(400, "invalid_code", "That code is not right; check the time on your device.")
    account.totp.enabled = True
    codes = totp.new_recovery_codes(account.totp)
    await request.app[keys.ACCOUNTS].save(account)
    _audit(request, account, "enabled")
    return ok({"recoveryCodes": codes, "shownOnce": True})


@handler
async def disable_totp(request: web.Request) -> web.StreamResponse:
    caller = await signed_in(request)
    data = await read_body(request)
    password = data.get("password")
    account = await _mine(request, caller)
    if account is None:
        return json_error(401, "unauthenticated", "This account no longer exists.")
    if not isinstance(password, str) or not await asyncio.to_thread(passwords.verify, account.password_hash,
                                                                    password):
        _audit(request, account, "disable_refused")
        return json_error(401, "invalid_credentials", "The password is not right.")
    account.totp = Totp()
    await request.app[keys.ACCOUNTS].save(account)
    _audit(request, account, "disabled")
    return ok({})


def setup(app: web.Application, prefix: str) -> None:
    base = f"{prefix}/api/auth/totp"
    app.router.add_post(f"{base}/setup", setup_totp)
    app.router.add_post(f"{base}/confirm", confirm_totp)
    app.router.add_post(f"{base}/disable", disable_totp)
