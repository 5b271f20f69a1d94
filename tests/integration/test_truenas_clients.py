"""Real TrueNAS client libraries from PyPI talking to authproxy as they would to TrueNAS: pytruenas (a
synchronous JSON-RPC 2.0 client over `websocket-client`, on /api/current) and aiotruenas-client (DDP on
the legacy /websocket). Their logins are answered in band by authproxy (checked against the TrueNAS
fake, throttled, audited), their calls relayed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytruenas
from aiotruenas_client.websockets.machine import CachingMachine
from pytruenas.exceptions import TrueNASError

from tests.fakes.clock import OffsetClock
from tests.fakes.truenas import FakeTrueNAS
from tests.integration.conftest import Audit
from tests.integration.test_truenas import truenas_env
from tests.support.gateway import Gateway, GatewayClient, MakeGateway


@pytest.fixture
async def nas() -> AsyncIterator[FakeTrueNAS]:
    async with FakeTrueNAS(clock=OffsetClock()) as fake:
        fake.add_user("alice", "alice-pw")
        fake.add_user("olga", "olga-pw", otp=True)
        fake.add_user("reader", "reader-pw", roles=["READONLY_ADMIN"])
        fake.add_user("svc", "svc-pw", roles=["READONLY_ADMIN"])
        yield fake


def target(gw: Gateway) -> str:
    return gw.url.replace("http://", "ws://") + "/api/current"


async def using(gw: Gateway, credentials: str, work: Callable[[Any], Any]) -> Any:
    """Run `work(client)` with a pytruenas client on a thread (it is synchronous), closing it after."""

    def run() -> Any:
        client = pytruenas.TrueNASClient(target(gw), credentials=credentials)
        try:
            return work(client)
        finally:
            client.close()

    return await asyncio.to_thread(run)


async def test_pytruenas_signs_in_through_authproxy_and_works_as_that_person(
    make_gateway: MakeGateway, nas: FakeTrueNAS, audit: Audit
) -> None:
    gw = await make_gateway(truenas_env(nas))
    info = await using(gw, "alice:alice-pw", lambda c: c.api.system.info())
    assert info["hostname"] == "fake-nas"
    assert [(c.user, c.method) for c in nas.calls if c.method == "system.info"] == [("alice", "system.info")]
    assert nas.calls[-1].kind == "TOKEN"  # authproxy's own upstream socket, opened with the token chain
    login = audit.lines("login")[-1]
    assert login["outcome"] == "success" and login["user"] == "alice"


async def test_pytruenas_with_otp_and_a_wrong_password(make_gateway: MakeGateway, nas: FakeTrueNAS) -> None:
    gw = await make_gateway(truenas_env(nas))
    code = nas.code_for("olga")
    me = await using(gw, f"olga:olga-pw\n{code}", lambda c: c.api.auth.me())
    assert me["pw_name"] == "olga" and "provisioning_uri" not in me["two_factor_config"]
    with pytest.raises(TrueNASError):
        await using(gw, "alice:wrong", lambda c: c.api.system.info())


async def test_pytruenas_read_only_person_write_refused_by_truenas(
    make_gateway: MakeGateway, nas: FakeTrueNAS
) -> None:
    gw = await make_gateway(truenas_env(nas))

    def work(c: Any) -> tuple[Any, str]:
        rows = c.api.pool.dataset.query()
        try:
            c.api.pool.dataset.create({"name": "tank/x"})
        except TrueNASError as exc:
            return rows, str(exc)
        return rows, "written"

    rows, refusal = await using(gw, "reader:reader-pw", work)
    assert rows[0]["name"] == "tank"
    assert "Not authorized" in refusal
    assert [d["name"] for d in nas.datasets] == ["tank"]


async def test_pytruenas_api_key_refused_unless_allowed(make_gateway: MakeGateway, nas: FakeTrueNAS) -> None:
    key = nas.add_api_key("svc")
    gw = await make_gateway(truenas_env(nas))
    with pytest.raises(TrueNASError):
        await using(gw, key.wire, lambda c: c.api.system.info())
    assert not [c for c in nas.calls if c.method == "auth.login_with_api_key"]
    allowed = await make_gateway(truenas_env(nas, TRUENAS_ALLOW_CLIENT_API_KEYS="true"))
    assert (await using(allowed, key.wire, lambda c: c.api.system.info()))["hostname"] == "fake-nas"
    assert nas.calls[-1].user == "svc"


async def test_pytruenas_as_the_signed_in_person_with_a_placeholder(
    make_gateway: MakeGateway, nas: FakeTrueNAS, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    """A person signed in at authproxy hands a library one of their session's placeholders (what the
    UI's generate_token gets): the library logs in with it as a token, as that person; once they sign
    out, it opens nothing."""
    gw = await make_gateway(truenas_env(nas))
    c = client_for(gw)
    assert (await c.login("alice", "alice-pw")).status == 200
    ws = await c.http.ws_connect(c.base + "/api/current", headers=c._headers(None))
    await ws.send_json(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "auth.login_ex",
            "params": [{"mechanism": "PASSWORD_PLAIN", "username": "alice", "password": ""}],
        }
    )
    assert (await ws.receive_json(timeout=5))["result"]["response_type"] == "SUCCESS"
    await ws.send_json({"jsonrpc": "2.0", "id": 2, "method": "auth.generate_token", "params": [600]})
    placeholder = (await ws.receive_json(timeout=5))["result"]
    await ws.close()
    assert placeholder not in nas.issued_tokens
    me = await using(gw, placeholder, lambda client: client.api.auth.me())
    assert me["pw_name"] == "alice"
    assert nas.calls[-1].user == "alice"
    await c.request("POST", "/_authproxy/api/auth/logout", headers={"Origin": c.origin})
    with pytest.raises(TrueNASError):
        await using(gw, placeholder, lambda client: client.api.auth.me())


async def test_aiotruenas_client_over_the_legacy_ddp_socket(
    make_gateway: MakeGateway, nas: FakeTrueNAS, audit: Audit
) -> None:
    """aiotruenas-client (PyPI) speaks DDP on /websocket with the legacy auth.login: authproxy answers
    its login in band (checked against TrueNAS, audited) and relays its calls."""
    gw = await make_gateway(truenas_env(nas))
    machine = CachingMachine()
    await machine.connect(host=f"127.0.0.1:{gw.port}", api_key=None, password="alice-pw", username="alice",
                          secure=False)
    try:
        assert (await machine.get_system_info())["hostname"] == "fake-nas"
    finally:
        await machine.close()
    assert nas.calls[-1].user == "alice" and nas.calls[-1].method == "system.info"
    assert audit.lines("login")[-1]["outcome"] == "success"
