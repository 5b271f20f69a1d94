"""The TrueNAS fake behaves as the middleware source says (tests/fakes/truenas.py cites which file)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.clock import OffsetClock
from tests.fakes.truenas import ENOTAUTHENTICATED, FakeTrueNAS


class Rpc:
    """A bare JSON-RPC 2.0 client: one call at a time, or several, answers matched by id."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def send(self, method: str, *params: Any) -> int:
        id_ = next(self.ids)
        await self.ws.send_str(
            json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": list(params)})
        )
        return id_

    async def call(self, method: str, *params: Any) -> dict[str, Any]:
        id_ = await self.send(method, *params)
        answer: dict[str, Any] = await self.ws.receive_json(timeout=5)
        assert answer["id"] == id_
        return answer

    async def result(self, method: str, *params: Any) -> Any:
        answer = await self.call(method, *params)
        assert "error" not in answer, answer
        return answer["result"]


@pytest.fixture
async def nas() -> AsyncIterator[FakeTrueNAS]:
    async with FakeTrueNAS(clock=OffsetClock()) as fake:
        fake.add_user("alice", "alice-pw")
        fake.add_user("olga", "olga-pw", otp=True)
        fake.add_user("reader", "reader-pw", roles=["READONLY_ADMIN"])
        fake.add_user("noapi", "noapi-pw", roles=[], api_access=False)
        fake.add_user("old", "old-pw", expired=True)
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def rpc(http: aiohttp.ClientSession, nas: FakeTrueNAS) -> Rpc:
    return Rpc(await http.ws_connect(nas.ws_url))


def pw(user: str, password: str) -> dict[str, Any]:
    return {
        "mechanism": "PASSWORD_PLAIN",
        "username": user,
        "password": password,
        "login_options": {"user_info": True},
    }


async def test_password_login_binds_the_socket(nas: FakeTrueNAS, http: aiohttp.ClientSession) -> None:
    c = await rpc(http, nas)
    refused = await c.call("system.info")
    assert refused["error"]["code"] == -32001
    assert refused["error"]["data"]["error"] == ENOTAUTHENTICATED
    assert refused["error"]["data"]["errname"] == "ENOTAUTHENTICATED"
    ok = await c.result("auth.login_ex", pw("alice", "alice-pw"))
    assert ok["response_type"] == "SUCCESS" and ok["authenticator"] == "LEVEL_1"
    assert ok["user_info"]["privilege"]["roles"] == {"$set": ["FULL_ADMIN"]}
    assert (await c.result("system.info"))["hostname"] == "fake-nas"
    other = await rpc(http, nas)  # another socket is not logged in
    assert (await other.call("system.info"))["error"]["data"]["errname"] == "ENOTAUTHENTICATED"
    await c.ws.close()
    await asyncio.sleep(0.05)
    assert nas.sessions_of("alice") == []


async def test_login_outcomes(nas: FakeTrueNAS, http: aiohttp.ClientSession) -> None:
    c = await rpc(http, nas)
    assert (await c.result("auth.login_ex", pw("alice", "nope")))["response_type"] == "AUTH_ERR"
    assert (await c.result("auth.login_ex", pw("ghost", "x")))["response_type"] == "AUTH_ERR"
    assert (await c.result("auth.login_ex", pw("old", "old-pw")))["response_type"] == "EXPIRED"
    assert (await c.result("auth.login_ex", pw("noapi", "noapi-pw")))["response_type"] == "DENIED"
    bad = await c.call("auth.login_ex", {"mechanism": "MAGIC"})
    assert bad["error"]["code"] == -32602
    assert (await c.call("no.such"))["error"]["data"]["errname"] == "ENOTAUTHENTICATED"  # login first
    assert (await c.result("auth.login", "alice", "alice-pw")) is True
    assert (await c.call("no.such"))["error"]["code"] == -32601


