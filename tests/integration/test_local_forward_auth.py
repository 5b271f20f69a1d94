"""Local accounts behind real nginx (auth_request, the shipped config plus nginx/authproxy-keys.conf):
roles decided in /verify, the key injected by nginx from the check's answer over whatever the client
sent, refusals before the app is reached, and a role change in effect at the next request."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
from multidict import CIMultiDict

from tests.fakes.echo import EchoUpstream, ReceivedRequest
from tests.integration.local_support import API, body, start_local
from tests.integration.test_local_roles_keys import RULES, SECRET_A, _keys
from tests.support.gateway import Gateway, GatewayClient, MakeGateway
from tests.support.proxies import Check, StartProxy

COOKIE = "__Host-authproxy"


async def test_local_accounts_through_nginx_forward_auth(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream, nginx_proxy: StartProxy) -> None:
    local = await start_local(make_gateway, client_for, echo_upstream, FORWARD_AUTH_PORT="0", **RULES)
    key_a, _ = await _keys(local)
    made, _ = await local.user("alice", "viewer", allowedKeyIds=[key_a])
    nginx = await nginx_proxy(local.gw.url, echo_upstream.url, recipe="authproxy-keys", tls=True,
                              check=Check(url=local.gw.forward_auth_url))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False),
                                     cookie_jar=aiohttp.DummyCookieJar()) as http:

        async def call(method: str, path: str, cookie: str | None, **headers: str) -> tuple[int, Any]:
            sent = {**headers, **({"Cookie": f"{COOKIE}={cookie}"} if cookie else {})}
            async with http.request(method, nginx.url + path, headers=sent, allow_redirects=False,
                                    data=b"x=1" if method == "POST" else None) as resp:
                text = await resp.text()
                return resp.status, text

        assert (await call("GET", "/zones", None))[0] == 401
        async with http.post(nginx.url + f"{API}/login",
                             json={"username": "alice", "password": "alice-password-123"}) as resp:
            assert resp.status == 200, await resp.text()
            assert (await body(resp))["user"]["role"] == "viewer"
            cookie = resp.cookies[COOKIE].value
        before = len(echo_upstream.requests)
        status, text = await call("GET", "/zones", cookie, **{"x-dns-key-value": "forged"})
        assert status == 200
        got = echo_upstream.last
        assert got.header("x-dns-key-value") is None and got.header("x-dns-key-name") is None
        status, text = await call("GET", "/update", cookie, **{"x-dns-key-name": "tsig-a",
                                                               "x-dns-key-value": "forged",
                                                               "x-dns-algorithm": "none"})
        assert status == 200, text
        got = ReceivedRequest.from_json(json.loads(text))
        assert got.header_values("x-dns-key-value") == [SECRET_A]
        assert got.header_values("x-dns-algorithm") == ["hmac-sha256"]
        after = len(echo_upstream.requests)
        assert after == before + 2
        # Refused in the check: the app never sees them.
        assert (await call("POST", "/zones", cookie))[0] == 403          # a viewer writing
        assert (await call("GET", "/update", cookie, **{"x-dns-key-name": "tsig-b"}))[0] == 403
        twice = CIMultiDict([("Cookie", f"{COOKIE}={cookie}"), ("x-dns-key-name", "tsig-a"),
                             ("X-DNS-Key-Name", "tsig-b")])
        async with http.get(nginx.url + "/update", headers=twice) as resp:
            assert resp.status == 403
        assert len(echo_upstream.requests) == after
        # Made an editor: the old session ends at once; signed in again, the write goes through.
        resp2 = await local.admin.request("PATCH", f"{API}/users/{made['id']}", json={"role": "editor"})
        assert resp2.status == 200
        assert (await call("GET", "/zones", cookie))[0] == 401
        async with http.post(nginx.url + f"{API}/login",
                             json={"username": "alice", "password": "alice-password-123"}) as resp:
            cookie = resp.cookies[COOKIE].value
        assert (await call("POST", "/zones", cookie))[0] == 200
