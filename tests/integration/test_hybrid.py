"""Hybrid mode against the Technitium fake: people as themselves; the background token checked at start
and every few minutes; PTR names only with a safe token; service clients by API key, audited apart
from people; anonymous requests refused on the proxy and on every forward-auth endpoint; and the
migration from a shared admin token (TECHNITIUM_CLUSTER_TOKEN), by API and on the command line."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from authproxy import keys
from authproxy.login.service import new_key
from tests.fakes.technitium import ADMIN_GROUPS, FakeTechnitium
from tests.integration.conftest import LOGIN, ME, SESSION, Audit
from tests.integration.test_cli import ROOT, base_env
from tests.integration.test_forward_auth import proxy_headers
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env
from tests.support.procs import ManagedProcess, free_port
from tests.support.technitium import ALICE

MIGRATE = "/_authproxy/api/auth/background-token/migrate"
BG = "bgptr"
CLIENT = {"X-Forwarded-For": "198.51.100.7"}
MODIFY, DELETE = 2, 4


def background_token(fake: FakeTechnitium, **permissions: int) -> str:
    """A dedicated user (in Everyone only, plus `permissions` of its own) and a non-expiring API token."""
    fake.add_user(BG, "bg-pass", permissions=permissions)
    return fake.create_session(BG, type="ApiToken", token_name="authproxy")


async def hybrid(make_gateway: MakeGateway, fake: FakeTechnitium, token: str | None, **env: str) -> Gateway:
    extra = {"TECHNITIUM_BACKGROUND_TOKEN": token} if token is not None else {}
    return await make_gateway(gateway_env(fake.url, AUTH_MODE="hybrid", **extra, **env))


async def signed_in(c: GatewayClient) -> GatewayClient:
    """`c` signed in as alice, a Technitium administrator: /me then says why a token is (not) safe."""
    assert (await c.login(*ALICE)).status == 200
    return c


async def me(c: GatewayClient) -> dict[str, Any]:
    resp = await c.request("GET", ME)
    body: dict[str, Any] = await resp.json()
    return body


def resolves(fake: FakeTechnitium) -> list[str]:
    """The token each dnsClient/resolve call came with."""
    return [
        r.headers.get("Authorization", "")[7:] or r.query.get("token", "")
        for r in fake.requests_to("/api/dnsClient/resolve")
    ]


# ---- the check -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "sections", "words"),
    [
        (
            "admin",
            [
                "Administration",
                "Allowed",
                "Apps",
                "Blocked",
                "Cache",
                "Dashboard",
                "DhcpServer",
                "DnsClient",
                "Logs",
                "Settings",
                "Zones",
            ],
            "Administration can modify and delete",
        ),
        ("zones-modify", ["Zones"], "Zones can modify"),
        ("administration-view", ["Administration"], "Administration can view"),
    ],
)
async def test_a_too_privileged_token_is_refused_with_the_reason_and_sections(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    client_for: Callable[[Gateway], GatewayClient],
    audit: Audit,
    setup: str,
    sections: list[str],
    words: str,
) -> None:
    if setup == "admin":
        technitium.add_user(BG, "bg-pass", groups=ADMIN_GROUPS)
        token = technitium.create_session(BG, type="ApiToken", token_name="authproxy")
    elif setup == "zones-modify":
        # through a group: the effective permissions are judged, not the user's own rows
        technitium.add_group("Editors", permissions={"Zones": MODIFY | 1})
        technitium.add_user(BG, "bg-pass", groups=["Editors"])
        token = technitium.create_session(BG, type="ApiToken", token_name="authproxy")
    else:
        token = background_token(technitium, Administration=1)
    technitium.ptr_records["198.51.100.7"] = "laptop.lan"
    gw = await hybrid(make_gateway, technitium, token)
    c = client_for(gw)
    await c.login(*ALICE)  # an administrator sees why (README "What /me answers")
    state = (await me(c))["backgroundPtrToken"]
    assert state["configured"] is True and state["validated"] is True and state["okForPtr"] is False
    assert state["tooPrivilegedSections"] == sections and words in state["reason"]
    assert token not in str(state)
    # background work is skipped entirely: no PTR lookup, no name
    await c.request("POST", LOGIN, headers=CLIENT, json={"username": ALICE[0], "password": ALICE[1]})
    info = await (await c.request("GET", SESSION)).json()
    assert info["clientIp"] == "198.51.100.7" and info["clientName"] is None
    assert resolves(technitium) == []
    [line] = audit.lines("background_token")
    assert (line["outcome"], line["actor"], line["too_privileged"]) == ("unsafe", "service", sections)
    assert token not in str(audit.lines())


async def test_a_token_that_cannot_view_dns_client_is_refused(
    make_gateway: MakeGateway, technitium: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    technitium.set_group_permission("Everyone", "DnsClient", 0)
    gw = await hybrid(make_gateway, technitium, background_token(technitium))
    state = (await me(await signed_in(client_for(gw))))["backgroundPtrToken"]
    assert (state["validated"], state["okForPtr"], state["tooPrivilegedSections"]) == (True, False, [])
    assert "lacks DnsClient: View" in state["reason"]


async def test_an_unreadable_token_disables_background_work(
    make_gateway: MakeGateway, technitium: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    gw = await hybrid(make_gateway, technitium, "f" * 64)  # no such session upstream
    state = (await me(await signed_in(client_for(gw))))["backgroundPtrToken"]
    assert (state["configured"], state["validated"], state["okForPtr"]) == (True, False, False)
    assert "refused by Technitium" in state["reason"]


async def test_a_safe_token_enables_ptr_names_cached_and_asked_with_that_token(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    client_for: Callable[[Gateway], GatewayClient],
    audit: Audit,
) -> None:
    token = background_token(technitium)
    technitium.ptr_records["198.51.100.7"] = "laptop.lan"
    gw = await hybrid(make_gateway, technitium, token)
    c = client_for(gw)
    resp = await c.request("POST", LOGIN, headers=CLIENT, json={"username": ALICE[0], "password": ALICE[1]})
    assert resp.status == 200
    body = await me(c)
    assert body["backgroundPtrToken"] == {
        "configured": True,
        "validated": True,
        "okForPtr": True,
        "okForBackground": True,
        "reason": "ok: DnsClient: View, nothing it can change",
        "tooPrivilegedSections": [],
    }
    assert body["migrationRequired"] is False and body["authMode"] == "hybrid" and body["sessionAuthEnabled"]
    [success] = [x for x in audit.lines("login") if x["outcome"] == "success"]
    assert success["client_name"] == "laptop.lan" and success["actor"] == "user"
    for _ in range(3):
        info = await (await c.request("GET", SESSION)).json()
        assert (info["clientIp"], info["clientName"]) == ("198.51.100.7", "laptop.lan")
    assert resolves(technitium) == [token]  # once (cached), with the background token, not alice's
    await c.request("POST", "/_authproxy/api/auth/logout", headers=CLIENT)
    [logout] = audit.lines("logout")
    assert (logout["client_ip"], logout["client_name"], logout["actor"]) == (
        "198.51.100.7",
        "laptop.lan",
        "user",
    )
    assert resolves(technitium) == [token]  # still the one lookup
    # an address without a name is asked once too, and then remembered as none
    other = client_for(gw)
    await other.request(
        "POST",
        LOGIN,
        headers={"X-Forwarded-For": "203.0.113.9"},
        json={"username": ALICE[0], "password": ALICE[1]},
    )
    for _ in range(2):
        assert (await (await other.request("GET", SESSION)).json())["clientName"] is None
    assert resolves(technitium) == [token, token]


async def test_the_ptr_cache_is_bounded(
    make_gateway: MakeGateway, technitium: FakeTechnitium, monkeypatch: pytest.MonkeyPatch
) -> None:
    from authproxy.login import background

    monkeypatch.setattr(background, "MAX_NAMES", 3)
    gw = await hybrid(make_gateway, technitium, background_token(technitium))
    work = gw.app[keys.BACKGROUND]
    for i in range(10):
        technitium.ptr_records[f"192.0.2.{i}"] = f"host{i}.lan"
        assert await work.name_for(f"192.0.2.{i}") == f"host{i}.lan"
    assert await work.name_for("192.0.2.9") == "host9.lan"
    assert len(resolves(technitium)) == 10  # the newest are still cached
    assert await work.name_for("192.0.2.0") == "host0.lan"
    assert len(resolves(technitium)) == 11  # the oldest was dropped: asked again
    assert await work.name_for("not-an-address") is None and len(resolves(technitium)) == 11


async def test_privileges_changed_upstream_are_noticed_at_the_next_check(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    client_for: Callable[[Gateway], GatewayClient],
    audit: Audit,
) -> None:
    gw = await hybrid(make_gateway, technitium, background_token(technitium), BACKGROUND_CHECK_INTERVAL="1s")
    c = await signed_in(client_for(gw))
    assert (await me(c))["backgroundPtrToken"]["okForPtr"] is True
    technitium.set_user_permission(BG, "Zones", 1 | MODIFY)  # an administrator widens it upstream

    async def state_until(ok: bool) -> dict[str, Any]:
        for _ in range(60):
            state: dict[str, Any] = (await me(c))["backgroundPtrToken"]
            if state["okForPtr"] is ok:
                return state
            await asyncio.sleep(0.1)
        raise AssertionError(f"okForPtr never became {ok}")

    state = await state_until(False)
    assert state["tooPrivilegedSections"] == ["Zones"]
    before = len(resolves(technitium))
    technitium.ptr_records["192.0.2.1"] = "box.lan"
    assert await gw.app[keys.BACKGROUND].name_for("192.0.2.1") is None and len(resolves(technitium)) == before
    technitium.set_user_permission(BG, "Zones", 1)  # and narrows it again
    await state_until(True)
    assert await gw.app[keys.BACKGROUND].name_for("192.0.2.1") == "box.lan"
    assert [x["outcome"] for x in audit.lines("background_token")] == ["safe", "unsafe", "safe"]


PUBLIC_ME = {"authMode", "sessionAuthEnabled", "httpsDetected", "authenticated", "user", "admin", "loginUrl",
             "backgroundPtrToken", "migrationRequired"}


async def test_me_tells_a_person_only_their_own_identity_and_an_administrator_the_rest(
    make_gateway: MakeGateway, technitium: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    token = background_token(technitium, Zones=1 | MODIFY)   # unsafe: there is a reason to tell
    technitium.add_user("carol", "carol-pass", permissions={})  # Everyone only: no administrator
    gw = await hybrid(make_gateway, technitium, token)
    anon, carol, alice = client_for(gw), client_for(gw), client_for(gw)
    await carol.login("carol", "carol-pass")
    await alice.login(*ALICE)
    for who, c in (("anonymous", anon), ("carol", carol)):
        body = await me(c)
        assert set(body) == PUBLIC_ME, who
        assert body["backgroundPtrToken"] == {"configured": True, "validated": True, "okForPtr": False}, who
        assert body["admin"] is False and body["user"] == (None if c is anon else "carol")
        assert "Zones" not in json.dumps(body) and "technitium" not in json.dumps(body), who
    admin = await me(alice)
    assert set(admin) == PUBLIC_ME | {"trustProxy", "sites"} and admin["admin"] is True
    assert admin["backgroundPtrToken"]["tooPrivilegedSections"] == ["Zones"]
    assert admin["sites"] == [{"name": "technitium", "type": "technitium",
                               "backgroundToken": admin["backgroundPtrToken"]}]
    for body in (await me(anon), await me(carol), admin):
        assert token not in json.dumps(body)


# ---- who may use the service credential ------------------------------------------------------------------


async def test_anonymous_requests_in_hybrid_mode_are_refused_on_the_proxy_and_every_forward_auth_endpoint(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    http_client: aiohttp.ClientSession,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    token = background_token(technitium)
    _, entry = new_key("ci")
    gw = await hybrid(make_gateway, technitium, token, FORWARD_AUTH_PORT="0", SERVICE_API_KEYS=entry)
    c = client_for(gw)
    api = await c.request("GET", "/api/zones/list")
    assert api.status == 401 and (await api.json())["error"] == "unauthenticated"
    page = await c.request("GET", "/", headers={"Accept": "text/html"})
    assert page.status == 302 and page.headers["Location"].startswith("/_authproxy/login?rd=")
    post = await c.request("POST", "/api/zones/create?zone=x.example", headers={"Origin": c.origin})
    assert post.status == 401
    url = "https://dns.example.com/api/zones/list"
    for path in (
        "/_authproxy/verify",
        "/_authproxy/verify/caddy",
        "/_authproxy/verify/traefik",
        "/_authproxy/verify/nginx",
    ):
        kind = path.rsplit("/", 1)[1] if path.count("/") == 3 else "traefik"
        async with http_client.get(gw.forward_auth_url + path, headers=proxy_headers(kind, url)) as resp:
            assert resp.status == 401, path
            assert "Authorization" not in resp.headers and "X-Authproxy-Token" not in resp.headers
        # a Bearer that is no service key (a UI's placeholder, a guess) is anonymous too
        guess = [*proxy_headers(kind, url), ("Authorization", "Bearer " + "0" * 64)]
        async with http_client.get(gw.forward_auth_url + path, headers=guess) as resp:
            assert resp.status == 401, path
    # upstream, the background token was only ever used for its own check
    used = {
        r.path for r in technitium.requests if token in (r.headers.get("Authorization", "") + r.raw_query)
    }
    assert used == {"/api/user/session/get"}


async def test_service_clients_and_people_are_audited_apart(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    http_client: aiohttp.ClientSession,
    client_for: Callable[[Gateway], GatewayClient],
    audit: Audit,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="authproxy")
    token = background_token(technitium)
    key, entry = new_key("backup-job")
    gw = await hybrid(make_gateway, technitium, token, FORWARD_AUTH_PORT="0", SERVICE_API_KEYS=entry)
    service = client_for(gw)
    echo = await service.request("GET", "/api/echo", headers={"X-API-Key": key})
    got = (await echo.json())["response"]
    assert echo.status == 200 and got["session"] == {
        "username": BG,
        "type": "ApiToken",
        "tokenName": "authproxy",
    }
    assert "x-api-key" not in got["headers"]  # the key is authproxy's: never sent upstream
    bearer = await service.request("GET", "/api/echo", headers={"Authorization": f"Bearer {key}"})
    assert (await bearer.json())["response"]["session"]["username"] == BG
    person = client_for(gw)
    await person.login(*ALICE)
    mine = await (await person.request("GET", "/api/echo")).json()
    assert mine["response"]["session"]["username"] == "alice"  # a person as themselves
    wrong = await service.request("GET", "/api/echo", headers={"X-API-Key": key + "x"})
    assert wrong.status == 401 and (await wrong.json())["error"] == "invalid_api_key"
    # forward auth: the service client's check answers with the service credential
    url = "https://dns.example.com/api/zones/list"
    async with http_client.get(
        gw.forward_auth_url + "/_authproxy/verify/caddy",
        headers=[*proxy_headers("caddy", url), ("X-API-Key", key)],
    ) as resp:
        assert resp.status == 200 and resp.headers["Authorization"] == f"Bearer {token}"

    service_lines = audit.lines("service_request")
    assert [(x["outcome"], x["actor"], x["user"]) for x in service_lines] == [
        ("allowed", "service", "backup-job"),
        ("allowed", "service", "backup-job"),
        ("invalid_key", "service", ""),
        ("allowed", "service", "backup-job"),
    ]
    assert service_lines[0]["path"] == "/api/echo" and service_lines[0]["via"] == "api_key"
    logins = audit.lines("login")
    assert [(x["actor"], x["user"]) for x in logins] == [("user", "alice")]
    assert key not in str(audit.lines()) and token not in str(audit.lines())
    for record in caplog.records:  # no log line at all, at DEBUG, names the key or the service token
        text = record.getMessage() + str(getattr(record, "fields", ""))
        assert key not in text and token not in text, record.getMessage()
    # nor does the echo (the service token is a placeholder in answers, as in AUTH_MODE=none)
    assert token not in json.dumps(got) and key not in json.dumps(got)

    # the same client once the token turns unsafe: refused, never the token
    technitium.set_user_permission(BG, "Settings", MODIFY)
    await gw.app[keys.BACKGROUND].check("technitium")
    refused = await service.request("GET", "/api/echo", headers={"X-API-Key": key})
    assert refused.status == 503 and (await refused.json())["error"] == "service_credential_unsafe"
    assert audit.lines("service_request")[-1]["outcome"] == "service_credential_unsafe"


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_wrong_api_keys_are_throttled_per_address_like_failed_sign_ins(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    http_client: aiohttp.ClientSession,
    client_for: Callable[[Gateway], GatewayClient],
    audit: Audit,
    request: pytest.FixtureRequest,
    store: str,
) -> None:
    key, entry = new_key("ci")
    redis = {"REDIS_URL": request.getfixturevalue("redis_url")} if store == "redis" else {}
    gw = await hybrid(make_gateway, technitium, background_token(technitium), FORWARD_AUTH_PORT="0",
                      SERVICE_API_KEYS=entry, LOGIN_MAX_FAILURES="3", **redis)
    c = client_for(gw)
    guesser = {"X-Forwarded-For": "198.51.100.66"}
    for i in range(3):
        wrong = await c.request("GET", "/api/echo", headers={**guesser, "X-API-Key": f"apk_guess{i}"})
        assert wrong.status == 401 and (await wrong.json())["error"] == "invalid_api_key"
    for presented in ("apk_guess9", key):   # spent: refused before any key is compared, the right one too
        over = await c.request("GET", "/api/echo", headers={**guesser, "X-API-Key": presented})
        assert over.status == 429 and (await over.json())["error"] == "too_many_attempts"
        assert 0 < int(over.headers["Retry-After"]) <= 15 * 60
    # through forward auth, the address the proxy names counts the same
    url = "https://dns.example.com/api/zones/list"
    async with http_client.get(
        gw.forward_auth_url + "/_authproxy/verify/caddy",
        headers=[*proxy_headers("caddy", url), ("X-Forwarded-For", "198.51.100.66"), ("X-API-Key", key)],
    ) as resp:
        assert resp.status == 429 and "Authorization" not in resp.headers
    # another address is not held up, and a right key is not counted
    other = {"X-Forwarded-For": "203.0.113.5", "X-API-Key": key}
    for _ in range(5):
        assert (await c.request("GET", "/api/echo", headers=other)).status == 200
    outcomes = [x["outcome"] for x in audit.lines("service_request") if x["client_ip"] == "198.51.100.66"]
    assert outcomes == ["invalid_key"] * 3 + ["throttled"] * 3


async def test_ptr_names_that_are_no_host_names_are_not_shown_or_logged(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    client_for: Callable[[Gateway], GatewayClient],
    audit: Audit,
) -> None:
    """A PTR record is whatever the owner of the reverse zone wrote: a line break with a forged audit
    line, an escape sequence, a space or an overlong name is no name; a proper one still is."""
    gw = await hybrid(make_gateway, technitium, background_token(technitium))
    bad = {
        "192.0.2.21": 'evil.lan\r\n{"event": "login", "outcome": "success", "user": "admin"}',
        "192.0.2.22": "evil\x1b[2J.lan",
        "192.0.2.23": "two words.lan",
        "192.0.2.24": ".".join(["a" * 63] * 4) + ".lan",          # 260 characters
        "192.0.2.25": "x" * 64 + ".lan",                            # a label over 63
        "192.0.2.26": "caf\u00e9.lan",
    }
    technitium.ptr_records.update(bad)
    technitium.ptr_records["192.0.2.27"] = "Printer-2.LAN."
    for address in [*bad, "192.0.2.27"]:
        c = client_for(gw)
        resp = await c.request("POST", LOGIN, headers={"X-Forwarded-For": address},
                               json={"username": ALICE[0], "password": ALICE[1]})
        assert resp.status == 200
        info = await (await c.request("GET", SESSION)).json()
        assert info["clientName"] == ("printer-2.lan" if address == "192.0.2.27" else None), address
    named = {x["client_ip"]: x.get("client_name") for x in audit.lines("login") if x["outcome"] == "success"}
    assert named == {**dict.fromkeys(bad), "192.0.2.27": "printer-2.lan"}
    assert not any("evil" in str(line) or "words" in str(line) for line in audit.lines())


# ---- the migration from a shared admin token -------------------------------------------------------------


async def test_migration_end_to_end(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    client_for: Callable[[Gateway], GatewayClient],
    audit: Audit,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="authproxy")
    cluster = technitium.create_session("alice", type="ApiToken", token_name="cluster")
    technitium.add_user("authproxy-background", "taken")  # the name is taken: the new user gets a suffix
    technitium.add_user("carol", "carol-pass", permissions={})  # may not administer users
    gw = await make_gateway(gateway_env(technitium.url, AUTH_MODE="hybrid", TECHNITIUM_CLUSTER_TOKEN=cluster))
    anon = client_for(gw)
    body = await me(anon)
    assert body["migrationRequired"] is True and body["backgroundPtrToken"]["configured"] is False
    page = await (await anon.request("GET", "/_authproxy/login")).text()
    assert 'id="migration"' in page and "TECHNITIUM_CLUSTER_TOKEN" in page and cluster not in page
    assert (await anon.request("POST", MIGRATE)).status == 401

    carol = client_for(gw)
    await carol.login("carol", "carol-pass")
    denied = await carol.request("POST", MIGRATE, json={"password": "carol-pass"})
    assert denied.status == 403 and (await denied.json())["error"] == "forbidden"
    assert set(technitium.users) == {"alice", "totpuser", "authproxy-background", "carol"}  # nothing made
    # checked with carol's own token before anything is attempted
    assert [r.path for r in technitium.requests if r.path.startswith("/api/admin/")] == []

    alice = client_for(gw)
    await alice.login(*ALICE)
    sessions_before = {t for t, x in technitium.sessions.items() if x.username == "alice"}
    resp = await alice.request("POST", MIGRATE, json={"site": "technitium", "password": ALICE[1]})
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    made = await resp.json()
    token = made["token"]
    assert made["username"] == "authproxy-background-2" and re.fullmatch(r"[0-9a-f]{64}", token)
    assert made["envLine"] == f"TECHNITIUM_BACKGROUND_TOKEN={token}" and made["check"]["okForPtr"] is True
    steps = [(r.path, dict(r.form or {})) for r in technitium.requests if r.path.startswith("/api/admin/")]
    assert [p for p, _ in steps] == [
        "/api/admin/users/list",
        "/api/admin/users/create",
        "/api/admin/users/set",
        "/api/admin/permissions/get",
        "/api/admin/permissions/set",
        "/api/admin/sessions/createToken",
    ]
    assert steps[1][1]["user"] == "authproxy-background-2"  # the name suffixed
    assert steps[2][1] == {"user": "authproxy-background-2", "memberOfGroups": ""}  # out of every group
    assert steps[4][1] == {
        "section": "DnsClient",
        "userPermissions": "authproxy-background-2|true|false|false",
    }
    user = technitium.users["authproxy-background-2"]
    assert user.groups == ["Everyone"] and user.permissions == {"DnsClient": 1}
    assert technitium.sessions[token].type == "ApiToken"
    # done with the token alice's password step-up just got (never the cluster token), signed out after
    admin_calls = [r for r in technitium.requests if r.path.startswith("/api/admin/")]
    assert admin_calls and all(cluster not in r.headers.get("Authorization", "") for r in admin_calls)
    assert all(r.headers["Authorization"][7:] not in sessions_before for r in admin_calls)
    assert {t for t, x in technitium.sessions.items() if x.username == "alice"} == sessions_before
    # nothing of it logged or stored
    assert all(
        token not in r.getMessage() and token not in str(getattr(r, "fields", "")) for r in caplog.records
    )
    assert [x["outcome"] for x in audit.lines("background_token_migration")] == ["forbidden", "success"]
    assert all(token not in blob for blob in _store_blobs(gw))

    # the operator puts the line in the env file, removes the cluster token, restarts
    after = await make_gateway(
        gateway_env(technitium.url, AUTH_MODE="hybrid", TECHNITIUM_BACKGROUND_TOKEN=token)
    )
    c = client_for(after)
    assert (await c.login(*ALICE)).status == 200
    clean = await me(c)
    assert clean["migrationRequired"] is False and clean["authenticated"] is True
    assert clean["backgroundPtrToken"] == {
        "configured": True,
        "validated": True,
        "okForPtr": True,
        "okForBackground": True,
        "reason": "ok: DnsClient: View, nothing it can change",
        "tooPrivilegedSections": [],
    }
    assert 'id="migration"' not in await (await c.request("GET", "/_authproxy/login")).text()


async def test_migration_only_while_pending_and_only_after_a_password_step_up(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    client_for: Callable[[Gateway], GatewayClient],
    audit: Audit,
) -> None:
    cluster = technitium.create_session("alice", type="ApiToken", token_name="cluster")
    # no cluster token: nothing to migrate, whoever asks and whatever they send; Technitium not asked
    done = await hybrid(make_gateway, technitium, background_token(technitium))
    alice = client_for(done)
    await alice.login(*ALICE)
    logins = len(technitium.requests_to("/api/user/login"))
    for who in (alice, client_for(done)):   # signed in or not: nothing is pending
        resp = await who.request("POST", MIGRATE, json={"password": ALICE[1]})
        assert resp.status == 409 and (await resp.json())["error"] == "migration_not_pending"
    assert len(technitium.requests_to("/api/user/login")) == logins

    gw = await make_gateway(gateway_env(technitium.url, AUTH_MODE="hybrid", TECHNITIUM_CLUSTER_TOKEN=cluster,
                                        LOGIN_MAX_FAILURES="2"))
    alice = client_for(gw)
    await alice.login(*ALICE)
    # a session cookie is not enough: the password again, checked by Technitium
    for body in ({}, {"password": ""}, {"site": "technitium"}):
        resp = await alice.request("POST", MIGRATE, json=body)
        assert resp.status == 401 and (await resp.json())["error"] == "step_up_required", body
    for _ in range(2):
        resp = await alice.request("POST", MIGRATE, json={"password": "not-her-password"})
        assert resp.status == 401 and (await resp.json())["error"] == "invalid_credentials"
    # throttled like a sign-in (one budget): now even the right password waits
    resp = await alice.request("POST", MIGRATE, json={"password": ALICE[1]})
    assert resp.status == 429 and (await resp.json())["error"] == "too_many_attempts"
    assert int(resp.headers["Retry-After"]) > 0
    assert (await client_for(gw).login(*ALICE)).status == 429   # the sign-in shares it
    assert [r for r in technitium.requests if r.path.startswith("/api/admin/")] == []
    assert "authproxy-background" not in technitium.users
    steps = [(x["outcome"], x["user"]) for x in audit.lines("step_up")]
    assert steps == [("failure", "alice"), ("failure", "alice"), ("throttled", "alice")]


async def test_migration_of_a_site_without_a_cluster_token_is_not_pending(
    make_gateway: MakeGateway, technitium: FakeTechnitium, technitium_v14: FakeTechnitium,
    client_for: Callable[[Gateway], GatewayClient], tmp_path: Any,
) -> None:
    """Two Technitium sites, only `dns` still on a cluster token: migrating `nas` is refused."""
    cluster = technitium.create_session("alice", type="ApiToken", token_name="cluster")
    config = tmp_path / "authproxy.toml"
    config.write_text(f"""
