"""Real qBittorrent-nox 4.5.2 and transmission-daemon 3.00 behind the real gateway.

Why: their login quirks are the adapters' reason to exist, and only the real programs have them
exactly: qBittorrent's Host-port and Origin checks, its `Fails.` answer, its 5-failure IP ban and the
login page it serves in place of the UI; Transmission's Basic prompt and its 409 session-id dance. Each
test signs in through authproxy with the app's own credentials, uses the app's web UI and API through
it, and checks on the wire that the upstream credential never reaches the client, that a client's own
copy never reaches the app, and that logout and expiry behave.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import ClientResponse

from authproxy import keys
from authproxy.sessions.model import Credential
from tests.integration.conftest import BROWSER, LOGOUT, SESSION
from tests.support.apps import QBittorrentApp, TransmissionApp, start_transmission
from tests.support.gateway import SECRET, Gateway, GatewayClient, MakeGateway, gateway_env

pytestmark = pytest.mark.e2e

ClientFor = Callable[[Gateway], GatewayClient]
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}


async def held_credential(gw: Gateway, client: GatewayClient) -> Credential:
    loaded = await gw.app[keys.SESSIONS].load(client.cookie)
    assert loaded is not None
    [credential] = loaded.session.credentials.values()
    return credential


class Wire:
    """Every answer the client saw, to prove a secret never appears in any header or body."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def keep(self, resp: ClientResponse) -> ClientResponse:
        body = await resp.read()
        self.seen.append(
            body.decode("latin-1") + "\n" + "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
        )
        return resp

    def never_shows(self, *secrets: str) -> None:
        assert self.seen
        for answer in self.seen:
            for secret in secrets:
                assert secret not in answer


