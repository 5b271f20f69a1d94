"""Who may ask /verify* at all (ISSUE V1): the forward-auth listener, the shared secret, and neither.

The real app on real sockets. A "proxy" here is a request from 127.0.0.1 (trusted by default) carrying the
headers Caddy sends; it is the same request a browser behind a TLS-terminating proxy could make, which is
the point: only where it arrives (FORWARD_AUTH_PORT) or what it proves (FORWARD_AUTH_SECRET) tells them apart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from authproxy.proxy.headers import upstream_request_headers
from authproxy.web import forward_auth
from tests.fakes.technitium import FakeTechnitium
from tests.integration.test_forward_auth import proxy_headers
from tests.support.gateway import Gateway, MakeGateway, gateway_env
from tests.support.technitium import ALICE

FA_SECRET = "forward-auth-secret-" + "q" * 40
HEADER = "X-Authproxy-Secret"
ORIGINAL = "https://dns.example.com/api/zones/list"
KIND_OF = {"/_authproxy/verify/caddy": "caddy", "/_authproxy/verify/traefik": "traefik",
           "/_authproxy/verify/nginx": "nginx", "/_authproxy/verify": "nginx"}
PATHS = tuple(KIND_OF)


async def _get(
    http: aiohttp.ClientSession, url: str, headers: Any = None
) -> tuple[int, CIMultiDict[str], bytes]:
    async with http.get(url, headers=headers, allow_redirects=False) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def _signed_in(http: aiohttp.ClientSession, gw: Gateway) -> str:
    """alice's session, as a `Cookie` header value."""
    async with http.post(
        gw.url + "/_authproxy/api/auth/login",
        json={"username": ALICE[0], "password": ALICE[1]},
        headers={"X-Forwarded-Proto": "https"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        cookie = resp.cookies["__Host-authproxy"].value
    return f"__Host-authproxy={cookie}"


def _check(cookie: str, *extra: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict([*proxy_headers("caddy", ORIGINAL), ("Cookie", cookie), *extra])


def _no_credential(status: int, headers: CIMultiDict[str], body: bytes, technitium: FakeTechnitium) -> None:
    assert (
        "Authorization" not in headers and "X-Authproxy-Token" not in headers and "Remote-User" not in headers
    )
    for token in technitium.sessions:
        assert token not in str(headers) and token.encode() not in body
    assert FA_SECRET.encode() not in body and HEADER.encode().lower() not in body.lower()


# ---- the shared secret -------------------------------------------------------------------------------


async def test_the_secret_missing_wrong_or_twice_gets_403_and_nothing_else(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_SECRET=FA_SECRET))
    cookie = await _signed_in(http_client, gw)
    wrong: list[tuple[tuple[str, str], ...]] = [
        (), ((HEADER, ""),), ((HEADER, "nope"),), ((HEADER, FA_SECRET[:-1]),), ((HEADER, FA_SECRET + "x"),),
        ((HEADER, FA_SECRET.upper()),), ((HEADER, FA_SECRET), (HEADER, FA_SECRET)),
        ((HEADER, FA_SECRET), (HEADER, "nope")), ((HEADER.lower().replace("-", "_"), FA_SECRET),),
        (("Authorization", f"Bearer {FA_SECRET}"),),
    ]
    for path in PATHS:
        for extra in wrong:
            status, headers, body = await _get(http_client, gw.url + path, _check(cookie, *extra))
            assert status == 403, (path, extra, status, body)
            assert b'"forward_auth_refused"' in body
            _no_credential(status, headers, body, technitium)
    # Bytes that are not UTF-8 (aiohttp keeps them as surrogates): still a plain no, never a 500.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /_authproxy/verify/caddy HTTP/1.1\r\nHost: x\r\nX-Authproxy-Secret: \xff\xfe\xed\r\n"
                 b"Connection: close\r\n\r\n")
    raw = await reader.read()
    writer.close()
    assert raw.startswith(b"HTTP/1.1 403"), raw[:200]
    # The right one: the proxy's check is answered as before.
    status, headers, _ = await _get(http_client, gw.url + PATHS[0], _check(cookie, (HEADER, FA_SECRET)))
    assert status == 200 and headers["Remote-User"] == "alice"
    assert headers["Authorization"].removeprefix("Bearer ") in technitium.sessions
    # Said once in the log, naming the header and never a value.
    said = [r.getMessage() for r in caplog.records if "forward auth refused" in r.getMessage()]
    assert len(said) == 1 and HEADER in said[0]
    assert not any(FA_SECRET[:-1] in r.getMessage() or FA_SECRET[:-1] in str(getattr(r, "fields", ""))
                   for r in caplog.records)


async def test_the_secret_is_compared_in_constant_time(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = forward_auth.compare_digest

    def spy(a: str | bytes, b: str | bytes) -> bool:
        assert isinstance(a, bytes) and isinstance(b, bytes)
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(forward_auth, "compare_digest", spy)
    gw = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_SECRET=FA_SECRET))
    for given, expected_status in (("guess", 403), (FA_SECRET, 401)):
        status, _, _ = await _get(http_client, gw.url + PATHS[0], _check("x=1", (HEADER, given)))
        assert status == expected_status
    assert seen == [(b"guess", FA_SECRET.encode()), (FA_SECRET.encode(), FA_SECRET.encode())]


