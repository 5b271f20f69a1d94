"""Pi-hole v6 and AdGuard Home behind the real gateway, against their faithful fakes.

Why: both UIs keep their session in an HttpOnly cookie the browser must never hold behind authproxy.
These tests sign in with the app's own password, use the app through the gateway, and check the
promises on the wire: the upstream session (Pi-hole sid, AdGuard agh_session) never appears in any
answer, a browser-supplied one never reaches the app, a dead upstream session sends the person back to
sign in, and signing out (authproxy's button or the UI's own) ends the upstream session too. AdGuard is
also onboarded purely by TOML with `type = "generic"`, using the example printed in the generic
adapter's documentation, to prove that example works.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyotp
import pytest
from aiohttp import ClientResponse

import authproxy.upstreams.generic as generic_module
from authproxy import keys
from authproxy.sessions.model import Credential
from tests.fakes.adguard import FakeAdGuard
from tests.fakes.pihole import FakeClock, FakePihole
from tests.integration.conftest import BROWSER, LOGOUT, SESSION
from tests.support.gateway import SECRET, Gateway, GatewayClient, MakeGateway, gateway_env

ClientFor = Callable[[Gateway], GatewayClient]


async def held_credential(gw: Gateway, client: GatewayClient) -> Credential:
    """The upstream credential the gateway keeps server-side for this browser."""
    loaded = await gw.app[keys.SESSIONS].load(client.cookie)
    assert loaded is not None
    [credential] = loaded.session.credentials.values()
    return credential


async def text_and_headers(resp: ClientResponse) -> str:
    return (await resp.text()) + "\n" + "\n".join(f"{k}: {v}" for k, v in resp.headers.items())


async def signed_in(client: GatewayClient, user: str, password: str) -> ClientResponse:
    resp = await client.login(user, password)
    assert resp.status == 200, await resp.text()
    return resp


# ======================================================================================= Pi-hole


@pytest.fixture
async def pihole_gw(make_gateway: MakeGateway, pihole: FakePihole) -> Gateway:
    return await make_gateway(gateway_env(pihole.url, UPSTREAM_TYPE="pihole"))


async def test_pihole_sign_in_and_use_it_with_only_the_injected_sid(
        pihole_gw: Gateway, pihole: FakePihole, client_for: ClientFor) -> None:
    client = client_for(pihole_gw)
    login = await signed_in(client, "whoever", pihole.password)
    # Pi-hole has one admin and no user name: only the password goes upstream.
    assert pihole.requests_to("/api/auth")[-1].json() == {"password": pihole.password}
    sid = (await held_credential(pihole_gw, client)).secret
    assert pihole.session_by_sid(sid) is not None
    seen = [await text_and_headers(login)]

    summary = await client.request("GET", "/api/stats/summary")
    assert summary.status == 200 and (await summary.json())["queries"]["total"] == 7497
    assert pihole.requests_to("/api/stats/summary")[-1].sid_source == "header"
    seen.append(await text_and_headers(summary))

    # Every place a browser could slip in its own sid is cleaned; only X-FTL-SID: <real> arrives.
    forged = await client.request(
        "POST",
        "/api/echo?sid=forged-q&keep=1",
        data={"sid": "forged-form", "a": "b"},
        headers={
            "sid": "forged-h",
            "X-FTL-SID": "forged-x",
            "Cookie": f"{client.cookie_name}={client.cookie}; sid=forged-c; ui=1",
        },
    )
    echo = await forged.json()
    assert forged.status == 200 and echo["sid_source"] == "header"
    assert echo["headers"]["X-FTL-SID"] == sid and "sid" not in {k.lower() for k in echo["headers"]}
    assert echo["cookies"] == {"ui": "1"} and echo["query"] == {"keep": ["1"]} and echo["body"] == "a=b"
    # (the fake-only echo endpoint prints what it received, so its body is not checked for the sid)
    assert "set-cookie" not in {k.lower() for k in forged.headers}

    # GET /api/auth echoes sid and csrf: the browser sees them blanked.
    status = await client.request("GET", "/api/auth")
    body = await status.json()
    assert status.status == 200 and body["session"]["valid"] is True
    assert body["session"]["sid"] is None and body["session"]["csrf"] is None
    seen.append(await text_and_headers(status))

    page = await client.request("GET", "/admin/", headers=BROWSER)
    assert page.status == 200 and "Pi-hole admin" in await page.text()
    seen.append(await text_and_headers(page))
    for answer in seen:  # FTL re-sends Set-Cookie: sid on every answer; none reaches the browser
        assert sid not in answer and "sid=" not in answer.lower().replace("x-ftl-sid", "")


async def test_pihole_answer_too_large_to_blank_whole_still_never_shows_the_sid(
        pihole_gw: Gateway, pihole: FakePihole, client_for: ClientFor) -> None:
    client = client_for(pihole_gw)
    await signed_in(client, "whoever", pihole.password)
    sid = (await held_credential(pihole_gw, client)).secret
    pihole.auth_padding = (1 << 20) + 100
    status = await client.request("GET", "/api/auth")
    raw = await status.read()
    assert status.status == 200 and sid.encode() not in raw
    # The sid is overwritten as the answer streams by, with as many characters: the length holds.
    assert int(status.headers["Content-Length"]) == len(raw)
    body = json.loads(raw)
    assert body["session"]["valid"] is True and body["session"]["sid"] == "0" * len(sid)
    assert len(body["padding"]) == pihole.auth_padding


async def test_pihole_totp_is_asked_for_and_sent_as_a_number(
        make_gateway: MakeGateway, make_pihole: Callable[..., Any], client_for: ClientFor) -> None:
    secret = pyotp.random_base32()
    fake: FakePihole = await make_pihole(totp_secret=secret)
    client = client_for(await make_gateway(gateway_env(fake.url, UPSTREAM_TYPE="pihole")))
    first = await client.login("admin", fake.password)
    assert first.status == 401 and (await first.json())["error"] == "totp_required"
    code = pyotp.TOTP(secret).now()
    ok = await client.login("admin", fake.password, totp=code)
    assert ok.status == 200, await ok.text()
    assert fake.requests_to("/api/auth")[-1].json() == {"password": fake.password, "totp": int(code)}


async def test_pihole_wrong_password_and_its_global_rate_limit(
        make_gateway: MakeGateway, make_pihole: Callable[..., Any], client_for: ClientFor) -> None:
    fake: FakePihole = await make_pihole(clock=FakeClock(frozen=True))
    client = client_for(await make_gateway(gateway_env(fake.url, UPSTREAM_TYPE="pihole")))
    for _ in range(3):
        wrong = await client.login("admin", "nope")
        assert wrong.status == 401 and (await wrong.json())["error"] == "invalid_credentials"
    # FTL allows 3 password checks per second, for all clients together: then 429, even for the right one.
    limited = await client.login("admin", fake.password)
    assert limited.status == 429 and (await limited.json())["error"] == "upstream_blocked"
    assert client.cookie is None


async def test_pihole_expired_sid_sends_the_person_back_to_sign_in(
        pihole_gw: Gateway, pihole: FakePihole, client_for: ClientFor) -> None:
    api, browser = client_for(pihole_gw), client_for(pihole_gw)
    await signed_in(api, "admin", pihole.password)
    await signed_in(browser, "admin", pihole.password)
    credential = await held_credential(pihole_gw, api)
    assert credential.upstream_ttl == 1800  # from session.validity: the heartbeat keeps it sliding
    assert await pihole_gw.app[keys.ROUTER].sites[0].adapter.keepalive(credential) is True
    pihole.revoke(credential.secret)
    pihole.revoke((await held_credential(pihole_gw, browser)).secret)
    assert await pihole_gw.app[keys.ROUTER].sites[0].adapter.keepalive(credential) is False

    dead = await api.request("GET", "/api/stats/summary")
    assert dead.status == 401 and (await dead.json())["error"] == "session_expired"
    again = await api.request("GET", "/api/stats/summary")
    assert again.status == 401 and (await again.json())["error"] == "unauthenticated"
    # A Lua page answers 302 /admin/login for a dead sid: authproxy's sign-in page instead.
    page = await browser.request("GET", "/admin/index", headers=BROWSER)
    assert page.status == 302 and page.headers["Location"].startswith("/_authproxy/login?rd=")
    assert page.headers["Location"].endswith("&expired=1")


async def test_pihole_sign_out_here_or_in_the_ui_deletes_the_upstream_session(
        pihole_gw: Gateway, pihole: FakePihole, client_for: ClientFor) -> None:
    first, second = client_for(pihole_gw), client_for(pihole_gw)
    await signed_in(first, "admin", pihole.password)
    sid = (await held_credential(pihole_gw, first)).secret
    out = await first.request("POST", LOGOUT, json={})
    assert out.status == 200
    deleted = pihole.requests_to("/api/auth")[-1]
    assert (deleted.method, deleted.headers["X-FTL-SID"], deleted.status) == ("DELETE", sid, 204)
    assert pihole.session_by_sid(sid) is None

    # The UI's own logout (DELETE /api/auth) ends the authproxy session as well.
    await signed_in(second, "admin", pihole.password)
    sid = (await held_credential(pihole_gw, second)).secret
    cookie = second.cookie
    ui = await second.request("DELETE", "/api/auth")
    assert ui.status == 204 and pihole.session_by_sid(sid) is None
    assert (
        "Max-Age=0" in ui.headers.get("Set-Cookie", "")
        or "expires" in ui.headers.get("Set-Cookie", "").lower()
    )
    after = await second.request("GET", SESSION, headers={"Cookie": f"{second.cookie_name}={cookie}"})
    assert (await after.json())["authenticated"] is False


# ======================================================================================= AdGuard Home


def documented_example(upstream_url: str, prefix: str = "/") -> str:
    """The TOML example from the generic adapter's docstring, pointed at the fake (any host)."""
    doc = generic_module.__doc__ or ""
    block = doc[doc.index("    [[sites]]"):doc.index("(`type = \"adguard\"`")]
    toml = "\n".join(line[4:] for line in block.splitlines())
    toml = toml.replace('upstream_url = "http://127.0.0.1:3000"', f'upstream_url = "{upstream_url}"\n'
                                                                  f'path_prefix = "{prefix}"')
    return re.sub(r'hosts = \[.*\]\n', "", toml)