async def direct(http: aiohttp.ClientSession, method: str, url: str, **kw: object) -> tuple[int, str]:
    async with http.request(method, url, allow_redirects=False, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.text()


# ======================================================================================= qBittorrent


@pytest.fixture
async def qbt_gw(make_gateway: MakeGateway, qbittorrent: QBittorrentApp) -> Gateway:
    return await make_gateway(gateway_env(qbittorrent.url, UPSTREAM_TYPE="qbittorrent"))


async def never_banned(http: aiohttp.ClientSession, qbittorrent: QBittorrentApp) -> None:
    """qBittorrent has not banned 127.0.0.1: the right password still works at the app itself."""
    status, text = await direct(http, "POST", qbittorrent.url + "/api/v2/auth/login",
                                data={"username": qbittorrent.username, "password": qbittorrent.password})
    assert (status, text) == (200, "Ok.")
    assert "banned" not in qbittorrent.log_path.read_text()


async def replicas_and_people(
    make_gateway: MakeGateway, qbittorrent: QBittorrentApp, redis_url: str, client_for: ClientFor
) -> tuple[list[Gateway], Callable[[Gateway, str], GatewayClient]]:
    """Two replicas on one Redis, and a client for a person at an address on either of them."""
    env = gateway_env(qbittorrent.url, UPSTREAM_TYPE="qbittorrent", REDIS_URL=redis_url)
    replicas = [await make_gateway(env), await make_gateway(env)]

    def person(gw: Gateway, ip: str) -> GatewayClient:
        c = client_for(gw)
        c.headers["X-Forwarded-For"] = ip
        return c

    return replicas, person


async def test_qbittorrent_sign_in_ui_and_api_without_the_sid_ever_leaving(
        qbt_gw: Gateway, qbittorrent: QBittorrentApp, client_for: ClientFor,
        http_client: aiohttp.ClientSession) -> None:
    client, wire = client_for(qbt_gw), Wire()
    bad = await wire.keep(await client.login(qbittorrent.username, "wrong"))  # qBittorrent: 200 "Fails."
    assert bad.status == 401 and json.loads(wire.seen[-1].split("\n")[0])["error"] == "invalid_credentials"
    await wire.keep(await client.login(qbittorrent.username, qbittorrent.password))
    assert client.cookie
    sid = (await held_credential(qbt_gw, client)).secret
    assert len(sid) == 32

    # A link from another site (cross-site Referer) opens the UI: qBittorrent alone would answer 401.
    page = await wire.keep(await client.request("GET", "/", headers={**BROWSER, "Referer": "https://dash.example/"}))
    assert (
        page.status == 200 and "qBittorrent Web UI" in wire.seen[-1] and 'id="loginform"' not in wire.seen[-1]
    )
    version = await wire.keep(await client.request("GET", "/api/v2/app/version"))
    assert (version.status, wire.seen[-1].split("\n")[0]) == (200, "v4.5.2")
    info = await wire.keep(await client.request("GET", "/api/v2/torrents/info"))
    assert (info.status, wire.seen[-1].split("\n")[0]) == (200, "[]")
    # The UI's XHRs carry the public Origin/Referer: accepted (qBittorrent's CSRF rule, applied by authproxy).
    origin = {"Origin": client.origin, "Referer": client.origin + "/"}
    same = await wire.keep(await client.request("POST", "/api/v2/app/version", headers=origin))
    assert same.status == 200
    cross = await wire.keep(await client.request("POST", "/api/v2/app/version",
                                                 headers={"Origin": "https://evil.example"}))
    assert cross.status == 401
    # A browser-supplied SID never reaches qBittorrent (it would answer 403 -> session_expired here).
    forged = await wire.keep(await client.request(
        "GET", "/api/v2/app/version",
        headers={"Cookie": f"SID=forged; {client.cookie_name}={client.cookie}; SID=again"}))
    assert forged.status == 200
    # The UI's own login call is answered by authproxy while signed in: no second SID, no Set-Cookie.
    ui_login = await wire.keep(await client.request("POST", "/api/v2/auth/login", headers=FORM,
                                                    data="username=x&password=y"))
    assert ui_login.status == 200 and wire.seen[-1].startswith("Ok.")
    wire.never_shows(sid, "SID=")

    # A SID obtained elsewhere does not open the gateway without an authproxy session.
    status, own = await direct(http_client, "POST", qbittorrent.url + "/api/v2/auth/login",
                               data={"username": qbittorrent.username, "password": qbittorrent.password})
    assert (status, own) == (200, "Ok.")
    anonymous = client_for(qbt_gw)
    stranger = await anonymous.request("GET", "/api/v2/app/version", headers={"Cookie": "SID=" + sid})
    assert stranger.status == 401

    # Signing out of authproxy ends the qBittorrent session: the SID is dead at the app itself.
    out = await client.request("POST", LOGOUT, json={})
    assert out.status == 200
    status, _ = await direct(http_client, "GET", qbittorrent.url + "/api/v2/app/version",
                             headers={"Cookie": f"SID={sid}"})
    assert status == 403


async def test_qbittorrent_session_killed_at_the_app_means_sign_in_again(
        qbt_gw: Gateway, qbittorrent: QBittorrentApp, client_for: ClientFor,
        http_client: aiohttp.ClientSession) -> None:
    api, browser, ui = client_for(qbt_gw), client_for(qbt_gw), client_for(qbt_gw)
    for c in (api, browser, ui):
        assert (await c.login(qbittorrent.username, qbittorrent.password)).status == 200
    for c in (api, browser, ui):
        sid = (await held_credential(qbt_gw, c)).secret
        status, _ = await direct(http_client, "POST", qbittorrent.url + "/api/v2/auth/logout",
                                 headers={"Cookie": f"SID={sid}"})
        assert status == 200
    # API call: qBittorrent answers 403 Forbidden -> 401 session_expired, and the session is over.
    dead = await api.request("GET", "/api/v2/torrents/info")
    assert dead.status == 401 and (await dead.json())["error"] == "session_expired"
    assert (await (await api.request("GET", SESSION)).json())["authenticated"] is False
    # Page load: qBittorrent serves its login page in place of the UI -> authproxy's sign-in page.
    page = await browser.request("GET", "/", headers={**BROWSER, "Accept-Encoding": "gzip"})
    assert page.status == 302 and page.headers["Location"].endswith("&expired=1")
    # The UI's login page posting its form: answered Ok. and the dead SID dropped, so the reload that
    # follows lands on authproxy's sign-in page rather than on qBittorrent's login page again.
    posted = await ui.request("POST", "/api/v2/auth/login", headers=FORM, data="username=a&password=b")
    assert posted.status == 200 and await posted.text() == "Ok."
    reload = await ui.request("GET", "/", headers=BROWSER)
    assert reload.status == 302 and "/_authproxy/login?rd=" in reload.headers["Location"]


async def test_qbittorrent_ui_sign_out_ends_both_sessions(
        qbt_gw: Gateway, qbittorrent: QBittorrentApp, client_for: ClientFor,
        http_client: aiohttp.ClientSession) -> None:
    client = client_for(qbt_gw)
    assert (await client.login(qbittorrent.username, qbittorrent.password)).status == 200
    sid = (await held_credential(qbt_gw, client)).secret
    cookie = client.cookie
    out = await client.request("POST", "/api/v2/auth/logout", headers={"Origin": client.origin})
    assert out.status == 200
    after = await client.request("GET", SESSION, headers={"Cookie": f"{client.cookie_name}={cookie}"})
    assert (await after.json())["authenticated"] is False
    status, _ = await direct(http_client, "GET", qbittorrent.url + "/api/v2/app/version",
                             headers={"Cookie": f"SID={sid}"})
    assert status == 403


async def test_qbittorrent_failed_logins_stop_before_its_ip_ban(
        qbt_gw: Gateway, qbittorrent: QBittorrentApp, client_for: ClientFor,
        http_client: aiohttp.ClientSession) -> None:
    client = client_for(qbt_gw)
    for _ in range(4):
        wrong = await client.login(qbittorrent.username, "wrong")
        assert wrong.status == 401 and (await wrong.json())["error"] == "invalid_credentials"
    # A 5th failure would make qBittorrent ban authproxy's address (i.e. everyone) for an hour.
    stopped = await client.login(qbittorrent.username, qbittorrent.password)
    assert stopped.status == 429 and (await stopped.json())["error"] == "upstream_blocked"
    assert int(stopped.headers["Retry-After"]) > 3000
    # qBittorrent saw 4 failures and no ban: the right password still works at the app itself.
    await never_banned(http_client, qbittorrent)


async def test_qbittorrent_failed_logins_are_counted_once_across_replicas(
        make_gateway: MakeGateway, qbittorrent: QBittorrentApp, redis_url: str,
        http_client: aiohttp.ClientSession, client_for: ClientFor) -> None:
    # Two replicas on one Redis; the failures come from different people and addresses, so authproxy's
    # own per-user and per-IP throttles never stop them: only the shared qBittorrent budget can.
    replicas, client = await replicas_and_people(make_gateway, qbittorrent, redis_url, client_for)
    for i in range(4):
        wrong = await client(replicas[i % 2], f"203.0.113.{i + 1}").login(f"user{i}", "wrong")
        assert wrong.status == 401, await wrong.text()
    for gw in replicas:  # the 5th would have been each replica's 3rd: per-process counts would let it through
        stopped = await client(gw, "203.0.113.99").login(qbittorrent.username, qbittorrent.password)
        assert stopped.status == 429 and (await stopped.json())["error"] == "upstream_blocked"
    await never_banned(http_client, qbittorrent)


async def test_qbittorrent_parallel_wrong_passwords_never_reach_its_ban(
        make_gateway: MakeGateway, qbittorrent: QBittorrentApp, redis_url: str,
        http_client: aiohttp.ClientSession, client_for: ClientFor) -> None:
    # Eight people at eight addresses on two replicas, all wrong at the same moment: a check made before
    # any had failed would let all eight reach qBittorrent, which bans authproxy at the fifth.
    replicas, person = await replicas_and_people(make_gateway, qbittorrent, redis_url, client_for)
    clients = [person(replicas[i % 2], f"203.0.113.{i + 1}") for i in range(8)]
    answers = await asyncio.gather(*(c.login(f"user{i}", "wrong") for i, c in enumerate(clients)))
    errors = sorted([(a.status, (await a.json())["error"]) for a in answers])
    assert errors.count((401, "invalid_credentials")) <= 4, errors
    assert all(e in ((401, "invalid_credentials"), (429, "upstream_blocked")) for e in errors), errors
    await never_banned(http_client, qbittorrent)


async def test_qbittorrent_under_a_sub_path(make_gateway: MakeGateway, qbittorrent: QBittorrentApp,
                                            client_for: ClientFor, tmp_path: Path) -> None:
    config = tmp_path / "authproxy.toml"
    config.write_text(f'[[sites]]\nname = "qbt"\ntype = "qbittorrent"\nupstream_url = "{qbittorrent.url}"\n'
                      'path_prefix = "/qbt/"\n')
    env = {"TRUST_PROXY": "true", "SESSION_SECRET": SECRET, "ACCESS_LOG": "false"}
    client = client_for(await make_gateway(env, config_file=config))
    assert (await client.login(qbittorrent.username, qbittorrent.password, site="qbt")).status == 200
    page = await client.request("GET", "/qbt/", headers=BROWSER)
    assert page.status == 200 and "qBittorrent Web UI" in await page.text()
    version = await client.request(
        "GET", "/qbt/api/v2/app/version", headers={"Referer": client.origin + "/qbt/"}
    )
    assert (version.status, await version.text()) == (200, "v4.5.2")


# ======================================================================================= Transmission


@pytest.fixture
async def tr_gw(make_gateway: MakeGateway, transmission: TransmissionApp) -> Gateway:
    return await make_gateway(gateway_env(transmission.url, UPSTREAM_TYPE="transmission"))


async def rpc(client: GatewayClient, path: str = "/transmission/rpc", **headers: str) -> tuple[int, str, str]:
    """One session-get through the gateway: (status, session id header, body)."""
    resp = await client.request("POST", path, data=b'{"method":"session-get"}',
                                headers={"Content-Type": "application/json", **headers})
    return resp.status, resp.headers.get("X-Transmission-Session-Id", ""), await resp.text()


async def test_transmission_sign_in_web_ui_and_rpc_through_the_409_dance(
        tr_gw: Gateway, transmission: TransmissionApp, client_for: ClientFor) -> None:
    client, wire = client_for(tr_gw), Wire()
    bad = await wire.keep(await client.login(transmission.username, "wrong"))
    assert bad.status == 401 and "WWW-Authenticate" not in bad.headers
    await wire.keep(await client.login(transmission.username, transmission.password))
    assert client.cookie
    basic = (await held_credential(tr_gw, client)).secret
    assert basic == transmission.basic_auth

    page = await wire.keep(await client.request("GET", "/transmission/web/", headers=BROWSER))
    assert page.status == 200 and "<html" in wire.seen[-1].lower()
    moved = await wire.keep(await client.request("GET", "/transmission", headers=BROWSER))
    assert moved.status == 301 and moved.headers["Location"] == "/transmission/web/"
    # The RPC's CSRF handshake is the client's business and passes through untouched.
    first = await client.request("POST", "/transmission/rpc", data=b'{"method":"session-get"}')
    await wire.keep(first)
    session_id = first.headers["X-Transmission-Session-Id"]
    assert first.status == 409 and len(session_id) == 48
    second = await wire.keep(
        await client.request(
            "POST",
            "/transmission/rpc",
            data=b'{"method":"session-get"}',
            headers={"X-Transmission-Session-Id": session_id},
        )
    )
    assert second.status == 200 and json.loads(wire.seen[-1].split("\n")[0])["result"] == "success"
    # A client's own Basic header (here a wrong one) never reaches Transmission: ours does.
    forged = "Basic " + base64.b64encode(b"admin:guess").decode()
    status, _, body = await rpc(client, **{"X-Transmission-Session-Id": session_id, "Authorization": forged})
    assert status == 200 and json.loads(body)["result"] == "success"
    wire.never_shows(basic, basic.split()[1], "WWW-Authenticate")

    # Without an authproxy session, even the right Basic credentials do not pass, and no prompt appears.
    anonymous = client_for(tr_gw)
    status, _, _ = await rpc(anonymous, Authorization=transmission.basic_auth)
    assert status == 401
    page = await anonymous.request("GET", "/transmission/web/", headers=BROWSER)
    assert page.status == 302 and "WWW-Authenticate" not in page.headers
    # Logout ends the authproxy session (Transmission itself has none).
    assert (await client.request("POST", LOGOUT, json={})).status == 200
    assert (await rpc(client, **{"X-Transmission-Session-Id": session_id}))[0] == 401


async def test_transmission_password_changed_at_the_app_means_sign_in_again(
        tr_gw: Gateway, transmission: TransmissionApp, client_for: ClientFor) -> None:
    client = client_for(tr_gw)
    assert (await client.login(transmission.username, transmission.password)).status == 200
    status, session_id, _ = await rpc(client)
    assert status == 409
    # Restart the daemon on the same port with another password: the held Basic credential is now dead.
    transmission.stop()
    settings_path = transmission.config_dir / "settings.json"
    settings = json.loads(settings_path.read_text())
    settings["rpc-password"] = "changed-password"
    settings_path.write_text(json.dumps(settings))
    transmission.process.start()
    deadline = time.monotonic() + 10
    new_basic = "Basic " + base64.b64encode(b"admin:changed-password").decode()
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                status, _ = await direct(http, "POST", transmission.rpc_url, data=b"{}",
                                         headers={"Authorization": new_basic})
                if status == 409:
                    break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, transmission.process.log_tail()
    status, _, body = await rpc(client, **{"X-Transmission-Session-Id": session_id})
    assert status == 401 and json.loads(body)["error"] == "session_expired"
    assert (await client.login(transmission.username, "changed-password")).status == 200
    assert (await rpc(client))[0] == 409


async def test_transmission_under_a_sub_path_gets_public_redirects(
    make_gateway: MakeGateway, transmission: TransmissionApp, client_for: ClientFor, tmp_path: Path
) -> None:
    config = tmp_path / "authproxy.toml"
    config.write_text(f'[[sites]]\nname = "tr"\ntype = "transmission"\nupstream_url = "{transmission.url}"\n'
                      'path_prefix = "/tr/"\n')
    env = {"TRUST_PROXY": "true", "SESSION_SECRET": SECRET, "ACCESS_LOG": "false"}
    client = client_for(await make_gateway(env, config_file=config))
    assert (await client.login(transmission.username, transmission.password, site="tr")).status == 200
    moved = await client.request("GET", "/tr/transmission", headers=BROWSER)
    assert moved.status == 301 and moved.headers["Location"] == "/tr/transmission/web/"
    page = await client.request("GET", "/tr/transmission/web/", headers=BROWSER)
    assert page.status == 200
    status, session_id, _ = await rpc(client, "/tr/transmission/rpc")
    assert status == 409 and (await rpc(client, "/tr/transmission/rpc",
                                        **{"X-Transmission-Session-Id": session_id}))[0] == 200


async def test_transmission_without_a_password_is_not_a_sign_in(
    make_gateway: MakeGateway, client_for: ClientFor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # rpc-authentication-required false: Transmission takes any password, so "signed in as alice"
    # would prove nothing (and an allow list would compare against a name anyone can type).
    app = start_transmission(tmp_path, settings={"rpc-authentication-required": False})
    try:
        client = client_for(await make_gateway(gateway_env(app.url, UPSTREAM_TYPE="transmission")))
        refused = await client.login("alice", "anything")
        assert refused.status == 502 and client.cookie is None
        assert (await refused.json())["error"] == "upstream_error"
        assert any("rpc-authentication-required" in str(getattr(r, "fields", {}).get("error"))
                   for r in caplog.records if r.levelname == "ERROR")
    finally:
        app.stop()