async def test_redirect_on_standby(http: aiohttp.ClientSession) -> None:
    async with FakeTrueNAS(ha_standby_urls=["10.0.0.2"]) as nas:
        c = await rpc(http, nas)
        assert await c.result("auth.login_ex", pw("x", "y")) == {
            "response_type": "REDIRECT",
            "urls": ["10.0.0.2"],
        }


async def test_otp_belongs_to_the_socket(nas: FakeTrueNAS, http: aiohttp.ClientSession) -> None:
    c = await rpc(http, nas)
    stray = await c.call("auth.login_ex_continue", {"mechanism": "OTP_TOKEN", "otp_token": "123456"})
    assert stray["error"]["data"]["errname"] == "EINVAL"
    assert await c.result("auth.login_ex", pw("olga", "olga-pw")) == {
        "response_type": "OTP_REQUIRED",
        "username": "olga",
    }
    other = await rpc(http, nas)  # the pending step is not another socket's
    stray = await other.call(
        "auth.login_ex_continue", {"mechanism": "OTP_TOKEN", "otp_token": nas.code_for("olga")}
    )
    assert stray["error"]["data"]["errname"] == "EINVAL"
    wrong = await c.result("auth.login_ex_continue", {"mechanism": "OTP_TOKEN", "otp_token": "000000"})
    assert wrong["response_type"] == "AUTH_ERR"
    again = await c.call(
        "auth.login_ex_continue", {"mechanism": "OTP_TOKEN", "otp_token": nas.code_for("olga")}
    )
    assert again["error"]["data"]["errname"] == "EINVAL"  # a wrong code dropped the step
    await c.result("auth.login_ex", pw("olga", "olga-pw"))
    code = nas.code_for("olga")
    ok = await c.result("auth.login_ex_continue", {"mechanism": "OTP_TOKEN", "otp_token": code})
    assert ok["response_type"] == "SUCCESS"
    assert "secret=" in ok["user_info"]["two_factor_config"]["provisioning_uri"]
    d = await rpc(http, nas)  # a code is not accepted twice
    await d.result("auth.login_ex", pw("olga", "olga-pw"))
    assert (await d.result("auth.login_ex_continue", {"mechanism": "OTP_TOKEN", "otp_token": code}))[
        "response_type"
    ] == "AUTH_ERR"


async def test_tokens(nas: FakeTrueNAS, http: aiohttp.ClientSession) -> None:
    clock = nas.clock
    assert isinstance(clock, OffsetClock)
    c = await rpc(http, nas)
    await c.result("auth.login_ex", pw("alice", "alice-pw"))
    multi = await c.result("auth.generate_token", 60, {}, True, False)
    single = await c.result("auth.generate_token", 60, {}, True, True)
    assert len(multi) == 64 and multi in nas.issued_tokens
    d = await rpc(http, nas)
    assert await d.result("auth.login_with_token", single) is True
    e = await rpc(http, nas)
    assert await e.result("auth.login_with_token", single) is False  # single use
    tok = await e.result("auth.login_ex", {"mechanism": "TOKEN_PLAIN", "token": multi})
    assert tok["response_type"] == "SUCCESS" and tok["user_info"]["pw_name"] == "alice"
    clock.advance(59)  # sliding: from the last use
    f = await rpc(http, nas)
    assert await f.result("auth.login_with_token", multi) is True
    await e.ws.close()  # the session that logged in with it destroys it
    await asyncio.sleep(0.05)
    g = await rpc(http, nas)
    assert await g.result("auth.login_with_token", multi) is False
    late = await c.result("auth.generate_token", 60)
    clock.advance(61)
    assert await g.result("auth.login_with_token", late) is False  # expired


