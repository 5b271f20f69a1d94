"""TrueNAS through authproxy, against the middleware fake (tests/fakes/truenas.py): sign-in with and
without OTP on one upstream socket, the token chain kept instead of the password, the in-band bridge
at /api/current (as the signed-in person, as an in-band password login, API keys refused), a
read-only person's write refused by TrueNAS, sign-out closing sockets, ENOTAUTHENTICATED, hybrid mode
with the service key, and the key refused over an insecure transport."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from authproxy import keys
from authproxy.config.loader import load_config
from authproxy.errors import ConfigError
from authproxy.login.service import new_key
from authproxy.upstreams.truenas import TrueNASAdapter
from tests.fakes.clock import OffsetClock
from tests.fakes.truenas import FakeTrueNAS
from tests.integration.conftest import ME, Audit
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env
from tests.support.procs import free_port

LOGOUT = "/_authproxy/api/auth/logout"


@pytest.fixture
async def nas() -> AsyncIterator[FakeTrueNAS]:
    async with FakeTrueNAS(clock=OffsetClock()) as fake:
        fake.add_user("alice", "alice-pw")
        fake.add_user("olga", "olga-pw", otp=True)
        fake.add_user("reader", "reader-pw", roles=["READONLY_ADMIN"])
        fake.add_user("noapi", "noapi-pw", roles=[], api_access=False)
        fake.add_user("old", "old-pw", expired=True)
        fake.add_user("svc", "svc-pw", roles=["READONLY_ADMIN"])
        yield fake


def truenas_env(nas: FakeTrueNAS, **overrides: str) -> dict[str, str]:
    env = gateway_env(nas.ws_url, UPSTREAM_TYPE="truenas")
    env.pop("UPSTREAM_URL")
    env["TRUENAS_URL"] = nas.ws_url
    env.update(overrides)
    return env


@pytest.fixture
async def gw(make_gateway: MakeGateway, nas: FakeTrueNAS) -> Gateway:
    return await make_gateway(truenas_env(nas))


class Rpc:
    """A JSON-RPC 2.0 client like the libraries': answers matched by id, events kept apart."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, *params: Any) -> dict[str, Any]:
        id_ = next(self.ids)
        await self.ws.send_str(
            json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": list(params)})
        )
        while True:
            answer: dict[str, Any] = await self.ws.receive_json(timeout=10)
            if answer.get("id") == id_:
                return answer

    async def result(self, method: str, *params: Any) -> Any:
        answer = await self.call(method, *params)
        assert "error" not in answer, answer
        return answer["result"]


async def connect(c: GatewayClient, **headers: str) -> Rpc:
    ws = await c.http.ws_connect(c.base + "/api/current", headers=c._headers(headers))
    return Rpc(ws)


async def signed_in_socket(c: GatewayClient, user: str, password: str) -> tuple[GatewayClient, Rpc]:
    """Signed in at authproxy, then a socket whose in-band login needs no password (the session's)."""
    assert (await c.login(user, password)).status == 200
    rpc = await connect(c)
    await rpc.result("auth.login_ex", pw(user, ""))
    return c, rpc


def pw(user: str, password: str, **options: Any) -> dict[str, Any]:
    return {
        "mechanism": "PASSWORD_PLAIN",
        "username": user,
        "password": password,
        "login_options": {"user_info": True, **options},
    }


async def test_sign_in_keeps_a_token_never_the_password(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient], audit: Audit
) -> None:
    c = client_for(gw)
    resp = await c.login("alice", "alice-pw")
    assert resp.status == 200, await resp.text()
    assert audit.lines("login")[-1]["outcome"] == "success"
    assert nas.sessions_of("alice") == []  # the sign-in socket is closed again
    tokens = [t for t in nas.live_tokens() if t.username == "alice"]
    assert len(tokens) == 1 and not tokens[0].single_use and tokens[0].origin == "127.0.0.1"
    assert [call.method for call in nas.calls if call.user is None] == ["auth.login_ex"]


@pytest.mark.parametrize(
    ("user", "password", "expected"),
    [
        ("alice", "wrong", "Invalid username or password."),
        ("old", "old-pw", "expired"),
        ("noapi", "noapi-pw", "may not use the TrueNAS API"),
    ],
)
async def test_refusals_are_mapped(
    gw: Gateway, client_for: Callable[[Gateway], GatewayClient], user: str, password: str, expected: str
) -> None:
    resp = await client_for(gw).login(user, password)
    assert resp.status == 401
    assert expected in (await resp.json())["message"]


