"""What reaches the upstream: the person's own token where the version wants it, nothing the client forged.

The fake's `/api/echo` answers with exactly what arrived (headers, query, form), so every assertion is about
the bytes the upstream really saw.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from tests.fakes.echo import EchoUpstream
from tests.fakes.technitium import FakeTechnitium
from tests.integration.conftest import LOGIN
from tests.support.gateway import SECRET, Gateway, GatewayClient, MakeGateway, MakeTlsGateway, gateway_env

FORGED = {
    "Authorization": "Bearer " + "f" * 64,
    "Remote-User": "admin",
    "Remote-Groups": "admins",
    "X-Forwarded-User": "admin",
    "X-Authproxy-Token": "e" * 64,
    "X-Authproxy-User": "admin",
    "X-Real-IP": "6.6.6.6",
    "X-Client-IP": "6.6.6.6",
    "Forwarded": "for=6.6.6.6;proto=https",
    "X-Original-URL": "/api/admin/users/delete",
    "X-Forwarded-Prefix": "/evil",
}


async def echo(
    client: GatewayClient, method: str = "GET", path: str = "/api/echo", **kw: Any
) -> dict[str, Any]:
    resp = await client.request(method, path, **kw)
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "ok", body
    return body["response"]  # type: ignore[no-any-return]


def only_token(technitium: FakeTechnitium) -> str:
    [token] = technitium.sessions
    return token


async def test_client_authorization_and_token_parameters_never_reach_the_upstream(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    await client.login("alice", "alice-pass")
    token = only_token(technitium)
    got = await echo(client, path="/api/echo?token=" + "a" * 64 + "&TOKEN=x&%74oken=y&keep=1",
                     headers={"Authorization": "Bearer " + "f" * 64})
    seen = technitium.requests_to("/api/echo")[-1]
    assert seen.headers.getall("Authorization") == [f"Bearer {token}"]
    assert seen.raw_query == "keep=1"
    assert got["session"]["username"] == "alice"
    # The same in a form body (Technitium reads `token` from the form too).
    got = await echo(client, "POST", data={"token": "b" * 64, "Token": "c", "zone": "example.com"})
    assert got["form"] == {"zone": "example.com"}
    assert technitium.requests_to("/api/echo")[-1].headers.getall("Authorization") == [f"Bearer {token}"]


async def test_form_bodies_keep_their_exact_characters(client: GatewayClient) -> None:
    await client.login("alice", "alice-pass")
    fields = {"displayName": "Łukasz ✓ 名前", "comment": "a+b=c&d", "latin": "café", "empty": ""}
    got = await echo(client, "POST", data=fields)
    assert got["form"] == fields


async def test_identity_and_forwarding_forgeries_from_behind_a_trusted_proxy(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    await client.login("alice", "alice-pass")
    # The client forged X-Forwarded-For: 6.6.6.6; the trusted proxy appended the real address.
    got = await echo(client, headers={**FORGED, "X-Forwarded-For": "6.6.6.6, 203.0.113.9"})
    h = got["headers"]
    for name in ("remote-user", "remote-groups", "x-forwarded-user", "x-authproxy-token", "x-authproxy-user",
                 "x-client-ip", "forwarded", "x-original-url", "x-forwarded-prefix"):
        assert name not in h, name
    assert h["x-real-ip"] == "203.0.113.9" and h["x-forwarded-for"] == "203.0.113.9"
    assert h["x-forwarded-proto"] == "https"
    seen = technitium.requests_to("/api/echo")[-1]
    assert seen.headers.getall("Authorization") == [f"Bearer {only_token(technitium)}"]
    assert got["clientIp"] == "203.0.113.9"  # what Technitium will log and ban by
    assert "cookie" not in h  # the authproxy cookie is for authproxy only


async def test_other_cookies_pass_but_the_authproxy_cookie_does_not(client: GatewayClient) -> None:
    await client.login("alice", "alice-pass")
    got = await echo(client, headers={"Cookie": f"theme=dark; {client.cookie_name}={client.cookie}; lang=en"})
    assert got["headers"]["cookie"] == "theme=dark; lang=en"


@pytest.fixture
async def insecure_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     connector=aiohttp.TCPConnector(ssl=False)) as session:
        yield session


async def test_forgeries_against_authproxy_serving_tls_itself(
        make_tls_gateway: MakeTlsGateway, technitium: FakeTechnitium,
        insecure_http: aiohttp.ClientSession) -> None:
    gw = await make_tls_gateway({"UPSTREAM_URL": technitium.url, "UPSTREAM_TYPE": "technitium",
                                 "ACCESS_LOG": "false"})
    c = GatewayClient(base=gw.url, http=insecure_http, headers={})
    assert (await c.login("alice", "alice-pass")).status == 200
    got = await echo(c, headers={**FORGED, "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "http",
                                 "X-Forwarded-Host": "evil.example"})
    h = got["headers"]
    assert h["x-real-ip"] == "127.0.0.1" and h["x-forwarded-for"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "https" and h["x-forwarded-host"] == f"127.0.0.1:{gw.port}"
    assert "remote-user" not in h and "forwarded" not in h
    me = await (await c.request("GET", "/_authproxy/api/auth/me")).json()
    assert me["httpsDetected"] is True and me["trustProxy"] is False


# ---- token placement per Technitium version --------------------------------------------------------------

async def _placement(make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
                     fake: FakeTechnitium, **env: str) -> tuple[str | None, str]:
    """(Authorization header, raw query) as the upstream saw them on a proxied call."""
    c = client_for(await make_gateway(gateway_env(fake.url, **env)))
    assert (await c.login("alice", "alice-pass")).status == 200
    await c.request("GET", "/api/zones/list?x=1")
    seen = fake.requests_to("/api/zones/list")[-1]
    return seen.headers.get("Authorization"), seen.raw_query


async def test_v15_is_detected_and_gets_a_bearer_header(
    make_gateway: MakeGateway, technitium: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    auth, query = await _placement(make_gateway, client_for, technitium)
    token = next(iter(technitium.sessions))
    assert auth == f"Bearer {token}" and query == "x=1"


async def test_v14_is_detected_and_gets_a_token_parameter(
        make_gateway: MakeGateway, technitium_v14: FakeTechnitium,
        client_for: Callable[[Gateway], GatewayClient]) -> None:
    auth, query = await _placement(make_gateway, client_for, technitium_v14)
    token = next(iter(technitium_v14.sessions))
    assert auth is None and query == f"x=1&token={token}"
    [zones] = technitium_v14.requests_to("/api/zones/list")
    assert zones.client_ip == "127.0.0.1"


async def test_api_version_setting_forces_query_mode(make_gateway: MakeGateway, technitium: FakeTechnitium,
                                                     client_for: Callable[[Gateway], GatewayClient]) -> None:
    auth, query = await _placement(make_gateway, client_for, technitium, TECHNITIUM_API_VERSION="14")
    assert auth is None and query.startswith("x=1&token=")


async def test_token_mode_setting_forces_query_mode(make_gateway: MakeGateway, technitium: FakeTechnitium,
                                                    client_for: Callable[[Gateway], GatewayClient]) -> None:
    auth, query = await _placement(make_gateway, client_for, technitium, TECHNITIUM_TOKEN_MODE="query")
    assert auth is None and query.startswith("x=1&token=")


async def test_token_mode_setting_forces_bearer_mode(
    make_gateway: MakeGateway, technitium_v14: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient]
) -> None:
    auth, query = await _placement(make_gateway, client_for, technitium_v14, TECHNITIUM_TOKEN_MODE="bearer",
                                   TECHNITIUM_API_VERSION="14")
    assert auth is not None and auth.startswith("Bearer ") and query == "x=1"


async def test_login_over_plain_http_is_refused(client: GatewayClient) -> None:
    resp = await client.request("POST", LOGIN, json={"username": "alice", "password": "alice-pass"},
                                headers={"X-Forwarded-Proto": "http"})
    assert resp.status == 400 and (await resp.json())["error"] == "https_required"


async def test_site_allow_lists_apply_to_the_reverse_proxy_too(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        technitium: FakeTechnitium) -> None:
    """ALLOWED_USERS is the site's rule, not forward auth's: alice may sign in upstream, but this
    site is bob's only, so neither her HTTP calls nor her WebSocket upgrades are forwarded."""
    gw = await make_gateway(gateway_env(technitium.url, ALLOWED_USERS="bob"))
    client = client_for(gw)
    assert (await client.login("alice", "alice-pass")).status == 200
    resp = await client.request("GET", "/api/echo", headers={"Accept": "application/json"})
    assert resp.status == 403 and (await resp.json())["error"] == "forbidden"
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Accept": "application/json"}
    resp = await client.request("GET", "/ws", headers=upgrade)
    assert resp.status == 403
    assert technitium.requests_to("/api/echo") == [] and technitium.requests_to("/ws") == []
    # Allowed: the same request goes through.
    allowed = client_for(await make_gateway(gateway_env(technitium.url, ALLOWED_USERS="alice")))
    assert (await allowed.login("alice", "alice-pass")).status == 200
    assert (await allowed.request("GET", "/api/echo")).status == 200