@pytest.fixture(params=["adguard", "generic"])
async def agh_gw(request: pytest.FixtureRequest, make_gateway: MakeGateway, adguard: FakeAdGuard,
                 tmp_path: Path) -> Gateway:
    """The built-in `type = "adguard"`, and the same product onboarded purely by TOML config."""
    if request.param == "adguard":
        return await make_gateway(gateway_env(adguard.url, UPSTREAM_TYPE="adguard"))
    config = tmp_path / "authproxy.toml"
    config.write_text(documented_example(adguard.url))
    env = {"TRUST_PROXY": "true", "SESSION_SECRET": SECRET, "ACCESS_LOG": "false"}
    return await make_gateway(env, config_file=config)


async def test_adguard_sign_in_and_use_it_with_only_the_injected_cookie(
        agh_gw: Gateway, adguard: FakeAdGuard, client_for: ClientFor) -> None:
    client = client_for(agh_gw)
    wrong = await client.login(adguard.username, "nope")  # AdGuard answers 403
    assert wrong.status == 401 and (await wrong.json())["error"] == "invalid_credentials"
    login = await signed_in(client, adguard.username, adguard.password)
    assert adguard.requests_to("/control/login")[-1].json() == {"name": adguard.username,
                                                                "password": adguard.password}
    token = (await held_credential(agh_gw, client)).secret
    assert token in adguard.sessions
    seen = [await text_and_headers(login)]

    status = await client.request("GET", "/control/status")
    assert status.status == 200 and (await status.json())["running"] is True
    seen.append(await text_and_headers(status))
    page = await client.request("GET", "/", headers=BROWSER)
    assert page.status == 200 and "AdGuard Home" in await page.text()

    # A browser-supplied agh_session or Basic credential (AdGuard accepts Basic for any user) is removed.
    other = adguard.create_session()
    forged = await client.request("POST", "/control/echo", data=b"x",
                                  headers={"Cookie": f"agh_session={other.token}; {client.cookie_name}="
                                                     f"{client.cookie}; lang=de",
                                           "Authorization": "Basic YWRtaW46YWRtaW4="})
    echo = await forged.json()
    assert forged.status == 200 and echo["auth_source"] == "cookie"
    assert echo["cookies"] == {"agh_session": token, "lang": "de"} and "Authorization" not in echo["headers"]
    for answer in seen:
        assert token not in answer and "agh_session" not in answer