async def test_sign_in_with_otp_on_one_socket(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    c = client_for(gw)
    first = await c.login("olga", "olga-pw")
    assert first.status == 401 and (await first.json())["error"] == "totp_required"
    wrong = await c.login("olga", "olga-pw", totp="000000")
    assert wrong.status == 401 and "code" in (await wrong.json())["message"]
    nas.calls.clear()
    ok = await c.login("olga", "olga-pw", totp=nas.code_for("olga"))
    assert ok.status == 200
    steps = [call.method for call in nas.calls]
    assert steps[:2] == ["auth.login_ex", "auth.login_ex_continue"]


async def test_standby_controller_is_a_clear_503(
    make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    async with FakeTrueNAS(ha_standby_urls=["10.0.0.2"]) as standby:
        gw = await make_gateway(truenas_env(standby))
        resp = await client_for(gw).login("alice", "x")
        assert resp.status == 502


async def test_the_socket_as_the_signed_in_person(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    c = client_for(gw)
    assert (await c.login("alice", "alice-pw")).status == 200
    rpc = await connect(c)
    assert await rpc.result("core.set_options", {"py_exceptions": False}) is None
    refused = await rpc.call("system.info")
    assert refused["error"]["data"]["errname"] == "ENOTAUTHENTICATED"
    choices = await rpc.result("auth.mechanism_choices")
    assert "SCRAM" not in choices and "API_KEY_PLAIN" not in choices
    ok = await rpc.result("auth.login_ex", pw("alice", "", reconnect_token=True))
    assert ok["response_type"] == "SUCCESS" and ok["user_info"]["pw_name"] == "alice"
    assert "provisioning_uri" not in ok["user_info"]["two_factor_config"]
    placeholder = ok["reconnect_token"]
    assert (await rpc.result("system.info"))["hostname"] == "fake-nas"
    assert nas.calls[-1].user == "alice" and nas.calls[-1].kind == "TOKEN"
    generated = await rpc.result("auth.generate_token", 300)
    assert generated.startswith("authproxy_") and placeholder.startswith("authproxy_")
    assert generated not in nas.issued_tokens
    me = await rpc.result("auth.me")
    assert me["pw_name"] == "alice" and "provisioning_uri" not in me["two_factor_config"]
    # A second socket logs in with the placeholder, as the UI does after a reload.
    again = await connect(c)
    assert await again.result("auth.login_with_token", placeholder) is True
    assert (await again.result("pool.dataset.query"))[0]["name"] == "tank"
    assert await again.result("auth.login_with_token", "not-the-placeholder") is False
    # Out-of-order answers are matched by id.
    await rpc.ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 100, "method": "core.sleep", "params": [0.3]}))
    await rpc.ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 101, "method": "core.ping", "params": []}))
    first, second = await rpc.ws.receive_json(timeout=5), await rpc.ws.receive_json(timeout=5)
    assert (first["id"], second["id"]) == (101, 100)
    for token in nas.issued_tokens:  # no real token ever reached the client
        assert token not in json.dumps([ok, generated, me])


async def test_a_read_only_persons_write_is_refused_by_truenas(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    _, rpc = await signed_in_socket(client_for(gw), "reader", "reader-pw")
    assert await rpc.result("pool.dataset.query")
    refused = await rpc.call("pool.dataset.create", {"name": "tank/x"})
    assert refused["error"]["data"]["errname"] == "EACCES"
    assert refused["error"]["data"]["reason"] == "[EACCES] Not authorized"
    assert nas.calls[-1].user == "reader"


async def test_in_band_password_login_opens_a_session_for_the_socket(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient], audit: Audit
) -> None:
    c = client_for(gw)
    rpc = await connect(c)
    bad = await rpc.result("auth.login_ex", pw("alice", "nope"))
    assert bad == {"response_type": "AUTH_ERR"}
    assert audit.lines("login")[-1]["outcome"] == "failure"
    ok = await rpc.result("auth.login_ex", pw("alice", "alice-pw"))
    assert ok["response_type"] == "SUCCESS"
    assert audit.lines("login")[-1]["outcome"] == "success"
    assert (await rpc.result("system.info"))["hostname"] == "fake-nas"
    assert nas.calls[-1].user == "alice"
    # With OTP, on the same socket.
    otp = await connect(c)
    assert (await otp.result("auth.login_ex", pw("olga", "olga-pw")))["response_type"] == "OTP_REQUIRED"
    done = await otp.result(
        "auth.login_ex_continue", {"mechanism": "OTP_TOKEN", "otp_token": nas.code_for("olga")}
    )
    assert done["response_type"] == "SUCCESS" and done["user_info"]["pw_name"] == "olga"
    # Legacy boolean login.
    legacy = await connect(c)
    assert await legacy.result("auth.login", "reader", "reader-pw") is True
    # Closing the socket ends its session.
    await rpc.ws.close()
    for _ in range(50):
        if any(line["outcome"] == "socket_closed" for line in audit.lines("logout")):
            break
        await asyncio.sleep(0.05)
    assert any(line["outcome"] == "socket_closed" for line in audit.lines("logout"))