async def test_a_proxy_that_adds_the_secret_everywhere_does_not_hand_it_to_the_upstream() -> None:
    # A front proxy set up to send the header on every request (not just the check): in transparent mode
    # authproxy forwards those requests, and the secret must stop here like an identity header.
    sent = CIMultiDict([(HEADER, FA_SECRET), ("x_authproxy_secret", FA_SECRET), ("Accept", "*/*")])
    assert list(upstream_request_headers(sent, drop_cookie="__Host-authproxy").items()) == [("Accept", "*/*")]


# ---- the separate listener ---------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [False, True])
async def test_the_listener_alone_serves_verify(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession,
        secret: bool) -> None:
    env = {"FORWARD_AUTH_PORT": "0", **({"FORWARD_AUTH_SECRET": FA_SECRET} if secret else {})}
    gw = await make_gateway(gateway_env(technitium.url, **env))
    assert gw.forward_auth_url != gw.url
    cookie = await _signed_in(http_client, gw)
    proof = ((HEADER, FA_SECRET),)
    unknown = await _get(http_client, gw.url + "/_authproxy/no-such-endpoint", {"Accept": "application/json"})
    assert unknown[0] == 404
    # The public listener: the same 404 as any unknown authproxy endpoint, whatever the request proves.
    for path in (
        *PATHS,
        "/_authproxy/verify/apache",
        "/_authproxy/%76erify/caddy",
        "/_authproxy//verify/nginx",
    ):
        status, headers, body = await _get(http_client, gw.url + path, _check(cookie, *proof))
        assert (status, body) == (404, unknown[2]), (path, status, body)
        _no_credential(status, headers, body, technitium)
    # The forward-auth listener answers the checks...
    for path, kind in KIND_OF.items():
        headers = CIMultiDict([*proxy_headers(kind, ORIGINAL), ("Cookie", cookie)])
        if secret:
            headers.add(HEADER, FA_SECRET)
        status, answer, _ = await _get(http_client, gw.forward_auth_url + path, headers)
        assert status == 200 and answer["Remote-User"] == "alice", (path, status)
    if secret:  # ...and with a secret too, only with it.
        status, headers, body = await _get(http_client, gw.forward_auth_url + PATHS[0], _check(cookie))
        assert status == 403
        _no_credential(status, headers, body, technitium)
    # ...and nothing else: no portal, no API, no proxying there.
    for path in (
        "/_authproxy/login",
        "/_authproxy/api/auth/session",
        "/_authproxy/healthz",
        "/api/zones/list",
        "/",
    ):
        status, _, body = await _get(http_client, gw.forward_auth_url + path, {"Cookie": cookie})
        assert status == 404, (path, status, body)


async def test_the_listener_survives_as_long_as_the_app_and_stops_with_it(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession) -> None:
    gw = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_PORT="0"))
    url = gw.forward_auth_url
    assert (await _get(http_client, url + PATHS[0], _check("x=1")))[0] == 401
    await gw.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(http_client, url + PATHS[0], _check("x=1"))


# ---- neither: not served -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["session", "none"])
async def test_without_either_verify_is_not_served_at_all(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture, mode: str) -> None:
    caplog.set_level(logging.INFO)
    service = technitium.create_session("alice", type="ApiToken", token_name="authproxy")
    env = {"AUTH_MODE": "none", "UPSTREAM_SERVICE_TOKEN": service} if mode == "none" else {}
    gw = await make_gateway(gateway_env(technitium.url, **env))
    cookie = await _signed_in(http_client, gw) if mode == "session" else "x=1"
    unknown = await _get(http_client, gw.url + "/_authproxy/no-such-endpoint", {"Accept": "application/json"})
    for path in PATHS:
        for extra in ((), ((HEADER, FA_SECRET),)):
            status, headers, body = await _get(http_client, gw.url + path, _check(cookie, *extra))
            assert (status, body) == (404, unknown[2]), (path, status, body)
            _no_credential(status, headers, body, technitium)
            assert service not in str(headers) and service.encode() not in body
    said = [r.getMessage() for r in caplog.records if "forward auth is not set up" in r.getMessage()]
    assert len(said) == 1 and "FORWARD_AUTH_PORT" in said[0] and "FORWARD_AUTH_SECRET" in said[0]
