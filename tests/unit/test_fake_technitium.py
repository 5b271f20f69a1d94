"""The Technitium fake against its API documentation and the upstream source: if these pass, gateway
tests that use the fake exercise the real login, token and expiry rules, not a stub that always says yes."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pyotp
import pytest
import pytest_asyncio

from tests.fakes.technitium import PERMISSION_SECTIONS, FakeClock, FakeTechnitium

INVALID = {"server": "fake-technitium", "status": "invalid-token",
           "errorMessage": "Invalid token or session expired."}


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, fake: FakeTechnitium, path: str, *, method: str = "GET",
               token: str | None = None, bearer: str | None = None, headers: dict[str, str] | None = None,
               data: dict[str, str] | None = None, query: dict[str, str] | None = None,
               **params: str) -> dict[str, Any]:
    params.update(query or {})
    if token is not None:
        params["token"] = token
    hdrs = dict(headers or {})
    if bearer is not None:
        hdrs["Authorization"] = f"Bearer {bearer}"
    async with http.request(method, fake.url + path, params=params, headers=hdrs, data=data) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        body: dict[str, Any] = await resp.json()
        return body


async def login(http: aiohttp.ClientSession, fake: FakeTechnitium, user: str = "alice",
                password: str = "alice-pass", *, headers: dict[str, str] | None = None,
                **extra: str) -> dict[str, Any]:
    params = {"user": user, "pass": password, **extra}
    return await call(http, fake, "/api/user/login", headers=headers, query=params)


async def test_login_ok_shape(technitium: FakeTechnitium, http: aiohttp.ClientSession) -> None:
    body = await login(http, technitium, includeInfo="true")
    assert list(body) == ["displayName", "username", "isSsoUser", "totpEnabled", "token", "info", "server",
                          "status"]
    assert body["status"] == "ok" and body["username"] == "alice" and body["isSsoUser"] is False
    assert body["totpEnabled"] is False and body["displayName"] == "Alice Example"
    assert re.fullmatch(r"[0-9a-f]{64}", body["token"])
    assert list(body["info"]["permissions"]) == list(PERMISSION_SECTIONS)
    assert body["info"]["permissions"]["Zones"] == {"canView": True, "canModify": True, "canDelete": True}
    assert "response" not in body
    assert technitium.sessions[body["token"]].type == "Standard"
    assert "info" not in await login(http, technitium)


async def test_login_post_form_and_wrong_password(technitium: FakeTechnitium,
                                                  http: aiohttp.ClientSession) -> None:
    ok = await call(http, technitium, "/api/user/login", method="POST",
                    data={"user": "ALICE", "pass": "alice-pass"})
    assert ok["status"] == "ok" and ok["username"] == "alice"  # usernames are case-insensitive
    bad = await login(http, technitium, password="nope")
    assert bad == {"server": "fake-technitium", "status": "error",
                   "errorMessage": "Invalid username or password for user: alice"}
    missing = await call(http, technitium, "/api/user/login", user="alice")
    assert missing["errorMessage"] == "Parameter 'pass' missing."


async def test_totp_flow(technitium: FakeTechnitium, http: aiohttp.ClientSession) -> None:
    need = await login(http, technitium, "totpuser", "totp-pass")
    assert need["status"] == "2fa-required" and "token" not in need
    valid = {pyotp.TOTP(technitium.totp_secret or "").at(technitium.now(), counter_offset=i)
             for i in range(-10, 11)}
    wrong = next(c for c in (f"{n:06d}" for n in range(1000)) if c not in valid)
    bad = await login(http, technitium, "totpuser", "totp-pass", totp=wrong)
    assert bad["status"] == "error" and "time-based one-time password" in bad["errorMessage"]
    ok = await login(http, technitium, "totpuser", "totp-pass", totp=technitium.totp_now())
    assert ok["status"] == "ok" and ok["totpEnabled"] is True


async def test_invalid_token_envelope(technitium: FakeTechnitium, http: aiohttp.ClientSession) -> None:
    assert await call(http, technitium, "/api/zones/list") == INVALID
    assert await call(http, technitium, "/api/zones/list", bearer="0" * 64) == INVALID
    assert await call(http, technitium, "/api/no/such/call") == INVALID
    token = (await login(http, technitium))["token"]
    async with http.get(technitium.url + "/api/no/such/call", params={"token": token}) as resp:
        assert resp.status == 404 and await resp.read() == b""


async def test_sliding_expiry_with_fake_clock(http: aiohttp.ClientSession) -> None:
    clock = FakeClock(1_800_000_000.0)
    async with FakeTechnitium(clock=clock) as fake:
        fake.add_user("alice", "alice-pass")
        fake.add_user("forever", "pw", session_timeout=0)
        token = (await login(http, fake))["token"]
        forever = (await login(http, fake, "forever", "pw"))["token"]
        for _ in range(3):  # polling session/get keeps the session alive indefinitely
            clock.advance(1700)
            assert (await call(http, fake, "/api/user/session/get", bearer=token))["status"] == "ok"
        fake.advance(1800)  # exactly lastSeen + timeout is still valid
        assert (await call(http, fake, "/api/zones/list", bearer=token))["response"] == {"zones": []}
        fake.advance(1801)
        assert await call(http, fake, "/api/zones/list", bearer=token) == INVALID
        assert token not in fake.sessions
        assert (await call(http, fake, "/api/zones/list", bearer=forever))["status"] == "ok"


async def test_v14_reads_only_token_field(
    technitium_v14: FakeTechnitium, http: aiohttp.ClientSession
) -> None:
    body = await login(http, technitium_v14, includeInfo="true")
    assert "isSsoUser" not in body and body["status"] == "ok"
    token = body["token"]
    bearer_only = await call(http, technitium_v14, "/api/zones/list", bearer=token)
    assert bearer_only == {"server": "fake-technitium", "status": "error",
                           "errorMessage": "Parameter 'token' missing."}
    assert await call(http, technitium_v14, "/api/zones/list", bearer=token, token="f" * 64) == INVALID
    assert (await call(http, technitium_v14, "/api/zones/list", token=token))["status"] == "ok"
    form = await call(http, technitium_v14, "/api/zones/list", method="POST", data={"token": token})
    assert form["status"] == "ok"
    async with http.get(
        technitium_v14.url + "/api/user/createSingleUseToken", params={"token": token}
    ) as resp:
        assert resp.status == 404  # v14 has no single-use tokens


async def test_v15_header_wins_over_field(technitium: FakeTechnitium, http: aiohttp.ClientSession) -> None:
    token = (await login(http, technitium))["token"]
    assert (await call(http, technitium, "/api/zones/list", bearer=token, token="f" * 64))["status"] == "ok"
    assert await call(http, technitium, "/api/zones/list", bearer="f" * 64, token=token) == INVALID
    assert (await call(http, technitium, "/api/zones/list", token=token))["status"] == "ok"
    assert (await call(http, technitium, "/api/zones/list", method="POST", data={"token": token}))[
        "status"
    ] == "ok"
    # repeated values are joined with "," by ASP.NET, so a smuggled second token breaks the first
    async with http.get(technitium.url + "/api/zones/list", params=[("token", token), ("token", token)]) as r:
        assert await r.json() == INVALID


async def test_block_after_five_failures(technitium: FakeTechnitium, http: aiohttp.ClientSession) -> None:
    for _ in range(5):
        assert (await login(http, technitium, password="bad"))["status"] == "error"
    blocked = await login(http, technitium)
    assert blocked["status"] == "error"
    assert blocked["errorMessage"] == "Max limit of 5 attempts exceeded. Access blocked for 300 seconds."
    assert technitium.is_blocked("127.0.0.1")
    technitium.advance(299)
    assert (await login(http, technitium))["status"] == "error"
    technitium.advance(2)
    assert (await login(http, technitium))["status"] == "ok"
    assert technitium.failed_attempts == {}


async def test_admin_admin_not_counted(technitium: FakeTechnitium, http: aiohttp.ClientSession) -> None:
    for _ in range(8):
        bad = await login(http, technitium, "admin", "admin")
        assert bad["errorMessage"] == "Invalid username or password for user: admin"
    assert (await login(http, technitium))["status"] == "ok"
    for _ in range(4):
        await login(http, technitium, "admin", "wrong")  # admin with another password does count
    await login(http, technitium, password="bad")
    assert technitium.is_blocked("127.0.0.1")


async def test_x_real_ip_only_from_private_peer(
    technitium: FakeTechnitium, http: aiohttp.ClientSession
) -> None:
    for _ in range(5):
        await login(http, technitium, password="bad", headers={"X-Real-IP": "198.51.100.1"})
    assert technitium.is_blocked("198.51.100.1") and not technitium.is_blocked("127.0.0.1")
    assert technitium.requests[-1].client_ip == "198.51.100.1"
    assert (await login(http, technitium, headers={"X-Real-IP": "198.51.100.2"}))["status"] == "ok"
    assert (await login(http, technitium, headers={"X-Real-IP": "198.51.100.1"}))["status"] == "error"

    technitium.peer_ip = "203.0.113.7"  # a public peer: its X-Real-IP is ignored
    for _ in range(5):
        await login(http, technitium, password="bad", headers={"X-Real-IP": "192.0.2.50"})
    assert technitium.requests[-1].client_ip == "203.0.113.7"
    assert technitium.is_blocked("203.0.113.7") and not technitium.is_blocked("192.0.2.50")
    assert FakeTechnitium.is_trusted_proxy("::1") and not FakeTechnitium.is_trusted_proxy("2001:db8::1")
    assert FakeTechnitium._network("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"


async def test_logout_and_session_get(technitium: FakeTechnitium, http: aiohttp.ClientSession) -> None:
    token = (await login(http, technitium))["token"]
    current = await call(http, technitium, "/api/user/session/get", bearer=token)
    assert current["token"] == token and "permissions" in current["info"] and "response" not in current
    profile = await call(http, technitium, "/api/user/profile/get", bearer=token)
    assert profile["response"]["sessionTimeoutSeconds"] == 1800
    assert await call(http, technitium, "/api/user/logout", bearer=token) == {"server": "fake-technitium",
                                                                             "status": "ok"}
    assert token not in technitium.sessions
    assert await call(http, technitium, "/api/user/session/get", bearer=token) == INVALID
    assert (await call(http, technitium, "/api/user/logout"))["status"] == "error"  # no token at all


async def test_tokens_single_use_api_and_download(technitium: FakeTechnitium,
                                                  http: aiohttp.ClientSession) -> None:
    token = (await login(http, technitium))["token"]
    single = await call(http, technitium, "/api/user/createSingleUseToken", bearer=token)
    assert single["status"] == "ok" and single["response"]["username"] == "alice"
    once = single["response"]["token"]
    async with http.get(technitium.url + "/api/settings/backup", params={"token": once}) as resp:
        assert resp.status == 200 and resp.content_type == "application/zip"
        assert "dns.config" in zipfile.ZipFile(io.BytesIO(await resp.read())).namelist()
    assert await call(http, technitium, "/api/settings/backup", token=once) == INVALID

    api = await call(http, technitium, "/api/user/createToken", bearer=token, tokenName="ci")
    assert api["status"] == "ok" and api["tokenName"] == "ci" and "response" not in api
    technitium.advance(10 * 86400)
    assert (await call(http, technitium, "/api/zones/list", bearer=api["token"]))["status"] == "ok"
    denied = await call(http, technitium, "/api/user/createSingleUseToken", bearer=api["token"])
    assert denied["errorMessage"] == "Access was denied."


async def test_permissions_and_echo(technitium: FakeTechnitium, http: aiohttp.ClientSession) -> None:
    technitium.add_user("viewer", "pw", permissions={"Zones": {"canView": True}}, groups=[])
    viewer = (await login(http, technitium, "viewer", "pw", includeInfo="true"))
    assert viewer["info"]["permissions"]["Zones"] == {"canView": True, "canModify": False, "canDelete": False}
    # Every user is in Everyone (groups=[] or not), which views Dashboard but not Settings by default.
    assert viewer["info"]["permissions"]["Dashboard"]["canView"] is True
    assert viewer["info"]["permissions"]["Settings"]["canView"] is False
    denied = await call(http, technitium, "/api/zones/create", bearer=viewer["token"], zone="example.com")
    assert denied == {"server": "fake-technitium", "status": "error", "errorMessage": "Access was denied."}
    token = (await login(http, technitium))["token"]
    created = await call(http, technitium, "/api/zones/create", bearer=token, zone="example.com")
    assert created["response"] == {"domain": "example.com"}
    listed = await call(http, technitium, "/api/zones/list", bearer=viewer["token"])
    assert [z["name"] for z in listed["response"]["zones"]] == ["example.com"]

    echo = await call(http, technitium, "/api/echo", method="POST", bearer=token, headers={"X-Test": "1"},
                      data={"a": "b"}, q="1")
    got = echo["response"]
    assert got["method"] == "POST" and got["query"] == {"q": "1"} and got["form"] == {"a": "b"}
    assert got["headers"]["authorization"] == f"Bearer {token}" and got["headers"]["x-test"] == "1"
    assert got["bodyLength"] == 3 and got["session"]["username"] == "alice"


async def test_non_api_paths(technitium: FakeTechnitium, http: aiohttp.ClientSession) -> None:
    async with http.get(technitium.url + "/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
    async with http.get(technitium.url + "/nope.html") as resp:
        assert resp.status == 404


@pytest.mark.parametrize("version", [14, 15])
async def test_expire_all_and_revoke(version: int, http: aiohttp.ClientSession) -> None:
    async with FakeTechnitium(api_version=version) as fake:
        fake.add_user("alice", "alice-pass")
        first = (await login(http, fake))["token"]
        second = fake.create_session("alice")
        assert fake.revoke(second) and not fake.revoke(second)
        fake.expire_all()
        assert await call(http, fake, "/api/zones/list", token=first) == INVALID


# ---- users, groups, permission tables, admin calls and the DNS client (APIDOCS §Administration, §DNS Client;
# WebServiceAuthApi.cs, AuthManager.cs, WebServiceApi.ResolveQueryAsync) ------------------------------------

DENIED = {"server": "fake-technitium", "status": "error", "errorMessage": "Access was denied."}


def flags(view: bool, modify: bool = False, delete: bool = False) -> dict[str, bool]:
    return {"canView": view, "canModify": modify, "canDelete": delete}


async def test_everyone_cannot_be_left_and_grants_what_it_grants(technitium: FakeTechnitium,
                                                                 http: aiohttp.ClientSession) -> None:
    admin = (await login(http, technitium))["token"]
    made = await call(http, technitium, "/api/admin/users/create", bearer=admin, user="Bob",
                      query={"pass": "bob-pass", "displayName": "Bob"})
    assert made["status"] == "ok" and made["response"]["username"] == "bob"        # lower-cased, wrapped
    assert list(made["response"]) == ["displayName", "username", "isSsoUser", "totpEnabled", "disabled",
                                      "previousSessionLoggedOn", "previousSessionRemoteAddress",
                                      "recentSessionLoggedOn", "recentSessionRemoteAddress"]
    again = await call(http, technitium, "/api/admin/users/create", bearer=admin, user="bob",
                       query={"pass": "y"})
    assert again["errorMessage"] == "User already exists: bob"
    # memberOfGroups replaces the memberships, but Everyone is put back (and not listed)
    s = await call(http, technitium, "/api/admin/users/set", bearer=admin, user="bob",
                   memberOfGroups="DNS Administrators")
    assert s["response"]["memberOfGroups"] == ["DNS Administrators"]
    assert technitium.users["bob"].groups == ["DNS Administrators", "Everyone"]
    s = await call(http, technitium, "/api/admin/users/set", bearer=admin, user="bob", memberOfGroups="")
    assert s["response"]["memberOfGroups"] == [] and technitium.users["bob"].groups == ["Everyone"]
    unknown = await call(http, technitium, "/api/admin/users/set", bearer=admin, user="bob",
                         memberOfGroups="Ops")
    assert unknown["errorMessage"] == "No such group exists: Ops"
    # effective permissions: Everyone's rows only
    bob = await login(http, technitium, "bob", "bob-pass", includeInfo="true")
    p = bob["info"]["permissions"]
    assert p["DnsClient"] == p["Zones"] == p["Logs"] == flags(True)
    assert p["Settings"] == p["Administration"] == flags(False)
    # a non-administrator is refused every admin call
    for path in ("/api/admin/users/list", "/api/admin/users/create", "/api/admin/permissions/get",
                 "/api/admin/sessions/createToken", "/api/admin/groups/list"):
        answer = await call(http, technitium, path, bearer=bob["token"], user="x", section="Zones")
        assert answer == DENIED, path


async def test_permission_tables_replace_whole_and_keep_administrators(technitium: FakeTechnitium,
                                                                       http: aiohttp.ClientSession) -> None:
    admin = (await login(http, technitium))["token"]
    technitium.add_user("carol", "pw")
    got = await call(http, technitium, "/api/admin/permissions/get", bearer=admin, section="dnsclient",
                     includeUsersAndGroups="true")
    r = got["response"]
    assert r["section"] == "DnsClient" and r["userPermissions"] == []
    assert [g["name"] for g in r["groupPermissions"]] == ["Administrators", "DNS Administrators", "Everyone"]
    assert "carol" in r["users"] and "Everyone" in r["groups"]
    out = await call(http, technitium, "/api/admin/permissions/set", bearer=admin, section="DnsClient",
                     userPermissions="carol|true|false|false|ghost|true|true|true",
                     groupPermissions="Everyone|false|false|false")
    r = out["response"]
    assert r["userPermissions"] == [{"username": "carol", **flags(True)}]              # unknown user skipped
    assert r["groupPermissions"] == [{"name": "Administrators", **flags(True, True, True)},   # always all
                                     {"name": "Everyone", **flags(False)}]    # DNS Administrators gone
    assert "users" not in r
    assert technitium.permitted("carol", "DnsClient", 1)
    # Administration: Delete is needed to set a table (Modify is not enough)
    technitium.add_user("mod", "pw", permissions={"Administration": 3})
    mod = (await login(http, technitium, "mod", "pw"))["token"]
    assert await call(http, technitium, "/api/admin/permissions/set", bearer=mod, section="Zones",
                      userPermissions="") == DENIED
    bad = await call(http, technitium, "/api/admin/permissions/get", bearer=admin, section="Nope")
    assert bad["errorMessage"] == "Requested value 'Nope' was not found."


async def test_admin_api_tokens_and_the_dns_client(technitium: FakeTechnitium,
                                                   http: aiohttp.ClientSession) -> None:
    admin = (await login(http, technitium))["token"]
    technitium.add_user("bg", "pw", permissions={})
    made = await call(http, technitium, "/api/admin/sessions/createToken", bearer=admin, user="bg",
                      tokenName="authproxy")
    assert made["status"] == "ok" and set(made["response"]) == {"username", "tokenName", "token"}
    token = made["response"]["token"]
    assert technitium.sessions[token].type == "ApiToken"
    missing = await call(http, technitium, "/api/admin/sessions/createToken", bearer=admin, user="nobody",
                         tokenName="t")
    assert missing["errorMessage"] == "No such user exists: nobody"
    technitium.ptr_records["192.0.2.10"] = "laptop.lan"
    found = await call(http, technitium, "/api/dnsClient/resolve", bearer=token, server="this-server",
                       domain="192.0.2.10", type="PTR")
    result = found["response"]["result"]
    assert result["RCODE"] == "NoError" and result["Question"][0]["Name"] == "10.2.0.192.in-addr.arpa"
    assert result["Answer"][0]["RDATA"] == {"Domain": "laptop.lan"}
    by_name = await call(http, technitium, "/api/dnsClient/resolve", bearer=token, server="this-server",
                         domain="10.2.0.192.in-addr.arpa", type="PTR")
    assert by_name["response"]["result"]["Answer"][0]["RDATA"]["Domain"] == "laptop.lan"
    nx = await call(http, technitium, "/api/dnsClient/resolve", bearer=token, server="this-server",
                    domain="192.0.2.11", type="PTR")
    assert nx["response"]["result"]["RCODE"] == "NXDomain" and nx["response"]["result"]["Answer"] == []
    # DnsClient: View is what it takes: without it (Everyone's row cleared), Access was denied.
    technitium.set_group_permission("Everyone", "DnsClient", 0)
    assert await call(http, technitium, "/api/dnsClient/resolve", bearer=token, server="this-server",
                      domain="192.0.2.10", type="PTR") == DENIED
    # deleting the user ends its API token too
    await call(http, technitium, "/api/admin/users/delete", bearer=admin, user="bg")
    assert await call(http, technitium, "/api/user/session/get", bearer=token) == INVALID