async def test_adguard_block_answers_429_with_retry_after(
        make_gateway: MakeGateway, make_adguard: Callable[..., Any], client_for: ClientFor) -> None:
    fake: FakeAdGuard = await make_adguard(auth_attempts=2)
    client = client_for(await make_gateway(gateway_env(fake.url, UPSTREAM_TYPE="adguard")))
    for _ in range(2):
        assert (await client.login(fake.username, "nope")).status == 401
    blocked = await client.login(fake.username, fake.password)
    assert blocked.status == 429 and (await blocked.json())["error"] == "upstream_blocked"
    assert 800 < int(blocked.headers["Retry-After"]) <= 900


async def test_adguard_expired_session_sends_the_person_back_to_sign_in(
        agh_gw: Gateway, adguard: FakeAdGuard, client_for: ClientFor) -> None:
    api, browser = client_for(agh_gw), client_for(agh_gw)
    await signed_in(api, adguard.username, adguard.password)
    await signed_in(browser, adguard.username, adguard.password)
    adguard.revoke((await held_credential(agh_gw, api)).secret)
    adguard.revoke((await held_credential(agh_gw, browser)).secret)
    dead = await api.request("GET", "/control/status")
    assert dead.status == 401 and (await dead.json())["error"] == "session_expired"
    # `/` answers 302 /login.html without a session: authproxy's sign-in page instead of AdGuard's.
    page = await browser.request("GET", "/", headers=BROWSER)
    assert page.status == 302 and page.headers["Location"].endswith("&expired=1")