auth_mode = "session"
[server]
trust_proxy = true
[[sites]]
name = "dns"
type = "technitium"
upstream_url = "{technitium.url}"
hosts = ["dns.example.com"]
cluster_token = "{cluster}"
[[sites]]
name = "nas"
type = "technitium"
upstream_url = "{technitium_v14.url}"
hosts = ["nas.example.com"]
""", encoding="utf-8")
    gw = await make_gateway({"SESSION_SECRET": "s" * 40, "ACCESS_LOG": "false"}, config_file=config)
    alice = client_for(gw)
    for site in ("dns", "nas"):
        resp = await alice.request("POST", LOGIN,
                                   json={"username": ALICE[0], "password": ALICE[1], "site": site})
        assert resp.status == 200, await resp.text()
    resp = await alice.request("POST", MIGRATE, json={"site": "nas", "password": ALICE[1]})
    assert resp.status == 409 and (await resp.json())["error"] == "migration_not_pending"
    assert technitium_v14.requests_to("/api/admin/users/create") == []


async def test_a_step_up_with_a_one_time_code_and_no_replay_of_the_sign_in_code(
    make_gateway: MakeGateway, technitium: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    cluster = technitium.create_session("alice", type="ApiToken", token_name="cluster")
    gw = await make_gateway(gateway_env(technitium.url, AUTH_MODE="hybrid", TECHNITIUM_CLUSTER_TOKEN=cluster))
    admin = client_for(gw)
    code = technitium.totp_now()
    assert (await admin.login("totpuser", "totp-pass", totp=code)).status == 200
    resp = await admin.request("POST", MIGRATE, json={"password": "totp-pass"})
    assert resp.status == 401 and (await resp.json())["error"] == "totp_required"
    resp = await admin.request("POST", MIGRATE, json={"password": "totp-pass", "totp": code})
    assert resp.status == 401 and (await resp.json())["error"] == "invalid_credentials"   # spent at sign-in
    technitium.advance(30)
    resp = await admin.request("POST", MIGRATE, json={"password": "totp-pass", "totp": technitium.totp_now()})
    assert resp.status == 200 and (await resp.json())["username"] == "authproxy-background"


def _store_blobs(gw: Gateway) -> list[str]:
    store = gw.app[keys.STORE]
    data = getattr(store, "_data", None)
    if isinstance(data, dict):
        return [repr(v) for v in data.values()]
    path = gw.config.server.data_dir / "sessions.sqlite3"
    return [path.read_bytes().decode("latin-1")] if path.exists() else []


async def test_migration_refuses_a_token_everyone_would_make_unsafe(
    make_gateway: MakeGateway, technitium: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    technitium.set_group_permission("Everyone", "Zones", 1 | MODIFY)  # cannot be left: no safe user possible
    cluster = technitium.create_session("alice", type="ApiToken", token_name="cluster")
    gw = await make_gateway(
        gateway_env(technitium.url, AUTH_SESSION_ENABLED="true", TECHNITIUM_CLUSTER_TOKEN=cluster)
    )
    alice = client_for(gw)
    await alice.login(*ALICE)
    resp = await alice.request("POST", MIGRATE, json={"password": ALICE[1]})
    body = await resp.json()
    assert resp.status == 409 and body["error"] == "unsafe_token" and "Zones can modify" in body["message"]
    assert "token" not in body and "authproxy-background" not in technitium.users  # taken away again


async def test_migration_on_the_command_line(technitium: FakeTechnitium, tmp_path: Any) -> None:
    cluster = technitium.create_session("alice", type="ApiToken", token_name="cluster")
    env = base_env(
        UPSTREAM_URL=technitium.url,
        UPSTREAM_TYPE="technitium",
        AUTH_MODE="hybrid",
        TRUST_PROXY="true",
        TECHNITIUM_CLUSTER_TOKEN=cluster,
        AUTHPROXY_DATA_DIR=str(tmp_path),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "authproxy",
        "technitium",
        "migrate",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    [line] = out.decode().splitlines()
    token = line.removeprefix("TECHNITIUM_BACKGROUND_TOKEN=")
    assert re.fullmatch(r"[0-9a-f]{64}", token) and token not in err.decode()
    assert "authproxy-background" in err.decode() and technitium.users["authproxy-background"].groups == [
        "Everyone"
    ]
    # a token that may not administer users: refused, nothing made
    weak = technitium.create_session("authproxy-background", type="ApiToken", token_name="x")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "authproxy",
        "technitium",
        "migrate",
        env={**env, "TECHNITIUM_CLUSTER_TOKEN": weak},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and out == b"" and "may not administer users" in err.decode()
    assert "authproxy-background-2" not in technitium.users
    # no cluster token configured: no migration is pending, and nothing is asked
    pending = {k: v for k, v in env.items() if k != "TECHNITIUM_CLUSTER_TOKEN"}
    pending["TECHNITIUM_BACKGROUND_TOKEN"] = token   # migrated: the line is in the env file
    asked = len(technitium.requests)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authproxy", "technitium", "migrate", env=pending, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and out == b"" and "no migration is pending" in err.decode()
    assert len(technitium.requests) == asked


async def test_service_key_on_the_command_line(tmp_path: Any) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "authproxy",
        "service-key",
        "ci",
        env=base_env(),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    key, entry = out.decode().splitlines()
    from authproxy.config.loader import load_config
    from authproxy.login.service import ApiKeys, ServiceClient

    config = load_config(
        {
            "UPSTREAM_URL": "http://127.0.0.1:1",
            "UPSTREAM_TYPE": "technitium",
            "TRUST_PROXY": "1",
            "AUTH_MODE": "hybrid",
            "TECHNITIUM_BACKGROUND_TOKEN": "t" * 64,
            "SERVICE_API_KEYS": entry,
        }
    )
    assert ApiKeys(config.server.service_api_keys).authenticate({"X-API-Key": key}) == ServiceClient(
        "ci", "api_key"
    )
    assert key not in entry


async def test_a_hung_upstream_does_not_hold_up_the_start(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    monkeypatch: pytest.MonkeyPatch,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    """The first check is waited for only briefly; its verdict lands when the upstream answers."""
    from authproxy.login import background

    monkeypatch.setattr(background, "STARTUP_WAIT", 0.2)
    token = background_token(technitium)
    release = asyncio.Event()
    original = technitium._routes["/api/user/session/get"]

    async def slow(ctx: Any) -> Any:
        await release.wait()
        return await original(ctx)

    technitium._routes["/api/user/session/get"] = slow
    started = asyncio.get_running_loop().time()
    gw = await hybrid(make_gateway, technitium, token)
    assert asyncio.get_running_loop().time() - started < 2
    c = client_for(gw)
    state = (await me(c))["backgroundPtrToken"]   # anonymous: the booleans only
    assert state == {"configured": True, "validated": False, "okForPtr": False}
    release.set()
    for _ in range(50):
        if (await me(c))["backgroundPtrToken"]["okForPtr"]:
            break
        await asyncio.sleep(0.05)
    assert (await me(c))["backgroundPtrToken"]["okForPtr"] is True


async def test_auth_mode_none_says_so_in_me(
    make_gateway: MakeGateway, technitium: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    gw = await make_gateway(
        gateway_env(technitium.url, AUTH_MODE="apiKey", TECHNITIUM_TOKEN=background_token(technitium))
    )
    body = await me(client_for(gw))
    assert body["authMode"] == "none" and body["sessionAuthEnabled"] is False
    assert "shared service credential" in body["warning"]
    assert body["backgroundPtrToken"]["configured"] is False  # no background token apart from the requests'


async def test_technitium_v14_reads_the_token_from_the_query(
    make_gateway: MakeGateway, technitium_v14: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    token = background_token(technitium_v14)
    technitium_v14.ptr_records["192.0.2.5"] = "printer.lan"
    gw = await hybrid(make_gateway, technitium_v14, token)
    assert (await me(client_for(gw)))["backgroundPtrToken"]["okForPtr"] is True
    assert await gw.app[keys.BACKGROUND].name_for("192.0.2.5") == "printer.lan"
    [asked] = technitium_v14.requests_to("/api/dnsClient/resolve")
    assert asked.query["token"] == token


async def test_auth_mode_none_warns_loudly_at_start(
    technitium: FakeTechnitium, tmp_path: Any, process_factory: Callable[..., ManagedProcess]
) -> None:
    token = background_token(technitium)
    port = free_port()
    env = base_env(
        UPSTREAM_URL=technitium.url,
        UPSTREAM_TYPE="technitium",
        AUTH_MODE="apiKey",
        PORT=str(port),
        TECHNITIUM_TOKEN=token,
        AUTHPROXY_DATA_DIR=str(tmp_path),
        LOG_FORMAT="json",
    )
    proc = process_factory(
        [sys.executable, "-m", "authproxy", "run"], env=env, inherit_env=False, cwd=ROOT, name="authproxy"
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.get(f"http://127.0.0.1:{port}/_authproxy/api/auth/me") as resp:
                    body = await resp.json()
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError(proc.log_tail())
    assert body["authMode"] == "none" and "warning" in body
    log = proc.log_tail(100_000)
    assert "AUTH_MODE=none: NOBODY SIGNS IN" in log and '"level": "warning"' in log and token not in log
