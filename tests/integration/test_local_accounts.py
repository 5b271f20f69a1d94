"""AUTH_MODE=local: authproxy's own accounts, through the real gateway in front of the echo upstream.

First start without an admin, the forced password change, the JSON shapes of login/logout/session,
password rules, a password change ending the person's other sessions, last-admin protection, and an
imported bcrypt hash accepted once and upgraded to argon2id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pyotp
import pytest

from authproxy import keys
from authproxy.accounts.model import Account, new_id
from tests.fakes.echo import EchoUpstream
from tests.integration.conftest import Audit
from tests.integration.local_support import ADMIN, API, FIRST, body, local_env, start_local
from tests.support.gateway import Gateway, GatewayClient, MakeGateway


async def test_first_start_prints_a_random_admin_password_once_and_forces_a_change(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    env = local_env(echo_upstream.url)
    del env["AUTHPROXY_ADMIN_PASSWORD"]
    gw = await make_gateway(env)
    printed = capfd.readouterr().err
    line = next(x for x in printed.splitlines() if "password:" in x)
    password = line.split("password:", 1)[1].strip()
    assert len(password) >= 20
    assert all(password not in r.getMessage() and password not in str(r.__dict__) for r in caplog.records)
    client = client_for(gw)
    assert (await client.login("admin", "admin")).status == 401   # no default password
    resp = await client.login("admin", password)
    data = await body(resp)
    assert resp.status == 200 and data["success"] is True and data["passwordChangeRequired"] is True
    assert data["user"]["username"] == "admin" and data["user"]["role"] == "admin"
    # Nothing else works until the password is changed: the proxy, the admin API.
    for method, path in (("GET", "/api/zones/list"), ("GET", f"{API}/users")):
        resp = await client.request(method, path)
        assert resp.status == 403 and (await body(resp))["error"] == "password_change_required"
    assert echo_upstream.requests == []
    resp = await client.request("POST", f"{API}/change-password",
                                json={"currentPassword": password, "newPassword": "short"})
    assert resp.status == 400 and (await body(resp))["error"] == "weak_password"
    resp = await client.request("POST", f"{API}/change-password",
                                json={"currentPassword": password, "newPassword": "password1234"})
    assert resp.status == 400 and "common" in (await body(resp))["message"]
    resp = await client.request("POST", f"{API}/change-password",
                                json={"currentPassword": password, "newPassword": "a new and long one"})
    assert resp.status == 200, await resp.text()
    resp = await client.request("GET", "/api/zones/list")
    assert resp.status == 200 and echo_upstream.last.path == "/api/zones/list"
    # A second start (another replica) finds the admin and prints nothing.
    await make_gateway(env)
    assert "password:" not in capfd.readouterr().err
    assert all(password not in r.getMessage() for r in caplog.records)


async def test_login_logout_and_session_answer_the_issue_shapes(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream, audit: Audit) -> None:
    local = await start_local(make_gateway, client_for, echo_upstream)
    made, alice = await local.user("alice", "editor", email="alice@example.com")
    resp = await alice.request("GET", f"{API}/session")
    data = await body(resp)
    assert data["authenticated"] is True
    assert data["user"] == {"id": made["id"], "username": "alice", "role": "editor",
                            "email": "alice@example.com", "allowedKeyIds": []}
    assert data["username"] == "alice" and "expiresAt" in data and "idleExpiresAt" in data
    resp = await alice.request("POST", f"{API}/logout")
    data = await body(resp)
    assert data["success"] is True and data["message"] == "Logged out successfully"
    assert await body(await alice.request("GET", f"{API}/session")) == {"authenticated": False}
    # Wrong passwords and unknown names get the same answer, and each is audited.
    for name in ("alice", "nobody"):
        resp = await client_for(local.gw).login(name, "not-the-password-1")
        assert resp.status == 401 and (await body(resp))["error"] == "invalid_credentials"
    outcomes = [(line["user"], line["outcome"]) for line in audit.lines("login")]
    assert ("alice", "failure") in outcomes and ("nobody", "failure") in outcomes
    assert ("alice", "success") in outcomes
    assert any(line["outcome"] == "user_created" and line["target"] == "alice" and line["user"] == "admin"
               for line in audit.lines("admin"))


async def test_password_rules_and_a_change_ends_the_other_sessions(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient], echo_upstream: EchoUpstream
) -> None:
    local = await start_local(make_gateway, client_for, echo_upstream)
    for password, why in (("bob", "at least 12"), ("bob-is-bob", "at least 12"), ("BobTheBuilder", None)):
        resp = await local.admin.request("POST", f"{API}/users", json={"username": "BobTheBuilder",
                                                                       "password": password})
        if why is None:
            assert resp.status == 400 and "user name" in (await body(resp))["message"]
        else:
            assert resp.status == 400 and why in (await body(resp))["message"]
    _, phone = await local.user("bob", "viewer", password="bob-first-password")
    laptop = client_for(local.gw)
    assert (await laptop.login("bob", "bob-first-password")).status == 200
    change = {"currentPassword": "wrong-password-12", "newPassword": "bob-second-password"}
    resp = await phone.request("POST", f"{API}/change-password", json=change)
    assert resp.status == 401
    change["currentPassword"] = "bob-first-password"
    resp = await phone.request("POST", f"{API}/change-password", json=change)
    assert resp.status == 200 and (await body(resp))["otherSessionsEnded"] == 1
    assert (await body(await laptop.request("GET", f"{API}/session")))["authenticated"] is False
    assert (await phone.request("GET", "/x")).status == 200
    assert (await client_for(local.gw).login("bob", "bob-first-password")).status == 401
    assert (await client_for(local.gw).login("bob", "bob-second-password")).status == 200


async def test_nobody_deletes_or_demotes_themselves_or_the_last_admin(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient], echo_upstream: EchoUpstream
) -> None:
    local = await start_local(make_gateway, client_for, echo_upstream)
    me = await body(await local.admin.request("GET", f"{API}/session"))
    admin_id = me["user"]["id"]
    for method, kw in (("DELETE", {}), ("PATCH", {"json": {"role": "editor"}}),
                       ("PATCH", {"json": {"disabled": True}})):
        resp = await local.admin.request(method, f"{API}/users/{admin_id}", **kw)
        assert resp.status == 409 and (await body(resp))["error"] == "self_protection"
    second, other = await local.user("root2", "admin")
    _, viewer = await local.user("vera", "viewer")
    # The second admin may demote the first; then the first is no longer the last one...
    resp = await other.request("PATCH", f"{API}/users/{admin_id}", json={"role": "viewer"})
    assert resp.status == 200 and (await body(resp))["sessionsEnded"] == 1
    # ...and the remaining admin, being the last, cannot be demoted or deleted by anyone.
    assert (await body(await local.admin.request("GET", f"{API}/session")))["authenticated"] is False
    resp = await other.request("DELETE", f"{API}/users/{second['id']}")
    assert resp.status == 409
    # A viewer may not manage accounts at all.
    resp = await viewer.request("GET", f"{API}/users")
    assert resp.status == 403 and (await body(resp))["requiredRole"] == "admin"


async def test_an_imported_bcrypt_hash_signs_in_and_is_upgraded_to_argon2id(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient], echo_upstream: EchoUpstream
) -> None:
    local = await start_local(make_gateway, client_for, echo_upstream)
    accounts = local.gw.app[keys.ACCOUNTS]
    hashed = bcrypt.hashpw(b"carol-old-password", bcrypt.gensalt(12)).decode()
    await accounts.create(Account(id=new_id(), username="carol", role="editor", password_hash=hashed))
    assert (await client_for(local.gw).login("carol", "carol-wrong-password")).status == 401
    stored = await accounts.by_name("carol")
    assert stored is not None and stored.password_hash == hashed
    assert (await client_for(local.gw).login("carol", "carol-old-password")).status == 200
    stored = await accounts.by_name("carol")
    assert stored is not None and stored.password_hash.startswith("$argon2id$")
    assert (await client_for(local.gw).login("carol", "carol-old-password")).status == 200
    assert ADMIN != FIRST


async def test_my_sessions_sign_out_everywhere_and_the_lockout(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream, audit: Audit) -> None:
    local = await start_local(make_gateway, client_for, echo_upstream)
    _, phone = await local.user("erin", "viewer")
    laptop = client_for(local.gw)
    assert (await laptop.login("erin", "erin-password-123")).status == 200
    mine = await body(await phone.request("GET", f"{API}/sessions/mine"))
    assert len(mine["sessions"]) == 2 and sum(s["current"] for s in mine["sessions"]) == 1
    assert {s["user"] for s in mine["sessions"]} == {"erin"}
    everyone = await body(await local.admin.request("GET", f"{API}/sessions"))
    assert {s["user"] for s in everyone["sessions"]} == {"admin", "erin"}
    resp = await phone.request("POST", f"{API}/logout-everywhere")
    assert resp.status == 200 and (await body(resp))["sessionsEnded"] == 2
    for device in (phone, laptop):
        assert (await body(await device.request("GET", f"{API}/session")))["authenticated"] is False
    # Five wrong passwords: the sixth try is refused before the password is even checked.
    thief = client_for(local.gw)
    for _ in range(5):
        assert (await thief.login("erin", "guessing-password")).status == 401
    resp = await thief.login("erin", "erin-password-123")
    assert resp.status == 429 and resp.headers.get("Retry-After")
    assert any(line["outcome"] == "throttled" and line["user"] == "erin" for line in audit.lines("login"))


async def test_two_local_sites_share_one_throttle_budget_and_one_code_guard(
        tmp_path: Path, make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream) -> None:
    """One local account signs in at every local site: five failures anywhere lock it everywhere, and a
    TOTP code used at one site is spent at the other."""
    toml = tmp_path / "two.toml"
    toml.write_text(f'''auth_mode = "local"
[[sites]]
name = "one"
type = "technitium"
upstream_url = "{echo_upstream.url}"
path_prefix = "/one/"
[[sites]]
name = "two"
type = "technitium"
upstream_url = "{echo_upstream.url}/other"
path_prefix = "/two/"
''')
    local = await start_local(make_gateway, client_for, echo_upstream, config_file=toml)
    _, hana = await local.user("hana", "viewer", site="one")
    setup = await body(await hana.request("POST", f"{API}/totp/setup"))
    otp = pyotp.TOTP(setup["secret"])
    assert (await hana.request("POST", f"{API}/totp/confirm", json={"code": otp.now()})).status == 200
    code = otp.now()
    resp = await client_for(local.gw).login("hana", "hana-password-123", totp=code, site="one")
    assert resp.status == 200
    resp = await client_for(local.gw).login("hana", "hana-password-123", totp=code, site="two")
    assert resp.status == 401     # the same code, at the other site: spent
    thief = client_for(local.gw)
    for site in ("one", "two", "one", "two"):   # with the spent code: five failures, at two sites
        assert (await thief.login("hana", "guessing-password", site=site)).status == 401
    assert (await thief.login("hana", "guessing-password", site="one")).status == 429
    assert (await thief.login("hana", "guessing-password", site="two")).status == 429