async def test_read_only_role(nas: FakeTrueNAS, http: aiohttp.ClientSession) -> None:
    c = await rpc(http, nas)
    await c.result("auth.login_ex", pw("reader", "reader-pw"))
    assert await c.result("pool.dataset.query") == [{"id": "tank", "name": "tank"}]
    refused = await c.call("pool.dataset.create", {"name": "tank/new"})
    assert refused["error"]["data"]["errname"] == "EACCES"
    assert refused["error"]["data"]["reason"] == "[EACCES] Not authorized"


async def test_api_keys_and_insecure_transport(http: aiohttp.ClientSession) -> None:
    async with FakeTrueNAS() as nas:
        nas.add_user("svc", "svc-pw", roles=["READONLY_ADMIN"])
        key = nas.add_api_key("svc")
        c = await rpc(http, nas)
        ok = await c.result(
            "auth.login_ex", {"mechanism": "API_KEY_PLAIN", "username": "svc", "api_key": key.wire}
        )
        assert ok["response_type"] == "SUCCESS"
        assert await (await rpc(http, nas)).result("auth.login_with_api_key", key.wire) is True
    async with FakeTrueNAS(remote_peer=True) as nas:
        nas.add_user("svc", "svc-pw")
        key = nas.add_api_key("svc")
        c = await rpc(http, nas)
        first = await c.result(
            "auth.login_ex", {"mechanism": "API_KEY_PLAIN", "username": "svc", "api_key": key.wire}
        )
        assert first["response_type"] == "EXPIRED" and key.revoked


async def test_limits_and_rate(nas: FakeTrueNAS, http: aiohttp.ClientSession) -> None:
    ws = await http.ws_connect(nas.ws_url)
    await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "core.ping", "params": ["x" * 9000]}))
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1007
    c = await rpc(http, nas)
    await c.result("auth.login_ex", pw("alice", "alice-pw"))
    assert await c.result("core.ping", "x" * 9000) == "pong"  # 64 KiB once logged in
    await c.ws.send_str(
        json.dumps({"jsonrpc": "2.0", "id": 9, "method": "core.ping", "params": ["x" * 70000]})
    )
    assert (await c.ws.receive(timeout=5)).data == 1009
    d = await rpc(http, nas)
    for _ in range(20):
        assert (await d.result("auth.mechanism_choices"))[0] == "PASSWORD_PLAIN"
    limited = await d.call("auth.mechanism_choices")
    assert limited["error"]["data"]["reason"] == "[EBUSY] Rate Limit Exceeded"
    for _ in range(25):  # exempt
        await d.result("core.set_options", {"py_exceptions": False})


async def test_answers_out_of_order(nas: FakeTrueNAS, http: aiohttp.ClientSession) -> None:
    c = await rpc(http, nas)
    await c.result("auth.login_ex", pw("alice", "alice-pw"))
    slow = await c.send("core.sleep", 0.3)
    fast = await c.send("core.ping")
    first = await c.ws.receive_json(timeout=5)
    second = await c.ws.receive_json(timeout=5)
    assert (first["id"], second["id"]) == (fast, slow)


async def test_ddp_and_rest(nas: FakeTrueNAS, http: aiohttp.ClientSession) -> None:
    key = nas.add_api_key("alice")
    ws = await http.ws_connect(nas.url.replace("http", "ws") + "/websocket")
    await ws.send_json({"msg": "connect", "version": "1", "support": ["1"]})
    assert (await ws.receive_json(timeout=5))["msg"] == "connected"
    await ws.send_json({"msg": "method", "id": "a", "method": "auth.login", "params": ["alice", "alice-pw"]})
    assert await ws.receive_json(timeout=5) == {"msg": "result", "id": "a", "result": True}
    async with http.get(
        nas.url + "/api/v2.0/system/info", headers={"Authorization": f"Bearer {key.wire}"}
    ) as r:
        assert r.status == 200 and (await r.json())["hostname"] == "fake-nas"
    async with http.get(nas.url + "/api/v2.0/system/info", headers={"Authorization": "Bearer 1-nope"}) as r:
        assert r.status == 401
