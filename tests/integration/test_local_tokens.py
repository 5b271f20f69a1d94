"""A local account's JWT (minted with `POST /_authproxy/api/auth/tokens`) at a local site: the same
role and key checks as that person's cookie, with the account read as it is now (a disabled account,
a lowered role, a revoked token take effect at once), through the proxy and /verify/nginx."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp

from tests.fakes.echo import EchoUpstream
from tests.integration.local_support import API, Local, body, start_local
from tests.integration.test_forward_auth import proxy_headers
from tests.integration.test_local_roles_keys import RULES, SECRET_A, _keys, seen
from tests.integration.test_otp import JWT_SECRET
from tests.support.gateway import Gateway, GatewayClient, MakeGateway

TOKENS = f"{API}/tokens"


async def mint(person: GatewayClient) -> tuple[str, str]:
    resp = await person.request("POST", TOKENS, json={"name": "script", "expiresIn": 3600})
    made = await body(resp)
    assert resp.status == 201, made
    return str(made["token"]), str(made["jti"])


async def start(make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
                echo: EchoUpstream) -> tuple[Local, GatewayClient]:
    local = await start_local(make_gateway, client_for, echo, JWT_SECRET=JWT_SECRET, FORWARD_AUTH_PORT="0",
                              **RULES)
    script = client_for(local.gw)
    script.cookie = None
    return local, script


async def call(script: GatewayClient, method: str, path: str, token: str,
               **headers: str) -> tuple[int, dict[str, Any]]:
    resp = await script.request(method, path, headers={"Authorization": f"Bearer {token}", **headers},
                                data=b"a=1" if method == "POST" else None)
    return resp.status, await body(resp)


async def test_a_local_token_has_its_accounts_role_and_keys_now(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream) -> None:
    local, script = await start(make_gateway, client_for, echo_upstream)
    key_a, _ = await _keys(local)
    vic_made, vic = await local.user("vic", "viewer", allowedKeyIds=[key_a])
    _, eddie = await local.user("eddie", "editor")
    viewer, _ = await mint(vic)
    editor, _ = await mint(eddie)
    assert (await call(script, "GET", "/api/zones", viewer))[0] == 200
    status, answer = await call(script, "POST", "/api/zones", viewer)
    assert (status, answer["error"], answer["requiredRole"]) == (403, "insufficient_permissions", "editor")
    assert (await call(script, "POST", "/api/zones", editor))[0] == 200
    assert echo_upstream.last.header("Authorization") is None   # the JWT never goes upstream
    # Keys: the viewer's one allowed key is injected; another is refused, as for the cookie.
    status, answer = await call(script, "GET", "/update", viewer, **{"x-dns-key-name": "tsig-a"})
    assert status == 200 and seen(answer).header_values("x-dns-key-value") == [SECRET_A]
    status, answer = await call(script, "GET", "/update", viewer, **{"x-dns-key-name": "tsig-b"})
    assert (status, answer["error"]) == (403, "key_access_denied")
    status, answer = await call(script, "GET", "/update", editor, **{"x-dns-key-name": "tsig-a"})
    assert (status, answer["error"]) == (403, "key_access_denied")
    # The account as it is now: fewer keys, then disabled.
    resp = await local.admin.request("PATCH", f"{API}/users/{vic_made['id']}", json={"allowedKeyIds": []})
    assert resp.status == 200, await resp.text()
    status, answer = await call(script, "GET", "/update", viewer, **{"x-dns-key-name": "tsig-a"})
    assert (status, answer["error"]) == (403, "key_access_denied")
    resp = await local.admin.request("PATCH", f"{API}/users/{vic_made['id']}", json={"disabled": True})
    assert resp.status == 200, await resp.text()
    status, answer = await call(script, "GET", "/api/zones", viewer)
    assert (status, answer["error"]) == (401, "invalid_token")


async def test_a_lowered_role_a_deleted_account_and_a_revoked_token(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream) -> None:
    local, script = await start(make_gateway, client_for, echo_upstream)
    made, eddie = await local.user("eddie", "editor")
    first, jti = await mint(eddie)
    second, _ = await mint(eddie)
    assert (await call(script, "POST", "/api/zones", first))[0] == 200
    resp = await local.admin.request("DELETE", f"{TOKENS}/{jti}")
    assert resp.status == 200, await resp.text()
    assert (await call(script, "GET", "/api/zones", first))[:1] == (401,)
    resp = await local.admin.request("PATCH", f"{API}/users/{made['id']}", json={"role": "viewer"})
    assert resp.status == 200, await resp.text()
    status, answer = await call(script, "POST", "/api/zones", second)
    assert (status, answer["error"], answer["role"]) == (403, "insufficient_permissions", "viewer")
    assert (await call(script, "GET", "/api/zones", second))[0] == 200
    assert (await local.admin.request("DELETE", f"{API}/users/{made['id']}")).status == 200
    status, answer = await call(script, "GET", "/api/zones", second)
    assert (status, answer["error"]) == (401, "invalid_token")


async def test_verify_nginx_takes_a_local_token(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream, http_client: aiohttp.ClientSession) -> None:
    local, _ = await start(make_gateway, client_for, echo_upstream)
    key_a, _ = await _keys(local)
    _, vic = await local.user("vic", "viewer", allowedKeyIds=[key_a])
    token, _ = await mint(vic)
    url = local.gw.forward_auth_url + "/_authproxy/verify/nginx"

    async def verify(method: str, path: str, *extra: tuple[str, str]) -> aiohttp.ClientResponse:
        target = proxy_headers("nginx", f"https://dns.example.com{path}", method)
        async with http_client.get(url, headers=[*target, ("Authorization", f"Bearer {token}"),
                                                 *extra]) as resp:
            await resp.read()
            return resp

    resp = await verify("GET", "/api/zones")
    assert resp.status == 200 and resp.headers["Remote-User"] == "vic"
    assert resp.headers["Remote-Groups"] == "viewer"
    assert (await verify("POST", "/api/zones")).status == 403
    resp = await verify("GET", "/update", ("x-dns-key-name", "tsig-a"))
    assert resp.status == 200 and resp.headers["x-dns-key-value"] == SECRET_A
    assert (await verify("GET", "/update", ("x-dns-key-name", "tsig-b"))).status == 403