async def _post_in_two_pieces(
    gw: Gateway, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    """A request whose body arrives in two TCP writes 0.2 s apart (a single read() sees only the first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nContent-Length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "Connection: close\r\n\r\n").encode()
    writer.write(head + body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(body[len(body) // 2:])
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_bodies_arriving_in_pieces_are_read_whole(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        technitium: FakeTechnitium) -> None:
    gw = await make_gateway(gateway_env(technitium.url))
    login = json.dumps({"username": "alice", "password": "alice-pass"}).encode()
    status, answer = await _post_in_two_pieces(gw, LOGIN, {"Content-Type": "application/json",
                                                           "X-Forwarded-Proto": "https"}, login)
    assert status == 200, answer
    client = client_for(gw)
    assert (await client.login("alice", "alice-pass")).status == 200
    fields = {"a": "x" * 100_000, "zone": "example.com"}
    status, answer = await _post_in_two_pieces(gw, "/api/echo", {
        "Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-Proto": "https",
        "Cookie": f"{client.cookie_name}={client.cookie}"}, urlencode(fields).encode())
    assert status == 200, answer[:300]
    assert json.loads(answer)["response"]["form"] == fields


async def test_a_redirect_that_echoes_the_query_never_hands_out_the_token(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient]) -> None:
    """Technitium (ASP.NET default files) answers `/js` with 301 to `/js/?<query>`: with v14 the query
    holds the injected token. The browser must get the redirect without it."""
    fake = FakeTechnitium(api_version=14)
    fake.add_user("alice", "alice-pass")

    @web.middleware
    async def slash(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if request.path == "/js":
            raise web.HTTPMovedPermanently(f"/js/?{request.query_string}")
        return await handler(request)

    fake.app.middlewares.append(slash)
    await fake.start()
    try:
        client = client_for(await make_gateway(gateway_env(fake.url, TECHNITIUM_API_VERSION="14")))
        assert (await client.login("alice", "alice-pass")).status == 200
        [token] = fake.sessions
        resp = await client.request("GET", "/js?v=2")
        assert resp.status == 301
        assert token not in resp.headers["Location"]
        assert resp.headers["Location"] == "/js/?v=2"
    finally:
        await fake.close()


# ---- methods that make an upstream echo the request -----------------------------------------------------

async def test_trace_and_other_echoing_methods_never_carry_the_credential(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream) -> None:
    """The echo upstream answers every method with the request it got (as TRACE does): what it would
    send back is the injected credential."""
    service = "s" * 64
    env = {"AUTH_MODE": "none", "UPSTREAM_URL": echo_upstream.url, "UPSTREAM_TYPE": "technitium",
           "UPSTREAM_SERVICE_TOKEN": service, "SESSION_SECRET": SECRET, "ACCESS_LOG": "false"}
    client = client_for(await make_gateway(env))
    resp = await client.request("TRACE", "/api/zones/list?x=1", headers={"Accept": "application/json"})
    body = await resp.read()
    assert resp.status == 405 and json.loads(body)["error"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"] and service.encode() not in body
    for method in ("TRACK", "DEBUG", "trace"):   # aiohttp's own parser already refuses these (400)
        resp = await client.request(method, "/api/zones/list?x=1", headers={"Accept": "application/json"})
        assert resp.status in (400, 405) and service.encode() not in await resp.read(), method
    assert echo_upstream.requests == []
    assert (await client.request("GET", "/x")).status == 200   # everything else is forwarded as before
    # A site may allow one (documented: it then gets the credential echoed back).
    allowed = client_for(await make_gateway({**env, "ALLOW_METHODS": "TRACE"}))
    resp = await allowed.request("TRACE", "/x")
    assert resp.status == 200 and echo_upstream.last.method == "TRACE"
    assert service in await resp.text()
    assert (await allowed.request("TRACK", "/x")).status in (400, 405)
    assert len(echo_upstream.requests) == 2


# ---- credential fields in form bodies of any size and encoding ---------------------------------------------

MiB = 1 << 20


async def _pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for piece in parts:
        yield piece


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_token_field_leaves_urlencoded_forms_of_any_size(
        client: GatewayClient, technitium: FakeTechnitium, framing: str) -> None:
    """Over 1 MiB the form streams: filtered as it passes (a field cut between two pieces included)."""
    await client.login("alice", "alice-pass")
    token = only_token(technitium)
    big = b"x" * (2 * MiB)
    body = b"records=" + big + b"&token=" + b"b" * 64 + b"&zone=example.com&%74oken=c&TOKEN"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if framing == "content-length":
        headers["Content-Length"] = str(len(body))
    cut = len(body) - 40   # the second piece starts inside a `token` name
    resp = await client.request("POST", "/api/echo", data=_pieces(body[:cut], body[cut:]), headers=headers)
    assert resp.status == 200, await resp.text()
    await resp.read()
    seen = technitium.requests_to("/api/echo")[-1]
    assert seen.body == b"records=" + big + b"&zone=example.com"
    assert seen.headers.getall("Authorization") == [f"Bearer {token}"]


def _multipart(*parts: tuple[str, bytes, str | None]) -> bytes:
    out = b""
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + b"--XyZ--\r\n"


MULTIPART = {"Content-Type": "multipart/form-data; boundary=XyZ"}


async def test_a_multipart_token_field_is_refused_before_anything_reaches_the_upstream(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    await client.login("alice", "alice-pass")
    for name in ("token", "Token", "t%6Fken"):
        body = _multipart(("zone", b"example.com", None), (name, b"b" * 64, None))
        resp = await client.request("POST", "/api/echo", data=body, headers=MULTIPART)
        assert resp.status == 400, name
        assert (await resp.json())["error"] == "credential_field"
    assert technitium.requests_to("/api/echo") == []


async def test_large_multipart_uploads_pass_unchanged_and_a_late_token_part_is_cut_off(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    await client.login("alice", "alice-pass")
    upload = bytes(range(256)) * (8 * 1024)   # 2 MiB of every byte value
    body = _multipart(("zone", b"example.com", None), ("file", upload, "zone.txt"))
    resp = await client.request("POST", "/api/echo", data=body, headers=MULTIPART)
    assert resp.status == 200, await resp.text()
    seen = technitium.requests_to("/api/echo")[-1]
    assert seen.body == body and seen.form == {"zone": "example.com"}
    assert seen.headers["Content-Length"] == str(len(body))   # not re-framed: the length holds
    # The same upload with a token part after the first MiB: streamed until then, then broken off.
    late = _multipart(("file", upload, "zone.txt"), ("token", b"b" * 64, None))
    resp = await client.request("POST", "/api/echo", data=late, headers=MULTIPART)
    assert resp.status == 400 and (await resp.json())["error"] == "credential_field"
    assert len(technitium.requests_to("/api/echo")) == 1   # the upstream never got a whole request


async def test_forms_the_upstream_would_decode_into_a_token_field_are_refused(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    """The upstream decodes an urlencoded form in its Content-Type's charset (ASP.NET Core does; so
    does the fake, being aiohttp), and part names as RFC 2047 encoded-words or RFC 2231 `name*`."""
    await client.login("alice", "alice-pass")
    utf16 = "zone=example.com&token=chosen-by-the-client".encode("utf-16-le")
    resp = await client.request("POST", "/api/echo", data=utf16, headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-16le"})
    assert resp.status == 400 and (await resp.json())["error"] == "unsupported_charset"
    for name in ("=?utf-8?q?token?=", "=?utf-8?b?dG9rZW4=?="):
        body = _multipart(("zone", b"example.com", None), (name, b"chosen-by-the-client", None))
        resp = await client.request("POST", "/api/echo", data=body, headers=MULTIPART)
        assert resp.status == 400 and (await resp.json())["error"] == "credential_field", name
    rfc2231 = (b"--XyZ\r\nContent-Disposition: form-data; name*=utf-16le''t%00o%00k%00e%00n%00\r\n\r\n"
               b"chosen-by-the-client\r\n--XyZ--\r\n")
    resp = await client.request("POST", "/api/echo", data=rfc2231, headers=MULTIPART)
    assert resp.status == 400 and (await resp.json())["error"] == "credential_field"
    assert technitium.requests_to("/api/echo") == []
    # an ASCII-based charset is filtered as ever, and reaches the upstream without the field
    latin = "zone=example.com&token=chosen-by-the-client".encode("latin-1")
    resp = await client.request("POST", "/api/echo", data=latin, headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=iso-8859-1"})
    assert resp.status == 200
    seen = technitium.requests_to("/api/echo")[-1]
    assert seen.form == {"zone": "example.com"} and b"chosen" not in seen.body

