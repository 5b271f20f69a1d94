"""TOTP for local accounts: enrolment with a QR code, confirmation, a code needed at sign-in, a used code
refused, recovery codes each good once, turning it off, and an admin's reset."""

from __future__ import annotations

from collections.abc import Callable

import pyotp

from authproxy import keys
from tests.fakes.echo import EchoUpstream
from tests.integration.conftest import Audit
from tests.integration.local_support import API, body, start_local
from tests.support.gateway import Gateway, GatewayClient, MakeGateway


async def test_totp_enrolment_sign_in_replay_recovery_and_reset(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream, audit: Audit) -> None:
    local = await start_local(make_gateway, client_for, echo_upstream)
    made, alice = await local.user("alice", "editor")
    resp = await alice.request("POST", f"{API}/totp/setup")
    setup = await body(resp)
    assert resp.status == 200 and setup["uri"].startswith("otpauth://totp/authproxy:alice?secret=")
    assert setup["qrSvg"].startswith("<svg") and "<script" not in setup["qrSvg"]
    otp = pyotp.TOTP(setup["secret"])
    # Not in force before it is confirmed.
    assert (await client_for(local.gw).login("alice", "alice-password-123")).status == 200
    resp = await alice.request("POST", f"{API}/totp/confirm", json={"code": "000000"})
    assert resp.status == 400
    resp = await alice.request("POST", f"{API}/totp/confirm", json={"code": otp.now()})
    codes = (await body(resp))["recoveryCodes"]
    assert resp.status == 200 and len(codes) == 10 and len(set(codes)) == 10
    session = await body(await local.admin.request("GET", f"{API}/users"))
    assert next(u for u in session["users"] if u["username"] == "alice")["totpEnabled"] is True
    assert all(c not in str(session) for c in codes)

    phone = client_for(local.gw)
    resp = await phone.login("alice", "alice-password-123")
    assert resp.status == 401 and (await body(resp))["error"] == "totp_required"
    code = otp.now()
    assert (await phone.login("alice", "alice-password-123", totp=code)).status == 200
    # The same code again: refused, even with the right password.
    resp = await client_for(local.gw).login("alice", "alice-password-123", totp=code)
    assert resp.status == 401 and (await body(resp))["error"] == "invalid_credentials"
    # A recovery code works once.
    assert (await client_for(local.gw).login("alice", "alice-password-123", totp=codes[0])).status == 200
    assert (await client_for(local.gw).login("alice", "alice-password-123", totp=codes[0])).status == 401
    assert (await client_for(local.gw).login("alice", "alice-password-123", totp=codes[1])).status == 200
    stored = await local.gw.app[keys.ACCOUNTS].by_name("alice")   # used up in the account, not only replayed
    assert stored is not None and len(stored.totp.recovery) == 8
    # Turning it off needs the password.
    resp = await phone.request("POST", f"{API}/totp/disable", json={"password": "wrong-password-123"})
    assert resp.status == 401
    # An admin's reset: off, and alice's sessions end.
    resp = await local.admin.request("PATCH", f"{API}/users/{made['id']}", json={"resetTotp": True})
    assert resp.status == 200 and (await body(resp))["sessionsEnded"] >= 1
    assert (await body(await phone.request("GET", f"{API}/session")))["authenticated"] is False
    assert (await client_for(local.gw).login("alice", "alice-password-123")).status == 200
    outcomes = [line["outcome"] for line in audit.lines("totp")]
    assert {"enrolment_started", "confirmation_failed", "enabled", "recovery_code_used",
            "disable_refused"} <= set(outcomes)
    assert any(line["outcome"] == "totp_reset" and line["target"] == "alice" for line in audit.lines("admin"))
    for line in audit.lines():
        assert setup["secret"] not in str(line) and all(c not in str(line) for c in codes)
