"""A person signed in with the upstream's own account (Technitium, session mode) mints a JWT for their
scripts: it carries a sealed copy of their own upstream token (the key only in its `ck` claim), used by
the proxy and /verify/nginx, ended by a revoke, by the upstream forgetting it, and never readable from
the store alone."""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Callable

import aiohttp
import jwt

from tests.fakes.technitium import FakeTechnitium
from tests.integration.test_forward_auth import proxy_headers
from tests.integration.test_otp import JWT_SECRET
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env
from tests.support.redis_server import RedisServer, _encode
from tests.support.technitium import ALICE

TOKENS = "/_authproxy/api/auth/tokens"
API = "/api/zones/list"


async def _start(make_gateway: MakeGateway, technitium: FakeTechnitium, redis_url: str,
                 client_for: Callable[[Gateway], GatewayClient]) -> tuple[Gateway, GatewayClient, str, str]:
    gw = await make_gateway(gateway_env(technitium.url, JWT_SECRET=JWT_SECRET, REDIS_URL=redis_url,
                                        FORWARD_AUTH_PORT="0"))
    alice = client_for(gw)
    assert (await alice.login(*ALICE)).status == 200
    resp = await alice.request("POST", TOKENS, json={"name": "backup", "expiresIn": 3600})
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    return gw, alice, str(made["token"]), str(made["jti"])


def _raw(server: RedisServer, *args: str | bytes) -> bytes:
    """The whole reply to one command, as redis-server wrote it."""
    with socket.create_connection((server.host, server.port), timeout=0.3) as sock:
        sock.sendall(_encode(*args))
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


def _keys(server: RedisServer, pattern: str) -> list[bytes]:
    lines = _raw(server, "KEYS", pattern).split(b"\r\n")
    return [line for line in lines if line and not line.startswith((b"*", b"$"))]


def _own(technitium: FakeTechnitium) -> str:
    tokens = [t for t, s in technitium.sessions.items() if s.username == "alice"]
    assert len(tokens) == 1
    return tokens[0]


async def _get(script: GatewayClient, token: str) -> tuple[int, str]:
    resp = await script.request("GET", API, headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.text()


async def test_a_token_carries_its_holders_own_upstream_sign_in(
        make_gateway: MakeGateway, technitium: FakeTechnitium, redis_url: str, redis_server: RedisServer,
        client_for: Callable[[Gateway], GatewayClient], http_client: aiohttp.ClientSession) -> None:
    gw, alice, token, jti = await _start(make_gateway, technitium, redis_url, client_for)
    own = _own(technitium)
    script = client_for(gw)
    script.cookie = None
    status, text = await _get(script, token)
    assert status == 200, text
    seen = technitium.requests_to(API)[-1]
    assert seen.headers.get("Authorization") == f"Bearer {own}" or seen.query.get("token") == own
    assert token not in str(seen.headers) and token not in str(seen.query)
    # /verify/nginx: the person is Remote-User, the upstream gets their own token.
    target = proxy_headers("nginx", f"https://dns.example.com{API}")
    async with http_client.get(gw.forward_auth_url + "/_authproxy/verify/nginx",
                               headers=[*target, ("Authorization", f"Bearer {token}")]) as resp:
        await resp.read()
        assert resp.status == 200 and resp.headers["Remote-User"] == "alice"
        assert own in str(dict(resp.headers)) and token not in str(dict(resp.headers))
    # The store alone opens nothing: no plaintext upstream token anywhere in redis.
    assert _keys(redis_server, "*jwt:cred:*")
    dumped = b"".join(_raw(redis_server, "DUMP", key) for key in _keys(redis_server, "*"))
    assert dumped and own.encode() not in dumped
    # A `ck` that is not the one it was sealed under (re-signed, so only the key is wrong): 401.
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience="authproxy")
    claims["ck"] = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    forged = jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers=jwt.get_unverified_header(token))
    assert (await _get(script, forged))[0] == 401
    assert (await _get(script, token))[0] == 200
    # Revoked: 401, and its copy is gone.
    assert (await alice.request("DELETE", f"{TOKENS}/{jti}")).status == 200
    assert (await _get(script, token))[0] == 401
    assert not _keys(redis_server, "*jwt:cred:*")


async def test_the_upstream_ending_the_sign_in_ends_the_tokens_copy(
        make_gateway: MakeGateway, technitium: FakeTechnitium, redis_url: str, redis_server: RedisServer,
        client_for: Callable[[Gateway], GatewayClient]) -> None:
    gw, _, token, _ = await _start(make_gateway, technitium, redis_url, client_for)
    script = client_for(gw)
    script.cookie = None
    assert (await _get(script, token))[0] == 200
    technitium.expire_all()
    status, text = await _get(script, token)
    assert status == 401 and "session_expired" in text, text
    assert not _keys(redis_server, "*jwt:cred:*")
    status, text = await _get(script, token)
    assert status == 401 and "invalid_token" in text, text


async def test_signing_out_everywhere_ends_the_tokens(
        make_gateway: MakeGateway, technitium: FakeTechnitium, redis_url: str,
        client_for: Callable[[Gateway], GatewayClient]) -> None:
    gw, alice, token, _ = await _start(make_gateway, technitium, redis_url, client_for)
    script = client_for(gw)
    script.cookie = None
    assert (await _get(script, token))[0] == 200
    resp = await alice.request("POST", TOKENS, json={"name": "other", "expiresIn": 3600})
    other = str((await resp.json())["token"])
    assert (await _get(script, other))[0] == 200
    resp = await script.request("POST", "/_authproxy/api/auth/logout",
                                headers={"Authorization": f"Bearer {other}"})
    assert resp.status == 200 and (await resp.json())["revoked"] is True
    assert (await _get(script, other))[0] == 401
    assert (await _get(script, token))[0] == 200
    resp = await alice.request("POST", "/_authproxy/api/auth/logout", json={"everywhere": True})
    assert resp.status == 200, await resp.text()
    assert (await _get(script, token))[0] == 401