async def test_in_band_logins_are_throttled(
    make_gateway: MakeGateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    gw = await make_gateway(truenas_env(nas, LOGIN_MAX_FAILURES="2"))
    rpc = await connect(client_for(gw))
    answers = [await rpc.call("auth.login_ex", pw("alice", f"bad{i}")) for i in range(4)]
    assert any("error" in a and a["error"]["data"]["errname"] == "EBUSY" for a in answers), answers
    upstream = [call for call in nas.calls if call.method == "auth.login_ex"]
    assert len(upstream) <= 3


async def test_client_api_keys_refused_unless_allowed(
    make_gateway: MakeGateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient], audit: Audit
) -> None:
    key = nas.add_api_key("svc")
    gw = await make_gateway(truenas_env(nas))
    rpc = await connect(client_for(gw))
    refused = await rpc.call(
        "auth.login_ex", {"mechanism": "API_KEY_PLAIN", "username": "svc", "api_key": key.wire}
    )
    assert refused["error"]["data"]["errname"] == "EACCES"
    assert await rpc.call("auth.login_with_api_key", key.wire) != {"result": True}
    assert not any(
        call.method == "auth.login_ex" and call.params and "api_key" in call.params[0] for call in nas.calls
    )
    allowed = await make_gateway(truenas_env(nas, TRUENAS_ALLOW_CLIENT_API_KEYS="true"))
    rpc = await connect(client_for(allowed))
    assert "API_KEY_PLAIN" in await rpc.result("auth.mechanism_choices")
    assert await rpc.result("auth.login_with_api_key", key.wire) is True
    assert (await rpc.result("system.info"))["hostname"] == "fake-nas"
    assert nas.calls[-1].user == "svc" and nas.calls[-1].kind == "API_KEY"
    line = audit.lines("login")[-1]
    assert line["outcome"] == "success" and line["actor"] == "service"


