"""`Authorization: Bearer <JWT>` through the reverse proxy and every forward-auth endpoint: the exact
error messages, the upstream never sees the JWT, and a bearer sign-out revokes the token on every
process sharing one Redis (two real `authproxy run` processes)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from authproxy.config.passwordless import kid_for
from tests.fakes.technitium import FakeTechnitium
from tests.fakes.webhook import WebhookReceiver
from tests.integration.test_cli import ROOT, _wait_healthy, base_env
from tests.integration.test_forward_auth import proxy_headers
from tests.integration.test_otp import JWT_SECRET, REQUEST, VERIFY, otp_env, post
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env
from tests.support.procs import ManagedProcess, free_port

MISSING = {"error": "missing_authorization", "message": "Missing authorization header"}
BAD_HEADER = {"error": "invalid_authorization", "message": "Invalid authorization header"}
BAD_TOKEN = {"error": "invalid_token", "message": "Invalid or expired token"}
LOGOUT = "/_authproxy/api/auth/logout"
API = "/api/zones/list"


@pytest.fixture
async def gw(
    make_gateway: MakeGateway, technitium: FakeTechnitium, webhook_receiver: WebhookReceiver
) -> Gateway:
    return await make_gateway(otp_env(technitium, webhook_receiver.discord_url, FORWARD_AUTH_PORT="0"))


async def sign_in(c: GatewayClient, webhook: WebhookReceiver) -> str:
    assert (await post(c, REQUEST))[0] == 200
    status, body = await post(c, VERIFY, {"otp": webhook.code()})
    assert status == 200, body
    c.cookie = None  # a script: the bearer only
    return str(body["token"])


def forged(**claims: Any) -> str:
    now = int(time.time())
    payload = {
        "sub": "admin",
        "iat": now,
        "exp": now + 600,
        "jti": "forged",
        "iss": "authproxy",
        "aud": "authproxy",
        "roles": ["admin"],
        **claims,
    }
    return jwt.encode(
        payload, JWT_SECRET, algorithm="HS256", headers={"kid": kid_for(JWT_SECRET.encode(), "hs")}
    )


async def answer(resp: aiohttp.ClientResponse) -> tuple[int, Any]:
    return resp.status, await resp.json()


async def test_bearer_through_the_proxy_and_the_exact_errors(
    gw: Gateway,
    client_for: Callable[[Gateway], GatewayClient],
    webhook_receiver: WebhookReceiver,
    technitium: FakeTechnitium,
) -> None:
    c = client_for(gw)
    token = await sign_in(c, webhook_receiver)
    ok = await c.request("GET", API, headers={"Authorization": f"Bearer {token}"})
    assert ok.status == 200 and (await ok.json())["status"] == "ok"
    upstream = technitium.requests_to(API)[-1]
    assert token not in str(dict(upstream.headers)) and token not in upstream.raw_query
    assert (
        forged().count(".") == 2
        and (await answer(await c.request("GET", API, headers={"Authorization": f"Bearer {forged()}"})))[0]
        == 200
    )  # same key: a real token

    assert await answer(await c.request("GET", API)) == (401, MISSING)
    for bad in (
        "Bearer",
        f"Bearer  {token}",
        f"bearer {token}",
        f"Token {token}",
        "Basic YWRtaW46YWRtaW4=",
        f"Bearer {token} extra",
        f"Bearer\t{token}",
        f"{token}",
    ):
        assert await answer(await c.request("GET", API, headers={"Authorization": bad})) == (
            401,
            BAD_HEADER,
        ), bad
    for tampered in (
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        forged(aud="other"),
        forged(exp=int(time.time()) - 5),
        forged(iss="someone"),
        jwt.encode({"sub": "admin"}, JWT_SECRET, algorithm="HS256"),
    ):
        resp = await c.request("GET", API, headers={"Authorization": f"Bearer {tampered}"})
        assert await answer(resp) == (401, BAD_TOKEN)
    # A browser without a session still goes to the login page.
    resp = await c.request("GET", "/", headers={"Accept": "text/html"})
    assert resp.status == 302 and "/_authproxy/login" in resp.headers["Location"]


@pytest.mark.parametrize("kind", ["caddy", "nginx", "traefik"])
async def test_every_forward_auth_endpoint_takes_the_bearer(
    kind: str,
    gw: Gateway,
    client_for: Callable[[Gateway], GatewayClient],
    webhook_receiver: WebhookReceiver,
    http_client: aiohttp.ClientSession,
) -> None:
    token = await sign_in(client_for(gw), webhook_receiver)
    target = proxy_headers(kind, "https://dns.example.com/api/zones/list")
    for path in ("/_authproxy/verify", f"/_authproxy/verify/{kind}"):
        url = gw.forward_auth_url + path
        async with http_client.get(url, headers=[*target, ("Authorization", f"Bearer {token}")]) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Remote-User"] == "admin" and resp.headers["Remote-Groups"] == "admin"
            assert token not in str(dict(resp.headers))
            assert (
                resp.headers.get("Authorization", "").startswith("Bearer ")
                or "X-Authproxy-Token" in resp.headers
            )
        async with http_client.get(url, headers=target) as resp:
            assert (resp.status, (await resp.json())["message"]) == (401, MISSING["message"])
        async with http_client.get(url, headers=[*target, ("Authorization", f"Bearer  {token}")]) as resp:
            assert await answer(resp) == (401, BAD_HEADER)
        async with http_client.get(
            url, headers=[*target, ("Authorization", f"Bearer {forged(aud='x')}")]
        ) as resp:
            assert await answer(resp) == (401, BAD_TOKEN)


async def test_logout_with_the_bearer_revokes_that_token_only(
    gw: Gateway, client_for: Callable[[Gateway], GatewayClient], webhook_receiver: WebhookReceiver
) -> None:
    c = client_for(gw)
    first, second = await sign_in(c, webhook_receiver), await sign_in(c, webhook_receiver)
    resp = await c.request("POST", LOGOUT, headers={"Authorization": f"Bearer {first}"})
    assert await answer(resp) == (200, {"authenticated": False, "loggedOut": True, "revoked": True})
    for path in (API, LOGOUT):
        method = "POST" if path == LOGOUT else "GET"
        resp = await c.request(method, path, headers={"Authorization": f"Bearer {first}"})
        assert await answer(resp) == (401, BAD_TOKEN)
    assert (await c.request("GET", API, headers={"Authorization": f"Bearer {second}"})).status == 200


async def test_revocation_across_two_processes_on_one_redis(
    tmp_path: Path,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    redis_url: str,
    process_factory: Callable[..., ManagedProcess],
) -> None:
    env = otp_env(technitium, webhook_receiver.discord_url, REDIS_URL=redis_url)
    bases = []
    procs = []
    for name in ("one", "two"):
        port = free_port()
        procs.append(
            process_factory(
                [sys.executable, "-m", "authproxy", "run"],
                env=base_env(
                    **env, PORT=str(port), HOST="127.0.0.1", AUTHPROXY_DATA_DIR=str(tmp_path / name)
                ),
                inherit_env=False,
                cwd=ROOT,
                name=f"authproxy-{name}",
            )
        )
        bases.append(f"http://127.0.0.1:{port}")
    https = {"X-Forwarded-Proto": "https"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for base, proc in zip(bases, procs, strict=True):
            await _wait_healthy(http, base + "/_authproxy/healthz", proc)
        async with http.post(bases[0] + REQUEST, headers=https) as resp:
            assert resp.status == 200, await resp.text()
        async with http.post(bases[0] + VERIFY, headers=https, json={"otp": webhook_receiver.code()}) as resp:
            token = (await resp.json())["token"]
        bearer = {**https, "Authorization": f"Bearer {token}"}
        for _ in range(3):  # both processes have it verified (and cached)
            for base in bases:
                async with http.get(base + API, headers=bearer) as resp:
                    assert resp.status == 200
        async with http.post(bases[0] + LOGOUT, headers=bearer) as resp:
            assert (await resp.json())["revoked"] is True
        async with http.get(bases[1] + API, headers=bearer) as resp:  # at once, the other process
            assert await answer(resp) == (401, BAD_TOKEN)
        async with http.get(bases[0] + API, headers=bearer) as resp:
            assert await answer(resp) == (401, BAD_TOKEN)
    # INFO logs with the audit lines: no token, code, webhook URL or signing secret
    logged = "".join(proc.log_tail(200_000) for proc in procs)
    assert "otp_request" in logged and "token_revoked" in logged
    for secret in (token, webhook_receiver.code(), "wh-token-SECRET-d1sc0rd", JWT_SECRET):
        assert secret not in logged


async def test_hybrid_a_service_role_token_is_a_service_client_under_the_privilege_check(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    from tests.integration.test_hybrid import background_token

    safe = background_token(technitium)
    c = client_for(
        await make_gateway(
            gateway_env(
                technitium.url, AUTH_MODE="hybrid", JWT_SECRET=JWT_SECRET, TECHNITIUM_BACKGROUND_TOKEN=safe
            )
        )
    )
    resp = await c.request("GET", API, headers={"Authorization": f"Bearer {forged(roles=['service'])}"})
    assert resp.status == 200
    assert technitium.requests_to(API)[-1].headers["Authorization"] == f"Bearer {safe}"
    resp = await c.request("GET", API, headers={"Authorization": f"Bearer {forged(roles=['admin'])}"})
    assert resp.status == 403 and (await resp.json())["error"] == "token_not_served"
    technitium.set_user_permission("bgptr", "Zones", 2)  # the token's user may now modify zones
    gw2 = await make_gateway(
        gateway_env(
            technitium.url, AUTH_MODE="hybrid", JWT_SECRET=JWT_SECRET, TECHNITIUM_BACKGROUND_TOKEN=safe
        )
    )
    resp = await client_for(gw2).request(
        "GET", API, headers={"Authorization": f"Bearer {forged(roles=['service'])}"}
    )
    assert resp.status == 503 and (await resp.json())["error"] == "service_credential_unsafe"


async def test_redis_down_codes_and_bearers_fail_closed_with_503(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    redis_server_factory: Callable[..., Any],
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    redis = redis_server_factory()
    c = client_for(
        await make_gateway(
            otp_env(technitium, webhook_receiver.discord_url, REDIS_URL=redis.url, SESSION_CACHE_TTL="0")
        )
    )
    token = await sign_in(c, webhook_receiver)
    redis.stop()
    for method, path, kw in (
        ("POST", REQUEST, {}),
        ("POST", VERIFY, {"json": {"otp": "123456"}}),
        ("GET", API, {"headers": {"Authorization": f"Bearer {token}"}}),
    ):
        resp = await c.request(method, path, **kw)
        assert resp.status == 503, (path, resp.status, await resp.text())
        assert (await resp.json())["error"] == "store_unavailable"
    assert len(webhook_receiver.posts) == 1  # no code was sent that could not be kept
    redis.start()
    for _ in range(50):
        resp = await c.request("GET", API, headers={"Authorization": f"Bearer {token}"})
        if resp.status == 200:
            break
        await asyncio.sleep(0.1)
    assert resp.status == 200


async def test_a_websocket_opened_with_a_token_closes_when_the_token_is_revoked(
    make_gateway: MakeGateway,
    webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    from aiohttp import WSMsgType

    from tests.fakes.ws_upstream import running_socket_upstream
    from tests.support.technitium import ALICE

    async with running_socket_upstream(ALICE) as up:
        env = otp_env(up.fake, webhook_receiver.discord_url)
        c = client_for(await make_gateway(env))
        token = await sign_in(c, webhook_receiver)
        headers = {"X-Forwarded-Proto": "https", "Authorization": f"Bearer {token}"}
        ws = await c.http.ws_connect(c.base + "/ws", headers=headers, autoping=False)
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "hello"
        assert up.handshakes[-1].headers["Authorization"] == f"Bearer {env['TECHNITIUM_TOKEN']}"
        assert token not in str(dict(up.handshakes[-1].headers))
        started = time.monotonic()
        resp = await c.request("POST", LOGOUT, headers={"Authorization": f"Bearer {token}"})
        assert (await resp.json())["revoked"] is True
        closed = await ws.receive(timeout=5)
        assert closed.type == WSMsgType.CLOSE and closed.data == 4001
        assert time.monotonic() - started < 3  # at once, not at the next 5-second re-check
        await ws.close()


async def test_outside_otp_mode_only_authproxys_own_tokens_are_read(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    """An app behind authproxy may use Bearer JWTs of its own: without a session such a request gets what
    any Bearer the product's UI sends gets (here Technitium's own "session expired"), not a token error;
    a token naming authproxy's key is checked."""
    c = client_for(await make_gateway(gateway_env(technitium.url, JWT_SECRET=JWT_SECRET)))
    theirs = jwt.encode(
        {"sub": "x"}, "an-app-of-its-own-" + "k" * 20, algorithm="HS256", headers={"kid": "app-1"}
    )
    placeholder = await c.request("GET", API, headers={"Authorization": "Bearer " + "ab" * 32})
    expected = (placeholder.status, await placeholder.text())  # what a UI's own (dead) Bearer gets
    for header in (f"Bearer {theirs}", f"Bearer  {theirs}"):
        resp = await c.request("GET", API, headers={"Authorization": header})
        assert (resp.status, await resp.text()) == expected, header
    resp = await c.request("GET", API, headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert "invalid_token" not in await resp.text() and "invalid_authorization" not in await resp.text()
    resp = await c.request("GET", API, headers={"Authorization": f"Bearer {forged(aud='elsewhere')}"})
    assert (resp.status, await resp.json()) == (401, BAD_TOKEN)
