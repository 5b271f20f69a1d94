"""A one-time code opens one session: a second sign-in with it is refused before the upstream is asked,
on every worker sharing the store (two apps on one SQLite file, or on one real Redis), with the answer a
wrong code gets; the store keeps a keyed hash of it, never the code."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.fakes.technitium import FakeTechnitium
from tests.integration.conftest import Audit
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env

ClientFor = Callable[[Gateway], GatewayClient]
WRONG_CODE = {"error": "invalid_credentials", "message": "Invalid username, password or code."}


async def two_workers(make_gateway: MakeGateway, fake: FakeTechnitium, store: str,
                      redis_url: str | None) -> tuple[Gateway, Gateway]:
    """Two app instances sharing one store (make_gateway gives both the same data directory), as two
    workers or two replicas would."""
    env = gateway_env(fake.url, **({"REDIS_URL": redis_url} if store == "redis" and redis_url else {}))
    return await make_gateway(env), await make_gateway(env)


async def stored_keys(store: str, gw_data: Path, redis_url: str | None) -> list[tuple[str, bytes]]:
    if store == "redis":
        client = aioredis.from_url(redis_url or "")
        try:
            return [(k.decode(), await client.get(k) or b"") for k in await client.keys("*")
                    if await client.type(k) == b"string"]
        finally:
            await client.aclose()
    with sqlite3.connect(gw_data / "sessions.sqlite3") as db:
        return [(k, bytes(v)) for k, v in db.execute("SELECT key, value FROM kv")]


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    name = request.param
    return name, (request.getfixturevalue("redis_url") if name == "redis" else None)


async def test_a_code_opens_one_session_on_every_worker(
        make_gateway: MakeGateway, client_for: ClientFor, technitium: FakeTechnitium, audit: Audit,
        store: tuple[str, str | None], tmp_path: Path) -> None:
    a, b = map(client_for, await two_workers(make_gateway, technitium, *store))
    code = technitium.totp_now()
    assert (await a.login("totpuser", "totp-pass", totp=code)).status == 200
    asked = len(technitium.requests_to("/api/user/login"))

    for worker in (b, a):   # the other worker, then the same one
        again = await worker.login("totpuser", "totp-pass", totp=code)
        assert again.status == 401 and await again.json() == WRONG_CODE
        assert worker is a or worker.cookie is None
    # Technitium's own UI signs in through authproxy too: the same refusal, in Technitium's envelope.
    ui = await b.request(
        "POST", "/api/user/login", data={"user": "totpuser", "pass": "totp-pass", "totp": code}
    )
    assert await ui.json(content_type=None) == {"status": "error", "errorMessage": WRONG_CODE["message"]}
    assert len(technitium.requests_to("/api/user/login")) == asked   # refused before the upstream
    wrong = await b.login("totpuser", "totp-pass", totp="000000" if code != "000000" else "111111")
    assert wrong.status == 401 and await wrong.json() == WRONG_CODE  # the same answer as a wrong code
    reused = [line for line in audit.lines("login") if line["outcome"] == "totp_reused"]
    assert len(reused) == 3 and all(line["user"] == "totpuser" and line["totp"] is True for line in reused)
    assert all(code not in str(line) for line in audit.lines())

    # The store holds a keyed hash of the used code, not the code.
    keys = await stored_keys(store[0], tmp_path / "data", store[1])
    used = [(k, v) for k, v in keys if "totp:" in k]
    assert len(used) == 1 and not any(code in k or code.encode() in v for k, v in keys)

    technitium.advance(30)   # the next code works, on either worker
    assert (await b.login("totpuser", "totp-pass", totp=technitium.totp_now())).status == 200


async def test_parallel_sign_ins_with_one_code_open_one_session(
        make_gateway: MakeGateway, client_for: ClientFor, technitium: FakeTechnitium,
        store: tuple[str, str | None]) -> None:
    first, second = await two_workers(make_gateway, technitium, *store)
    clients = [client_for(first), client_for(second), client_for(first), client_for(second)]
    code = technitium.totp_now()
    answers = await asyncio.gather(*(c.login("totpuser", "totp-pass", totp=code) for c in clients))
    assert sorted(r.status for r in answers) == [200, 401, 401, 401]


async def test_a_code_that_opened_no_session_may_be_used_again(
        make_gateway: MakeGateway, client_for: ClientFor, technitium: FakeTechnitium) -> None:
    a, b = map(client_for, await two_workers(make_gateway, technitium, "sqlite", None))
    code = technitium.totp_now()
    typo = await a.login("totpuser", "totp-typo", totp=code)
    assert typo.status == 401 and (await typo.json())["error"] == "invalid_credentials"
    assert (await b.login("totpuser", "totp-pass", totp=code)).status == 200


async def _equal_codes(*fakes: FakeTechnitium) -> str:
    """The code every fake accepts now (they share the user's secret; wait out a period boundary)."""
    while len({fake.totp_now() for fake in fakes}) != 1:
        await asyncio.sleep(0.05)
    return fakes[0].totp_now()


async def test_a_code_is_spent_at_its_upstream_whatever_the_sites_are_called(
        make_gateway: MakeGateway, client_for: ClientFor, technitium: FakeTechnitium,
        technitium_v14: FakeTechnitium, store: tuple[str, str | None]) -> None:
    """The replay guard is keyed by the upstream that checks the code, not by the site's name. Two
    sites (named apart) in front of one Technitium share its accounts: a code used at one is spent at
    the other. Two deployments sharing one store whose sites are both called `dns` but sit in front
    of different Technitiums are two verifiers: the same digits at the other are a fresh code."""
    redis = {"REDIS_URL": store[1]} if store[0] == "redis" and store[1] else {}
    # one upstream, two site names (and its URL spelled with a trailing slash at the second)
    a = client_for(await make_gateway(gateway_env(technitium.url, SITE_NAME="dns", **redis)))
    b = client_for(await make_gateway(gateway_env(technitium.url + "/", SITE_NAME="dns-admin", **redis)))
    code = technitium.totp_now()
    assert (await a.login("totpuser", "totp-pass", totp=code)).status == 200
    again = await b.login("totpuser", "totp-pass", totp=code)
    assert again.status == 401 and await again.json() == WRONG_CODE

    # two upstreams, one site name: the code used at the first is no replay at the second
    technitium.advance(30)
    technitium_v14.advance(30)
    code = await _equal_codes(technitium, technitium_v14)
    c = client_for(await make_gateway(gateway_env(technitium_v14.url, SITE_NAME="dns", **redis)))
    assert (await a.login("totpuser", "totp-pass", totp=code)).status == 200
    other = await c.login("totpuser", "totp-pass", totp=code)
    assert other.status == 200, await other.text()