async def test_sign_out_closes_the_sockets_and_ends_upstream(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    c, rpc = await signed_in_socket(client_for(gw), "alice", "alice-pw")
    assert nas.sessions_of("alice")
    resp = await c.request("POST", LOGOUT, headers={"Origin": c.origin})
    assert resp.status in (200, 204, 303)
    msg = await rpc.ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4001
    for _ in range(50):
        if not nas.sessions_of("alice"):
            break
        await asyncio.sleep(0.05)
    assert nas.sessions_of("alice") == []
    assert [t for t in nas.live_tokens() if t.username == "alice"] == []


async def test_enotauthenticated_means_sign_in_again(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    _, rpc = await signed_in_socket(client_for(gw), "alice", "alice-pw")
    for conn in nas.sessions_of("alice"):  # TrueNAS ended the session (terminate_session, AAL limits)
        conn.user = None
    gone = await rpc.call("system.info")
    assert gone["error"]["data"]["errname"] == "ENOTAUTHENTICATED"
    msg = await rpc.ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4001


async def test_keepalive_renews_the_token_chain(gw: Gateway, nas: FakeTrueNAS) -> None:
    """Logging in with a token destroys it when that socket ends, so every renewal mints the next one
    first; a token left unused past its TTL is gone, and the keepalive says so."""
    adapter = gw.app[keys.ROUTER].sites[0].adapter
    assert isinstance(adapter, TrueNASAdapter)
    result = await adapter.login("alice", "alice-pw", None, "198.51.100.7")
    assert result.status == "ok" and result.credential is not None
    credential = result.credential
    first = credential.secret
    assert credential.upstream_ttl == 600 and "alice-pw" not in json.dumps(credential.to_dict())
    assert await adapter.keepalive(credential)
    await asyncio.sleep(0.05)
    assert credential.secret != first and credential.secret in nas.tokens and first not in nas.tokens
    clock = nas.clock
    assert isinstance(clock, OffsetClock)
    clock.advance(601)
    assert not await adapter.keepalive(credential)


async def test_hybrid_service_key_checked_reported_and_audited_apart(
    make_gateway: MakeGateway,
    nas: FakeTrueNAS,
    client_for: Callable[[Gateway], GatewayClient],
    audit: Audit,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key = nas.add_api_key("svc")
    client_key, entry = new_key("nas-manager")
    gw = await make_gateway(
        truenas_env(
            nas, AUTH_MODE="hybrid", TRUENAS_API_KEY=key.wire, TRUENAS_USERNAME="svc", SERVICE_API_KEYS=entry
        )
    )
    c = client_for(gw)
    state = await background_token(client_for(gw))
    assert state["validated"] and state["okForBackground"] and "account svc" in state["reason"]
    assert "READONLY_ADMIN" in state["reason"]
    public = (await (await c.request("GET", ME)).json())["backgroundPtrToken"]
    assert public == {"configured": True, "validated": True, "okForPtr": True}  # no account for anyone
    service = await connect(c, **{"X-API-Key": client_key})
    assert (await service.result("system.info"))["hostname"] == "fake-nas"
    assert nas.calls[-1].user == "svc" and nas.calls[-1].kind == "API_KEY"
    assert audit.lines("service_request")[-1]["actor"] == "service"
    opened = audit.lines("truenas_socket")[-1]
    assert (opened["outcome"], opened["actor"], opened["user"]) == ("authenticated", "service", "nas-manager")
    person = client_for(gw)
    assert (await person.login("alice", "alice-pw")).status == 200
    rpc = await connect(person)
    await rpc.result("auth.login_ex", pw("alice", ""))
    await rpc.result("system.info")
    assert nas.calls[-1].user == "alice"
    assert audit.lines("login")[-1]["user"] == "alice"
    opened = audit.lines("truenas_socket")[-1]
    assert (opened["outcome"], opened["actor"], opened["user"]) == ("authenticated", "user", "alice")
    anonymous = await connect(client_for(gw))
    assert (await anonymous.call("system.info"))["error"]["data"]["errname"] == "ENOTAUTHENTICATED"
    text = caplog.text
    assert key.key not in text and client_key not in text
    for token in nas.issued_tokens:
        assert token not in text


def test_api_key_over_insecure_transport_refused_at_start() -> None:
    env = {
        "TRUENAS_URL": "ws://192.0.2.1/api/current",
        "TRUENAS_API_KEY": "1-abc",
        "AUTH_MODE": "hybrid",
        "SESSION_SECRET": "x" * 64,
        "TRUST_PROXY": "true",
    }
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    assert "TRUENAS_API_KEY: refusing to send an API key over plain ws://" in str(caught.value)
    assert "1-abc" not in str(caught.value)
    ok = load_config(env | {"TRUENAS_URL": "wss://192.0.2.1/api/current"})
    assert ok.sites[0].upstream_url == "https://192.0.2.1" and ok.sites[0].type == "truenas"
    assert (
        load_config(env | {"TRUENAS_ALLOW_INSECURE_API_KEY": "true"}).sites[0].upstream_url
        == "http://192.0.2.1"
    )


async def test_legacy_rest_gets_the_key_as_bearer(
    make_gateway: MakeGateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    key = nas.add_api_key("svc")
    gw = await make_gateway(truenas_env(nas, AUTH_MODE="apiKey", TRUENAS_API_KEY=key.wire))
    resp = await client_for(gw).request("GET", "/api/v2.0/system/info")
    assert resp.status == 200 and (await resp.json())["hostname"] == "fake-nas"
    person_gw = await make_gateway(truenas_env(nas))
    person = client_for(person_gw)
    assert (await person.login("alice", "alice-pw")).status == 200
    resp = await person.request("GET", "/api/v2.0/pool/dataset")
    assert resp.status == 200 and (await resp.json())[0]["name"] == "tank"


async def test_escaped_method_names_are_still_answered_by_authproxy(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    c = client_for(gw)
    assert (await c.login("alice", "alice-pw")).status == 200
    rpc = await connect(c)
    ok = await rpc.result("auth.login_ex", pw("alice", "", reconnect_token=True))
    minted = len(nas.issued_tokens)
    raw = '{"jsonrpc": "2.0", "id": 7, "method": "\\u0061uth.generate_token", "params": []}'
    await rpc.ws.send_str(raw)
    answer = await rpc.ws.receive_json(timeout=5)
    assert answer["id"] == 7 and answer["result"].startswith("authproxy_") and ok["reconnect_token"]
    assert len(nas.issued_tokens) == minted
    body = json.dumps(pw("reader", "reader-pw"))
    relogin = '{"jsonrpc": "2.0", "id": 8, "method": "auth\\u002elogin_ex", "params": [' + body + "]}"
    await rpc.ws.send_str(relogin)
    assert (await rpc.ws.receive_json(timeout=5))["result"]["response_type"] == "SUCCESS"
    await rpc.result("system.info")
    assert nas.calls[-1].user == "reader"  # authproxy signed reader in (audited), not TrueNAS directly
    assert not [call for call in nas.calls if call.method == "auth.login_ex" and call.user == "alice"]


async def test_a_reload_reuses_the_parked_upstream_socket(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    """TrueNAS rate-limits logins per address, shared by everyone behind authproxy: a client socket
    that closes leaves its logged-in upstream socket for the person's next one (a UI reload)."""
    c = client_for(gw)
    assert (await c.login("alice", "alice-pw")).status == 200
    first = await connect(c)
    await first.result("auth.login_ex", pw("alice", ""))
    await first.ws.close()
    await asyncio.sleep(0.1)
    logins = len([call for call in nas.calls if call.method == "auth.login_ex"])
    second = await connect(c)
    assert (await second.result("auth.login_ex", pw("alice", "")))["response_type"] == "SUCCESS"
    assert (await second.result("system.info"))["hostname"] == "fake-nas"
    assert len([call for call in nas.calls if call.method == "auth.login_ex"]) == logins
    # A socket that subscribed to events is not reused; sign-out closes whatever is parked.
    await second.result("core.subscribe", "alert.list")
    await second.ws.close()
    third = await connect(c)
    await third.result("auth.login_ex", pw("alice", ""))
    assert len([call for call in nas.calls if call.method == "auth.login_ex"]) == logins + 1
    await third.ws.close()
    await asyncio.sleep(0.1)
    assert nas.sessions_of("alice")
    await c.request("POST", LOGOUT, headers={"Origin": c.origin})
    for _ in range(50):
        if not nas.sessions_of("alice"):
            break
        await asyncio.sleep(0.05)
    assert nas.sessions_of("alice") == []


async def background_token(admin: GatewayClient) -> dict[str, Any]:
    """/me's report on the service key, as an administrator (FULL_ADMIN in TrueNAS) sees it."""
    assert (await admin.login("alice", "alice-pw")).status == 200
    body = await (await admin.request("GET", ME)).json()
    assert body["admin"] is True
    state: dict[str, Any] = body["sites"][0]["backgroundToken"]
    return state


async def test_the_service_key_uses_one_shared_reconnecting_socket(
    make_gateway: MakeGateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    key = nas.add_api_key("svc")
    gw = await make_gateway(
        truenas_env(
            nas,
            AUTH_MODE="hybrid",
            TRUENAS_API_KEY=key.wire,
            TRUENAS_USERNAME="svc",
            BACKGROUND_CHECK_INTERVAL="1s",
        )
    )

    def key_logins() -> int:
        return len(
            [
                c
                for c in nas.calls
                if c.method == "auth.login_ex"
                and c.params
                and c.params[0].get("mechanism") == "API_KEY_PLAIN"
            ]
        )

    for _ in range(60):
        if len([c for c in nas.calls if c.method == "auth.me" and c.user == "svc"]) >= 2:
            break
        await asyncio.sleep(0.05)
    assert key_logins() == 1
    for conn in nas.sessions_of("svc"):  # TrueNAS ends that session: the next check logs in again
        conn.user = None
    before = len([c for c in nas.calls if c.method == "auth.me"])
    for _ in range(60):
        if len([c for c in nas.calls if c.method == "auth.me"]) > before + 1:
            break
        await asyncio.sleep(0.05)
    assert key_logins() == 2
    assert (await background_token(client_for(gw)))["okForBackground"] is True


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({"AUTH_MODE": "apiKey"}, "none"),
        ({"AUTH_MODE": "truenas"}, "session"),
        ({"AUTH_MODE": "hybrid"}, "hybrid"),
        ({"AUTH_MODE": "none"}, "none"),
        ({"USE_HYBRID_AUTH": "true"}, "hybrid"),
        ({"USE_SESSION_AUTH": "true"}, "session"),
    ],
)
def test_auth_mode_names_people_already_use(env: dict[str, str], mode: str) -> None:
    base = {
        "TRUENAS_URL": "ws://127.0.0.1/api/current",
        "TRUENAS_API_KEY": "1-abc",
        "TRUST_PROXY": "true",
        "SESSION_SECRET": "x" * 64,
    }
    config = load_config(base | env)
    assert config.auth_mode == mode and config.sites[0].type == "truenas"
    assert config.sites[0].upstream_url == "http://127.0.0.1"


async def test_no_secret_reaches_the_logs(
    gw: Gateway,
    nas: FakeTrueNAS,
    client_for: Callable[[Gateway], GatewayClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    c = client_for(gw)
    await c.login("olga", "olga-pw")
    assert (await c.login("olga", "olga-pw", totp=nas.code_for("olga"))).status == 200
    rpc = await connect(c)
    ok = await rpc.result("auth.login_ex", pw("olga", "", reconnect_token=True))
    placeholder = await rpc.result("auth.generate_token")
    inband = await connect(client_for(gw))
    await inband.result("auth.login_ex", pw("alice", "wrong-alice-pw"))
    await inband.result("auth.login_ex", pw("alice", "alice-pw"))
    await c.request("POST", LOGOUT, headers={"Origin": c.origin})
    await asyncio.sleep(0.1)
    text = caplog.text
    secret = nas.accounts["olga"].otp_secret
    assert secret is not None
    for value in [
        "olga-pw",
        "alice-pw",
        "wrong-alice-pw",
        secret,
        "provisioning_uri",
        placeholder,
        ok["reconnect_token"],
        *nas.issued_tokens,
    ]:
        assert value not in text


async def test_shared_key_mode_everyone_is_the_key_account_and_reloads_cost_no_login(
    make_gateway: MakeGateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    key = nas.add_api_key("svc")
    gw = await make_gateway(truenas_env(nas, AUTH_MODE="apiKey", TRUENAS_API_KEY=key.wire))

    def key_logins() -> int:
        return len([c for c in nas.calls if c.method == "auth.login_with_api_key"])

    state = (await (await client_for(gw).request("GET", ME)).json())["backgroundPtrToken"]
    assert state["validated"] and state["okForPtr"]  # checked at start in this mode too
    first = await connect(client_for(gw))
    ok = await first.result("auth.login_ex", pw("anyone", "anything"))
    assert ok["response_type"] == "SUCCESS"
    assert (await first.result("system.info"))["hostname"] == "fake-nas"
    assert nas.calls[-1].user == "svc" and nas.calls[-1].kind == "API_KEY"
    await first.ws.close()
    await asyncio.sleep(0.1)
    logins = key_logins()
    second, third = await connect(client_for(gw)), await connect(client_for(gw))
    await asyncio.gather(second.result("system.info"), third.result("system.info"))
    assert key_logins() == logins and len(nas.sessions_of("svc")) == 1   # everyone on one socket


async def ddp(c: GatewayClient) -> aiohttp.ClientWebSocketResponse:
    ws = await c.http.ws_connect(c.base + "/websocket", headers=c._headers(None))
    await ws.send_json({"msg": "connect", "version": "1", "support": ["1"]})
    assert (await ws.receive_json(timeout=5))["msg"] == "connected"
    return ws


async def test_the_legacy_ddp_socket_is_answered_in_band_too(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient], audit: Audit
) -> None:
    """Old clients speak DDP on /websocket: authproxy answers their auth.* calls as on /api/current
    (here an in-band password login), relays the rest to its own JSON-RPC socket, and turns answers,
    errors, subscriptions and events into DDP."""
    ws = await ddp(client_for(gw))
    await ws.send_json({"msg": "method", "id": "0", "method": "system.info", "params": []})
    refused = await ws.receive_json(timeout=5)
    assert refused["msg"] == "result" and refused["error"]["errname"] == "ENOTAUTHENTICATED"
    await ws.send_json({"msg": "method", "id": "1", "method": "auth.login", "params": ["alice", "alice-pw"]})
    assert await ws.receive_json(timeout=5) == {"msg": "result", "id": "1", "result": True}
    assert audit.lines("login")[-1]["outcome"] == "success"
    await ws.send_json({"msg": "method", "id": "2", "method": "system.info", "params": []})
    assert (await ws.receive_json(timeout=5))["result"]["hostname"] == "fake-nas"
    assert nas.calls[-1].user == "alice" and nas.calls[-1].kind == "TOKEN"
    await ws.send_json({"msg": "method", "id": "3", "method": "auth.generate_token", "params": []})
    token = (await ws.receive_json(timeout=5))["result"]
    assert token.startswith("authproxy_") and token not in nas.issued_tokens
    await ws.send_json({"msg": "sub", "id": "s1", "name": "alert.list"})
    assert await ws.receive_json(timeout=5) == {"msg": "ready", "subs": ["s1"]}
    assert await nas.emit("alert.list", "added", 7, {"level": "WARNING"}) == 1
    event = await ws.receive_json(timeout=5)
    assert event == {"msg": "added", "collection": "alert.list", "id": 7, "fields": {"level": "WARNING"}}
    await ws.send_json({"msg": "unsub", "id": "s1"})
    assert await ws.receive_json(timeout=5) == {"msg": "nosub", "id": "s1"}
    await ws.send_json({"msg": "method", "id": "4", "method": "no.such", "params": []})
    assert (await ws.receive_json(timeout=5))["error"]["reason"] == "Method does not exist"


async def test_a_signed_in_persons_ddp_socket_closes_at_sign_out(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    c = client_for(gw)
    assert (await c.login("alice", "alice-pw")).status == 200
    ws = await ddp(c)
    await ws.send_json({"msg": "method", "id": "1", "method": "auth.login", "params": ["alice", ""]})
    assert (await ws.receive_json(timeout=5))["result"] is True
    await c.request("POST", LOGOUT, headers={"Origin": c.origin})
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4001


async def test_a_socket_in_use_slides_the_session_and_an_idle_one_ends_with_it(
    make_gateway: MakeGateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    gw = await make_gateway(truenas_env(nas, SESSION_IDLE_TIMEOUT="1"))
    _, rpc = await signed_in_socket(client_for(gw), "alice", "alice-pw")
    for _ in range(10):  # 3 s of use, three idle timeouts long
        assert await rpc.result("core.ping") == "pong"
        await asyncio.sleep(0.3)
    msg = await rpc.ws.receive(timeout=10)  # then silence: the session ends, and the socket with it
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4001


async def test_truenas_closing_the_upstream_socket_closes_the_clients(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    c, rpc = await signed_in_socket(client_for(gw), "alice", "alice-pw")
    for conn in nas.sessions_of("alice"):  # middlewared restarting
        await nas.sockets[conn.session_id].close()
    msg = await rpc.ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1011
    again = await connect(c)  # the UI reconnects and signs in with its session again
    assert (await again.result("auth.login_ex", pw("alice", "")))["response_type"] == "SUCCESS"
    assert (await again.result("system.info"))["hostname"] == "fake-nas"


async def test_bad_input_on_the_socket(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    c = client_for(gw)
    rpc = await connect(c)
    await rpc.ws.send_str("not json")
    assert (await rpc.ws.receive_json(timeout=5))["error"]["code"] == -32700
    await rpc.ws.send_str("[1, 2]")
    assert (await rpc.ws.receive_json(timeout=5))["error"]["code"] == -32600
    bad = await rpc.call("auth.login_ex", "not an object")
    assert bad["error"]["data"]["errname"] == "EINVAL"
    scram = await rpc.call("auth.login_ex", {"mechanism": "SCRAM", "scram_type": "CLIENT_FIRST_MESSAGE"})
    assert scram["error"]["data"]["errname"] == "EOPNOTSUPP"
    await rpc.ws.send_str(
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "core.ping", "params": ["x" * 9000]})
    )
    msg = await rpc.ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1007  # TrueNAS's limit before login
    binary = await connect(c)
    await binary.ws.send_bytes(b"\x00\x01")
    assert (await binary.ws.receive(timeout=5)).data == 1003
    assert (await c.login("alice", "alice-pw")).status == 200
    big = await connect(c)
    await big.result("auth.login_ex", pw("alice", ""))
    assert await big.result("core.ping", "x" * 9000) == "pong"
    await big.ws.send_str(
        json.dumps({"jsonrpc": "2.0", "id": 2, "method": "core.ping", "params": ["x" * 70000]})
    )
    assert (await big.ws.receive(timeout=5)).data == 1009
    assert not [call for call in nas.calls if call.params and "x" * 70000 in json.dumps(call.params)]


async def test_truenas_down_is_a_clear_answer(
    make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    url = f"ws://127.0.0.1:{free_port()}/api/current"
    env = gateway_env(url, UPSTREAM_TYPE="truenas")
    env.pop("UPSTREAM_URL")
    gw = await make_gateway(env | {"TRUENAS_URL": url})
    c = client_for(gw)
    resp = await c.login("alice", "alice-pw")
    assert resp.status in (502, 503) and "alice-pw" not in await resp.text()
    rpc = await connect(c)
    down = await rpc.call("auth.login_ex", pw("alice", "alice-pw"))
    assert down["error"]["data"]["errname"] == "EFAULT"
    assert "cannot be reached" in down["error"]["data"]["reason"]


async def test_a_client_api_key_is_never_sent_over_an_insecure_transport(
    make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient], audit: Audit
) -> None:
    url = "ws://192.0.2.1/api/current"  # TEST-NET: nothing answers, nothing may be sent
    env = gateway_env(url, UPSTREAM_TYPE="truenas", TRUENAS_ALLOW_CLIENT_API_KEYS="true")
    env.pop("UPSTREAM_URL")
    gw = await make_gateway(env | {"TRUENAS_URL": url})
    rpc = await connect(client_for(gw))
    refused = await rpc.call("auth.login_with_api_key", "1-" + "a" * 64)
    assert refused["error"]["data"]["errname"] == "EACCES"
    assert "revoke" in refused["error"]["data"]["reason"]
    assert audit.lines("login")[-1]["outcome"] == "client_api_key_refused"


def test_the_key_from_a_file(tmp_path: Any) -> None:
    secret = tmp_path / "truenas_api_key"
    secret.write_text("7-" + "b" * 64 + "\n")
    config = load_config(
        {
            "TRUENAS_URL": "wss://nas.lan/api/current",
            "TRUENAS_API_KEY_FILE": str(secret),
            "TRUENAS_USERNAME": "svc",
            "USE_HYBRID_AUTH": "true",
            "TRUST_PROXY": "true",
            "SESSION_SECRET": "x" * 64,
        }
    )
    site = config.sites[0]
    assert site.service_token is not None and site.service_token.reveal() == "7-" + "b" * 64
    assert site.options["api_username"] == "svc" and site.upstream_url == "https://nas.lan"


async def test_a_client_may_not_use_authproxys_own_call_ids(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    c = client_for(gw)
    assert (await c.login("olga", "olga-pw", totp=nas.code_for("olga"))).status == 200
    rpc = await connect(c)
    await rpc.result("auth.login_ex", pw("olga", ""))
    for n in range(1, 6):
        await rpc.ws.send_str(json.dumps({"jsonrpc": "2.0", "id": f"authproxy-{n}", "method": "core.ping"}))
        refused = await rpc.ws.receive_json(timeout=5)
        assert refused["error"]["code"] == -32600 and "reserved" in refused["error"]["message"]
    me = await rpc.result("auth.me")
    assert "provisioning_uri" not in me["two_factor_config"]
    assert not [call for call in nas.calls if call.method == "core.ping"]


async def test_a_stopping_server_closes_every_truenas_socket(
    make_gateway: MakeGateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    gw = await make_gateway(truenas_env(nas))
    anonymous = await connect(client_for(gw))
    assert await anonymous.result("core.ping") == "pong"
    signed = await connect(client_for(gw))
    await signed.result("auth.login_ex", pw("alice", "alice-pw"))  # its session is the socket's
    assert len(gw.app[keys.WEBSOCKETS]) == 2
    started = asyncio.get_running_loop().time()
    stopping = asyncio.create_task(gw.stop())
    for rpc in (anonymous, signed):
        msg = await rpc.ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
    await stopping
    assert asyncio.get_running_loop().time() - started < 5


async def test_the_login_page_with_truenas_otp(
    gw: Gateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    c = client_for(gw)
    browser = {
        "Sec-Fetch-Site": "same-origin",
        "Sec-Fetch-Mode": "navigate",
        "Origin": c.origin,
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "text/html",
    }
    step1 = await c.request(
        "POST", "/_authproxy/api/auth/login", data="username=olga&password=olga-pw&rd=%2F", headers=browser
    )
    text = await step1.text()
    assert step1.status == 200 and 'id="totp-field"' in text and 'id="totp-field" hidden' not in text
    assert "olga-pw" not in text
    code = nas.code_for("olga")
    step2 = await c.request(
        "POST",
        "/_authproxy/api/auth/login",
        data=f"username=olga&password=olga-pw&totp={code}&rd=%2F",
        headers=browser,
    )
    assert step2.status == 303 and c.cookie
    assert (await (await c.request("GET", ME)).json())["user"] == "olga"


async def test_an_in_band_otp_step_waits_only_so_long(
    gw: Gateway,
    nas: FakeTrueNAS,
    client_for: Callable[[Gateway], GatewayClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from authproxy.proxy import truenas_bridge

    monkeypatch.setattr(truenas_bridge, "OTP_WAIT", 0.1)
    rpc = await connect(client_for(gw))
    assert (await rpc.result("auth.login_ex", pw("olga", "olga-pw")))["response_type"] == "OTP_REQUIRED"
    await asyncio.sleep(0.3)  # the typed password is gone: the code alone opens nothing
    late = await rpc.call(
        "auth.login_ex_continue", {"mechanism": "OTP_TOKEN", "otp_token": nas.code_for("olga")}
    )
    assert late["error"]["data"]["errname"] == "EINVAL"


async def hybrid_service(
    make_gateway: MakeGateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient], n: int
) -> tuple[Gateway, list[Rpc]]:
    key = nas.add_api_key("svc")
    client_key, entry = new_key("nas-manager")
    gw = await make_gateway(
        truenas_env(nas, AUTH_MODE="hybrid", TRUENAS_API_KEY=key.wire, TRUENAS_USERNAME="svc",
                    SERVICE_API_KEYS=entry)
    )
    return gw, [await connect(client_for(gw), **{"X-API-Key": client_key}) for _ in range(n)]


def api_key_logins(nas: FakeTrueNAS) -> int:
    return len([c for c in nas.calls if c.method == "auth.login_ex" and c.params
                and isinstance(c.params[0], dict) and c.params[0].get("mechanism") == "API_KEY_PLAIN"])


async def test_service_clients_share_one_upstream_socket_with_their_own_ids(
    make_gateway: MakeGateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    _gw, clients = await hybrid_service(make_gateway, nas, client_for, 4)
    results = await asyncio.gather(*(c.result("system.info") for c in clients))
    assert all(r["hostname"] == "fake-nas" for r in results)
    assert api_key_logins(nas) == 1 and len(nas.sessions_of("svc")) == 1
    person = client_for(_gw)   # a person's socket is still their own upstream socket
    assert (await person.login("alice", "alice-pw")).status == 200
    rpc = await connect(person)
    await rpc.result("auth.login_ex", pw("alice", ""))
    await rpc.result("system.info")
    assert nas.calls[-1].user == "alice" and len(nas.sessions_of("alice")) == 1
    # Interleaved calls, the same id on two clients: each gets its own answer with its own id.
    a, b = clients[0].ws, clients[1].ws
    await a.send_json({"jsonrpc": "2.0", "id": 7, "method": "core.sleep", "params": [0.3]})
    await b.send_json({"jsonrpc": "2.0", "id": 7, "method": "system.info", "params": []})
    await a.send_json({"jsonrpc": "2.0", "id": "x", "method": "system.info", "params": []})
    got_b = await b.receive_json(timeout=5)
    assert got_b["id"] == 7 and got_b["result"]["hostname"] == "fake-nas"
    first, second = await a.receive_json(timeout=5), await a.receive_json(timeout=5)
    assert (first["id"], first["result"]["hostname"]) == ("x", "fake-nas")
    assert second == {"jsonrpc": "2.0", "id": 7, "result": "slept"}
    # A client's auth.logout or close leaves the shared socket to the others.
    await clients[3].result("auth.logout")
    await clients[3].ws.close()
    await asyncio.sleep(0.1)
    assert (await clients[2].result("system.info"))["hostname"] == "fake-nas"
    assert api_key_logins(nas) == 1 and len(nas.sessions_of("svc")) == 1


async def test_service_clients_get_only_the_events_they_subscribed_to(
    make_gateway: MakeGateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    _gw, (one, two, other) = await hybrid_service(make_gateway, nas, client_for, 3)
    sub_one = await one.result("core.subscribe", "alert.list")
    sub_two = await two.result("core.subscribe", "alert.list")
    await other.result("core.subscribe", "pool.query")
    (conn,) = nas.sessions_of("svc")
    assert sorted(conn.subs.values()) == ["alert.list", "pool.query"]   # one upstream subscription each
    assert await nas.emit("alert.list", "added", 1, {"level": "WARNING"}) == 1
    for rpc in (one, two):
        event = await rpc.ws.receive_json(timeout=5)
        assert event["method"] == "collection_update" and event["params"]["collection"] == "alert.list"
    with pytest.raises(TimeoutError):
        await other.ws.receive_json(timeout=0.3)
    assert await one.result("core.unsubscribe", sub_one) is None
    await nas.emit("alert.list", "added", 2, {})
    assert (await two.ws.receive_json(timeout=5))["params"]["id"] == 2
    with pytest.raises(TimeoutError):
        await one.ws.receive_json(timeout=0.3)
    assert sub_two
    await two.ws.close()   # the last subscriber closing ends the upstream subscription
    for _ in range(50):
        if "alert.list" not in conn.subs.values():
            break
        await asyncio.sleep(0.02)
    assert list(conn.subs.values()) == ["pool.query"]


async def test_the_shared_socket_reconnects_under_its_clients(
    make_gateway: MakeGateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    _gw, (one, two) = await hybrid_service(make_gateway, nas, client_for, 2)
    await one.result("system.info")
    await one.ws.send_json({"jsonrpc": "2.0", "id": 5, "method": "core.sleep", "params": [2]})
    await asyncio.sleep(0.2)
    (conn,) = nas.sessions_of("svc")
    await nas.sockets[conn.session_id].close()   # TrueNAS (or the network) drops the shared socket
    failed = await one.ws.receive_json(timeout=5)
    assert failed["id"] == 5 and failed["error"]["data"]["errname"] == "EFAULT"
    assert (await one.result("system.info"))["hostname"] == "fake-nas"
    assert (await two.result("system.info"))["hostname"] == "fake-nas"
    assert api_key_logins(nas) == 2 and len(nas.sessions_of("svc")) == 1
    (conn,) = nas.sessions_of("svc")
    conn.user = None   # TrueNAS ends the key's session: that call fails, the next logs in again
    assert (await two.call("system.info"))["error"]["data"]["errname"] == "EFAULT"
    assert (await two.result("system.info"))["hostname"] == "fake-nas"
    assert api_key_logins(nas) == 3 and len(nas.sessions_of("svc")) == 1
    assert not one.ws.closed and not two.ws.closed
