"""Bad input gets a clear 4xx (or "signed out") and never a 500: cookies, headers, CRLF, forwarding junk."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import Callable

from tests.fakes.technitium import FakeTechnitium
from tests.integration.conftest import BROWSER, SESSION
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env


async def raw_request(gw: Gateway, head: bytes, *, whole: bool = False) -> bytes:
    """Send bytes the aiohttp client would refuse to send; returns the status line and headers (`whole`:
    everything until the server closes, for a request that says `Connection: close`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(head)
        await writer.drain()
        data = await asyncio.wait_for(reader.read() if whole else reader.read(65536), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    return data


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


async def signed_out(client: GatewayClient, cookie_header: str) -> None:
    session = await client.request("GET", SESSION, headers={"Cookie": cookie_header})
    assert session.status == 200, (cookie_header, await session.text())
    assert (await session.json())["authenticated"] is False, cookie_header
    api = await client.request("GET", "/api/zones/list", headers={"Cookie": cookie_header})
    assert api.status == 401, (cookie_header, await api.text())


async def test_tampered_garbage_and_oversized_cookies_mean_signed_out(client: GatewayClient) -> None:
    await client.login("alice", "alice-pass")
    good = client.cookie
    assert good is not None
    name = client.cookie_name
    v, sid, key, sig = good.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    other_key = base64.urlsafe_b64encode(b"\x01" * 32).rstrip(b"=").decode()
    client.cookie = None
    cases = [
        f"{name}={v}.{sid}.{key}.{flipped}",            # signature tampered
        f"{name}={v}.{sid}.{other_key}.{sig}",          # key swapped, old signature
        f"{name}=v2.{sid}.{key}.{sig}",                 # unknown version
        f"{name}={v}.{sid}.{key}",                      # truncated
        f"{name}={good}.extra",                         # extra part
        f"{name}={good}{'A' * 5000}",                   # oversized
        f"{name}=garbage",
        f"{name}=",
        f'{name}="{good}',                              # unterminated quote
        f"{name}={v}.{sid}.{key}.{sig[:-1]}*",          # not base64url
        f"{name}=v1.....",
        f"{name}=v1.%00.%00.%00",
        "=;;;==; ;=",
        f"{name}",
        "a" * 7000,
        f"{name}=\u00e9\u00e9.\u00e9.\u00e9.\u00e9".encode().decode("latin-1"),
    ]
    for header in cases:
        await signed_out(client, header)
    # And the real cookie still works afterwards: nothing above broke the session.
    client.cookie = good
    assert (await (await client.request("GET", SESSION)).json())["authenticated"] is True


async def test_a_ticket_signed_with_another_secret_is_rejected(
        make_gateway: MakeGateway, technitium: FakeTechnitium,
        client_for: Callable[[Gateway], GatewayClient]) -> None:
    one = client_for(await make_gateway(gateway_env(technitium.url)))
    await one.login("alice", "alice-pass")
    two = client_for(
        await make_gateway(gateway_env(technitium.url, SESSION_SECRET="another-secret-" + "y" * 40))
    )
    await signed_out(two, f"{two.cookie_name}={one.cookie}")


async def test_secret_rotation_keeps_existing_sessions(
        make_gateway: MakeGateway, technitium: FakeTechnitium, redis_url: str,
        client_for: Callable[[Gateway], GatewayClient]) -> None:
    old = "old-secret-" + "o" * 40
    one = client_for(await make_gateway(gateway_env(technitium.url, SESSION_SECRET=old, REDIS_URL=redis_url)))
    await one.login("alice", "alice-pass")
    rotated = client_for(
        await make_gateway(
            gateway_env(technitium.url, SESSION_SECRET=f"new-secret-{'n' * 40},{old}", REDIS_URL=redis_url)
        )
    )
    rotated.cookie = one.cookie
    assert (await (await rotated.request("GET", SESSION)).json())["authenticated"] is True


async def test_oversized_headers_and_request_lines_get_4xx(gw: Gateway, client: GatewayClient) -> None:
    big = await client.request("GET", "/api/zones/list", headers={"X-Big": "a" * 20000})
    assert 400 <= big.status < 500
    long_url = await client.request("GET", "/" + "a" * 20000)
    assert 400 <= long_url.status < 500
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200_000 // 10))
    raw = await raw_request(gw, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert 400 <= status_of(raw) < 500


async def test_crlf_and_control_characters_in_headers_are_refused(gw: Gateway) -> None:
    for bad in (b"X-Evil: a\rb", b"X-Evil: a\x00b", b"Cookie: a=b\rSet-Cookie: x=y", b"X Evil: a",
                b"Host: a\r\n b"):
        raw = await raw_request(
            gw, b"GET /_authproxy/api/auth/session HTTP/1.1\r\nHost: x\r\n" + bad + b"\r\n\r\n"
        )
        assert 400 <= status_of(raw) < 500, bad


async def test_odd_bytes_and_urls_in_headers_never_give_a_500(gw: Gateway, client: GatewayClient) -> None:
    """Each was a 500 (found by tests/integration/test_fuzz.py). aiohttp decodes header bytes that are no
    UTF-8 as lone surrogates, which nothing can encode again: its own Expect handler quoted the header
    into a 417 text; request.clone() (for Traefik's `X-Forwarded-Proto: wss`) re-encoded every header.
    And urlsplit raises on `https://[::1` in a Referer or Origin."""
    await client.login("alice", "alice-pass")
    cookie = f"Cookie: {client.cookie_name}={client.cookie}\r\n".encode()

    async def send(request_line: bytes, extra: bytes, proto: bytes = b"https") -> bytes:
        return await raw_request(
            gw,
            request_line
            + b"\r\nHost: 127.0.0.1\r\nX-Forwarded-Proto: "
            + proto
            + b"\r\n"
            + cookie
            + extra
            + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            whole=True,
        )

    for extra in (b"Expect: \x80", b"Expect: caf\xc3\xa9"):
        raw = await send(b"POST /_authproxy/api/auth/heartbeat HTTP/1.1", extra)
        assert status_of(raw) == 417, raw
        assert b"\x80" not in raw and b"caf" not in raw  # the answer quotes nothing the client sent
    raw = await send(b"POST /_authproxy/api/auth/heartbeat HTTP/1.1", b"Expect: 100-continue")
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "), raw
    raw = await send(b"GET /_authproxy/api/auth/session HTTP/1.1", b"X-Note: \xff", proto=b"wss")
    assert status_of(raw) == 200 and b'"authenticated": true' in raw, raw  # wss read as https, as before
    for extra in (b"Referer: https://[::1", b"Origin: https://[::1/", b"Referer: http://[v1.x]/"):
        for line in (b"POST /_authproxy/api/auth/logout HTTP/1.1", b"POST /api/zones/create HTTP/1.1"):
            raw = await send(line, extra)
            assert status_of(raw) == 403 and b"cross_site" in raw, (line, extra, raw)


async def test_forms_the_technitium_ui_login_cannot_read_get_its_error_envelope(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    """aiohttp's form reader raises ValueError/LookupError on these; they were 500s (test_fuzz.py)."""
    cases = [
        ("multipart/form-data", b"user=alice&pass=alice-pass"),                     # no boundary
        ("multipart/form-data; boundary=x", b"1" * 300),                            # no part at all
        ("application/x-www-form-urlencoded; charset=no-such-charset", b"user=alice&pass=x"),
        ("application/x-www-form-urlencoded", b"user=\xff\xfe&pass=x"),            # not UTF-8
    ]
    for ctype, body in cases:
        resp = await client.request("POST", "/api/user/login", data=body, headers={"Content-Type": ctype})
        assert resp.status == 200, (ctype, resp.status, await resp.text())
        assert await resp.json() == {"status": "error", "errorMessage": "The form could not be read."}, ctype
    assert technitium.requests_to("/api/user/login") == []


async def test_crlf_in_the_path_never_reaches_a_response_header(client: GatewayClient) -> None:
    for path in (
        "/x%0d%0aSet-Cookie:%20evil=1%0d%0a",
        "/x%0dSet-Cookie:%20evil=1",
        "/x?a=%0d%0aSet-Cookie:%20e=1",
    ):
        resp = await client.request("GET", path, headers=BROWSER)
        assert resp.status in (302, 404), path  # aiohttp's router does not match a decoded newline: 404
        location = resp.headers.get("Location", "")
        assert "\r" not in location and "\n" not in location
        assert "Set-Cookie" not in resp.headers
    page = await client.request("GET", "/_authproxy/login?rd=%2Fx%0d%0aSet-Cookie:%20evil=1", headers=BROWSER)
    assert page.status == 200 and "Set-Cookie" not in page.headers


async def test_malformed_forwarding_headers_from_a_trusted_proxy_get_400(client: GatewayClient) -> None:
    for headers in ({"X-Forwarded-For": "not-an-ip"}, {"X-Forwarded-For": "1.2.3.4, , 5.6.7.8"}):
        resp = await client.request("GET", SESSION, headers=headers)
        assert resp.status == 400, headers


async def test_unknown_paths_under_the_reserved_prefix_are_not_forwarded(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    await client.login("alice", "alice-pass")
    calls = len(technitium.requests)
    for method, path in (("GET", "/_authproxy/nope"), ("PUT", "/_authproxy/api/auth/login"),
                         ("GET", "/_authproxy/api/auth/login"), ("GET", "/_authproxy")):
        resp = await client.request(method, path)
        assert resp.status == 404 and (await resp.json())["error"] == "not_found", (method, path)
    assert len(technitium.requests) == calls  # the reserved prefix is never forwarded upstream


async def test_dot_segments_are_refused_before_routing(
    client: GatewayClient, technitium: FakeTechnitium
) -> None:
    # Browsers resolve `.`/`..` (and `%2e`) before sending. One that arrives would be resolved by the
    # upstream after authproxy had routed and judged the unresolved path: /x/../api/user/session/get is
    # not an /api/ path to a string check, and its answer would go out without the token rewritten.
    await client.login("alice", "alice-pass")
    calls = len(technitium.requests)
    for path in ("/x/../api/user/session/get", "/x/%2e%2e/api/user/session/get", "/api/./user/session/get",
                 "/api/user/session/get/..", "/%2E/api/zones/list"):
        resp = await client.request("GET", path, encoded=True)
        assert resp.status == 400 and (await resp.json())["error"] == "bad_path", path
    assert len(technitium.requests) == calls
    # Dots inside a segment are ordinary characters.
    resp = await client.request("GET", "/api/zones/list?x=/../", encoded=True)
    assert resp.status == 200
    assert (await client.request("GET", "/..well/.hidden.txt", encoded=True)).status != 400


async def test_the_session_cookie_is_found_in_any_cookie_header(gw: Gateway, client: GatewayClient) -> None:
    # Several Cookie headers (an HTTP/2 hop may split them); aiohttp's own parse reads only the first.
    await client.login("alice", "alice-pass")
    ours = f"{client.cookie_name}={client.cookie}"
    for cookies in ([ours], ["theme=dark", ours], ["a=1; b=\"quoted;odd\"", f"x=1; {ours}; y=2"],
                    [f'{client.cookie_name}="{client.cookie}"']):
        head = "".join(f"Cookie: {c}\r\n" for c in cookies)
        raw = await raw_request(gw, f"GET {SESSION} HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\n{head}"
                                    "Connection: close\r\n\r\n".encode())
        assert status_of(raw) == 200 and b'"authenticated": true' in raw.replace(b'":true', b'": true'), (
            cookies
        )
    raw = await raw_request(
        gw,
        f"GET {SESSION} HTTP/1.1\r\nHost: x\r\nCookie: theme=dark\r\nCookie: {ours}x\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert status_of(raw) == 200 and b"true" not in raw.split(b"\r\n\r\n", 1)[1]


async def test_a_compressed_request_body_reaches_the_upstream_as_sent(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    # aiohttp inflates request bodies by default; forwarded under the client's Content-Encoding and
    # compressed Content-Length, the upstream got them cut short (or waited for bytes that never came).
    await client.login("alice", "alice-pass")
    body = json.dumps({"records": ["x" * 40] * 500}).encode()
    packed = gzip.compress(body)
    resp = await client.request("POST", "/api/echo", data=packed,
                                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert resp.status == 200
    assert (await resp.json())["response"]["bodyLength"] == len(body)   # the fake inflates what it got
    seen = technitium.requests_to("/api/echo")[-1]
    assert seen.headers["Content-Encoding"] == "gzip" and seen.body == body
    # A compressed form could hide a `token` field from authproxy's cleaning: refused.
    form = await client.request("POST", "/api/zones/list", data=gzip.compress(b"token=forged&x=1"),
                                headers={"Content-Type": "application/x-www-form-urlencoded",
                                         "Content-Encoding": "gzip"})
    assert form.status == 415


async def test_aiohttps_own_400_quotes_nothing_of_the_request(gw: Gateway, client: GatewayClient) -> None:
    """aiohttp's parser refuses a header over MAX_HEADER_SIZE and used to quote 100 bytes of it in the
    400: a page script that grows the Cookie header (its own cookies first, with a longer path) could
    read the HttpOnly session ticket with a same-origin fetch. Likewise a request line too long, with a
    secret in its query. The answer now says the status and nothing else."""
    await client.login("alice", "alice-pass")
    ticket = client.cookie
    limit = gw.config.server.max_header_size
    for pad in (limit - 40, limit - 60, limit - 100, limit):   # the ticket at several places in the window
        cookie = f"Cookie: junk={'j' * pad}; {client.cookie_name}={ticket}\r\n".encode()
        raw = await raw_request(
            gw,
            b"GET /_authproxy/api/auth/session HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + cookie
            + b"Connection: close\r\n\r\n",
            whole=True,
        )
        assert status_of(raw) == 400, raw[:200]
        assert ticket[:12].encode() not in raw and b"junk" not in raw, raw
        assert raw.rstrip().endswith(b"400 Bad Request"), raw
    secret = "s3cr3t-query-value"
    line = f"GET /api/zones/list?token={secret}&pad={'p' * limit} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    raw = await raw_request(gw, line.encode(), whole=True)
    assert status_of(raw) == 400 and secret.encode() not in raw and b"pad=" not in raw, raw[:300]