async def test_adguard_ui_sign_out_ends_both_sessions(
        agh_gw: Gateway, adguard: FakeAdGuard, client_for: ClientFor) -> None:
    client = client_for(agh_gw)
    await signed_in(client, adguard.username, adguard.password)
    token = (await held_credential(agh_gw, client)).secret
    cookie = client.cookie
    # A link on another site (SameSite=Lax lets the cookie ride along on a top-level GET) signs nobody out.
    forged = await client.request(
        "GET",
        "/control/logout",
        headers={**BROWSER, "Referer": "https://evil.example/page", "Sec-Fetch-Site": "cross-site"},
    )
    assert forged.status == 403 and token in adguard.sessions
    out = await client.request("GET", "/control/logout", headers=BROWSER)
    assert out.status == 302 and out.headers["Location"] == "/_authproxy/login?logged_out=1"
    assert token not in adguard.sessions
    assert adguard.requests_to("/control/logout")[-1].cookies == {"agh_session": token}
    after = await client.request("GET", SESSION, headers={"Cookie": f"{client.cookie_name}={cookie}"})
    assert (await after.json())["authenticated"] is False


async def test_adguard_under_a_sub_path_gets_public_redirects(
        make_gateway: MakeGateway, adguard: FakeAdGuard, client_for: ClientFor, tmp_path: Path) -> None:
    config = tmp_path / "authproxy.toml"
    config.write_text(documented_example(adguard.url, prefix="/agh/"))
    env = {"TRUST_PROXY": "true", "SESSION_SECRET": SECRET, "ACCESS_LOG": "false"}
    client = client_for(await make_gateway(env, config_file=config))
    await signed_in(client, adguard.username, adguard.password)
    status = await client.request("GET", "/agh/control/status")
    assert status.status == 200 and adguard.requests_to("/control/status")[-1].path == "/control/status"
    # Routing reads the decoded path; the prefix cut from the raw path is the same prefix, however spelled.
    for spelled in ("/ag%68/control/status", "/%61%67%68/control/status", "/agh%2Fcontrol/status"):
        escaped = await client.request("GET", spelled, encoded=True)
        assert escaped.status == 200, spelled
        assert adguard.requests_to("/control/status")[-1].path == "/control/status", spelled
    # With a session AdGuard sends /login.html to "/": that is /agh/ publicly.
    moved = await client.request("GET", "/agh/login.html", headers=BROWSER)
    assert moved.status == 302 and moved.headers["Location"] == "/agh/"


async def test_a_signed_in_person_cannot_call_the_upstreams_login_api_past_authproxy(
        agh_gw: Gateway, adguard: FakeAdGuard, pihole_gw: Gateway, pihole: FakePihole,
        client_for: ClientFor) -> None:
    # Forwarded with the session's own cookie, these would skip authproxy's throttle and audit, test
    # other accounts' passwords, and add to the upstream's per-address count (authproxy's address).
    for gw, upstream, path, body in (
        (agh_gw, adguard, "/control/login", {"name": "bob", "password": "guess"}),
        (pihole_gw, pihole, "/api/auth", {"password": "guess"}),
    ):
        client = client_for(gw)
        password = adguard.password if upstream is adguard else pihole.password
        await signed_in(client, adguard.username if upstream is adguard else "whoever", password)
        calls = len(upstream.requests_to(path))
        for _ in range(6):
            refused = await client.request("POST", path, json=body)
            assert refused.status == 403 and (await refused.json())["error"] == "sign_in_at_authproxy", path
        assert len(upstream.requests_to(path)) == calls, path
        assert (await client.request("GET", SESSION)).status == 200
    assert adguard.blocked_for() == 0
