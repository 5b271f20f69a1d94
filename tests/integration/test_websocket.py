"""The WebSocket bridge, end to end over real sockets: test client -> real gateway -> upstream.

The upstream is a FakeTechnitium (so sign-in and its tokens are real) with a WebSocket endpoint at
`/ws` added in front of its routes: it accepts only a live Technitium token (Bearer or `token=`),
records each handshake, echoes text and binary frames, answers pings, pings on request ("ping-me"),
closes with a chosen code ("close:<code>") and records the close code it receives.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import WSMsgType

from authproxy import keys
from authproxy.proxy.websocket import BridgeRegistry
from tests.fakes.ws_upstream import SocketUpstream, running_socket_upstream
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, MakeTlsGateway, gateway_env

ALICE = ("alice", "alice-pass")
WAIT = 2.0


# On both loops: `authproxy run` serves on uvloop, and the relay takes sockets over at transport level.
pytestmark = pytest.mark.both_loops


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[SocketUpstream]:
    async with running_socket_upstream(ALICE) as up:
        yield up


async def until(predicate: Callable[[], object], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def ws_headers(client: GatewayClient, **extra: str) -> dict[str, str]:
    headers = {"X-Forwarded-Proto": "https"}
    if client.cookie:
        headers["Cookie"] = f"{client.cookie_name}={client.cookie}"
    headers.update(extra)
    return headers


async def open_ws(gw: Gateway, client: GatewayClient, path: str = "/ws", *,
                  headers: dict[str, str] | None = None, protocols: tuple[str, ...] = (),
                  origin: str | None = None, compress: int = 0) -> aiohttp.ClientWebSocketResponse:
    return await client.http.ws_connect(gw.url + path, headers=headers or ws_headers(client), autoping=False,
                                        protocols=protocols, origin=origin, compress=compress)


async def signed_in(make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
                    upstream: SocketUpstream, **env: str) -> tuple[Gateway, GatewayClient]:
    gw = await make_gateway(gateway_env(upstream.url, **env))
    client = client_for(gw)
    resp = await client.login(*ALICE)
    assert resp.status == 200, await resp.text()
    assert client.cookie
    return gw, client


async def assert_no_bridges(gw: Gateway) -> None:
    """The registry is empty and none of the bridge's tasks survive."""
    registry: BridgeRegistry = gw.app[keys.WEBSOCKETS]
    await until(lambda: len(registry) == 0)
    await asyncio.sleep(0)
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("authproxy-ws-") and not t.done()]
    assert leftovers == []


async def expect_close(ws: aiohttp.ClientWebSocketResponse, code: int, timeout: float = WAIT) -> str:
    """Skip data frames until the CLOSE arrives; returns its reason."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        if msg.type is WSMsgType.CLOSE:
            assert msg.data == code, (msg.data, msg.extra)
            return str(msg.extra or "")
        assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY), msg


# ---- relay --------------------------------------------------------------------------------------------


async def test_frames_round_trip_and_the_handshake_carries_only_the_real_credential(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream, caplog: pytest.LogCaptureFixture) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)
    [token] = upstream.live_tokens()
    forged = ws_headers(client, Authorization="Bearer forged-token", **{"X-Forwarded-User": "mallory"})
    forged["Cookie"] += "; ui_theme=dark"
    ws = await open_ws(gw, client, "/ws?x=1", headers=forged, protocols=("v1.echo", "v2.echo"),
                       origin=f"https://127.0.0.1:{gw.port}", compress=15)
    assert ws.protocol == "v2.echo"

    await ws.send_str("héllo")
    assert (await ws.receive(timeout=WAIT)).data == "héllo"
    blob = bytes(range(256)) * 4096  # 1 MiB
    await ws.send_bytes(blob)
    assert (await ws.receive(timeout=WAIT)).data == blob

    await ws.ping(b"from-client")            # client ping -> upstream -> its pong comes back
    msg = await ws.receive(timeout=WAIT)
    assert (msg.type, msg.data) == (WSMsgType.PONG, b"from-client")
    await ws.send_str("ping-me")             # upstream ping -> client; the client's pong reaches it
    msg = await ws.receive(timeout=WAIT)
    assert (msg.type, msg.data) == (WSMsgType.PING, b"from-upstream")
    await ws.pong(msg.data)
    assert (await ws.receive(timeout=WAIT)).data == "got-pong:from-upstream"

    [hs] = upstream.handshakes
    assert hs.headers.getall("Authorization") == [f"Bearer {token}"]
    assert hs.headers["Cookie"] == "ui_theme=dark"                      # the ticket cookie never leaves
    assert client.cookie and client.cookie not in str(list(hs.headers.items()))
    assert hs.headers["Origin"] == upstream.origin
    assert "X-Forwarded-User" not in hs.headers
    assert hs.headers["X-Forwarded-Proto"] == "https"
    assert hs.headers["X-Forwarded-Host"] == f"127.0.0.1:{gw.port}"
    assert hs.headers["X-Real-IP"] == hs.headers["X-Forwarded-For"] == "127.0.0.1"
    assert [p.strip() for p in hs.headers["Sec-WebSocket-Protocol"].split(",")] == ["v1.echo", "v2.echo"]
    assert hs.raw_query == "x=1"
    assert "Sec-WebSocket-Extensions" not in hs.headers   # the client's deflate offer is for the gateway only

    await ws.close()
    await assert_no_bridges(gw)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiohttp")] == []


async def test_a_handshake_with_expect_100_continue_still_opens(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    """Expect went on to the upstream, which answered `100 Continue` first: read as its refusal, a 502
    (found by tests/integration/test_fuzz.py). A handshake has no body, so it carries no Expect on."""
    gw, client = await signed_in(make_gateway, client_for, upstream)
    ws = await open_ws(gw, client, headers=ws_headers(client, Expect="100-continue"))
    await ws.send_str("still here")
    assert (await ws.receive(timeout=WAIT)).data == "still here"
    assert "Expect" not in upstream.handshakes[-1].headers
    await ws.close()
    await assert_no_bridges(gw)


async def test_close_codes_cross_the_bridge_both_ways(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)

    ws = await open_ws(gw, client)
    await ws.close(code=4000, message=b"client done")
    assert ws.close_code == 4000                     # the upstream's answer came back through
    await until(lambda: upstream.closes)
    assert upstream.closes == [(4000, "client done")]
    await assert_no_bridges(gw)

    ws = await open_ws(gw, client)
    await ws.send_str("close:4002")
    assert await expect_close(ws, 4002) == "upstream says bye"
    await assert_no_bridges(gw)


async def test_an_upstream_that_vanishes_gets_the_client_a_1011(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)
    ws = await open_ws(gw, client)
    await ws.send_str("vanish")
    assert await expect_close(ws, 1011) == "upstream connection lost"
    await assert_no_bridges(gw)


async def test_service_credential_in_auth_mode_none_goes_in_query_and_header(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient], upstream: SocketUpstream,
        http_client: aiohttp.ClientSession) -> None:
    async with http_client.post(
        upstream.url + "/api/user/login", data={"user": ALICE[0], "pass": ALICE[1]}
    ) as r:
        service_token = (await r.json())["token"]
    gw = await make_gateway(gateway_env(upstream.url, AUTH_MODE="none", UPSTREAM_SERVICE_TOKEN=service_token))
    client = client_for(gw)
    ws = await open_ws(gw, client, "/ws?token=forged&a=b")
    await ws.send_str("hi")
    assert (await ws.receive(timeout=WAIT)).data == "hi"
    [hs] = upstream.handshakes
    # No login reported the version: both forms go (v15 reads the header, v14 the parameter).
    assert hs.raw_query == f"a=b&token={service_token}"
    assert hs.headers["Authorization"] == f"Bearer {service_token}"
    await ws.close(code=1000)
    await assert_no_bridges(gw)


async def test_a_client_that_vanishes_without_a_close_frame_releases_everything(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)
    async with aiohttp.ClientSession() as own:
        ws = await own.ws_connect(gw.url + "/ws", headers=ws_headers(client))
        await ws.send_str("x")
        assert (await ws.receive(timeout=WAIT)).data == "x"
    # `own` closed its connections under the socket: no CLOSE frame was ever sent.
    await until(lambda: upstream.closes)
    assert upstream.closes == [(1001, "client went away")]
    await assert_no_bridges(gw)


# ---- refusals before the upgrade ----------------------------------------------------------------------


async def test_unauthenticated_or_cross_site_upgrades_never_reach_the_upstream(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    gw = await make_gateway(gateway_env(upstream.url))
    anonymous = client_for(gw)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await open_ws(gw, anonymous)
    assert err.value.status == 401
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "X-Forwarded-Proto": "https"}
    async with anonymous.http.get(gw.url + "/ws", headers=upgrade) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthenticated"

    client = client_for(gw)
    assert (await client.login(*ALICE)).status == 200
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await open_ws(gw, client, origin="https://evil.example")
    assert err.value.status == 403
    assert upstream.handshakes == []


async def test_a_handshake_from_another_scheme_port_or_host_is_refused(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    """A socket's Origin is compared like every other origin: scheme, host and port, the default port
    dropped. The gateway is https://127.0.0.1:<port> (its client says X-Forwarded-Proto: https)."""
    gw, client = await signed_in(make_gateway, client_for, upstream)
    hostport = gw.url.split("://", 1)[1]
    for origin in (f"http://{hostport}", f"https://127.0.0.1:{gw.port + 1}", f"https://localhost:{gw.port}",
                   f"wss://{hostport}", "null"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await open_ws(gw, client, origin=origin)
        assert err.value.status == 403, origin
    assert upstream.handshakes == []
    ws = await open_ws(gw, client, origin=client.origin)
    await ws.send_str("own origin")
    assert (await ws.receive(timeout=WAIT)).data == "own origin"
    await ws.close()

    # A proxy may name the host with its port; browsers never put the default port in Origin.
    for host, origin, allowed in (("dns.example.com:443", "https://dns.example.com", True),
                                  ("dns.example.com", "https://dns.example.com:443", True),
                                  ("dns.example.com:443", "http://dns.example.com:443", False),
                                  ("dns.example.com", "http://dns.example.com", False),
                                  ("dns.example.com:8443", "https://dns.example.com", False)):
        headers = {**ws_headers(client), "X-Forwarded-Host": host}
        if allowed:
            await (await open_ws(gw, client, headers=headers, origin=origin)).close()
            continue
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await open_ws(gw, client, headers=headers, origin=origin)
        assert err.value.status == 403, (host, origin)
    assert len(upstream.handshakes) == 3
    await assert_no_bridges(gw)


async def test_upstream_refusing_or_down_answers_502_before_upgrading(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream, http_client: aiohttp.ClientSession) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)
    upgrade = ws_headers(client, Upgrade="websocket", Connection="Upgrade", **{
        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})

    async with http_client.get(gw.url + "/no-socket-here", headers=upgrade) as resp:   # upstream 404
        assert resp.status == 502
        assert (await resp.json())["error"] == "upstream_refused"
    await upstream.fake.close()
    async with http_client.get(gw.url + "/ws", headers=upgrade) as resp:               # connection refused
        assert resp.status == 502
        assert (await resp.json())["error"] == "upstream_unavailable"
    await assert_no_bridges(gw)


async def test_upstream_401_the_adapter_calls_expiry_signs_the_person_out(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)
    adapter = gw.app[keys.ROUTER].sites[0].adapter
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:      # Technitium's 401 is no verdict: 502
        upstream.fake.sessions.clear()
        await open_ws(gw, client)
    assert err.value.status == 502

    adapter.is_expired = lambda status, headers, body: status == 401  # type: ignore[method-assign]
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await open_ws(gw, client)
    assert err.value.status == 401
    assert await gw.app[keys.SESSIONS].load(client.cookie) is None
    await assert_no_bridges(gw)


# ---- the session ends, the socket closes ---------------------------------------------------------------


async def test_logout_closes_the_open_socket_within_two_seconds(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)
    ws = await open_ws(gw, client)
    await ws.send_str("still here")
    assert (await ws.receive(timeout=WAIT)).data == "still here"

    resp = await client.request("POST", "/_authproxy/api/auth/logout")
    assert resp.status == 200
    assert await expect_close(ws, 4001) == "session ended"
    await until(lambda: upstream.closes)
    assert upstream.closes[0][0] == 1001
    await assert_no_bridges(gw)


async def test_a_save_elsewhere_does_not_close_a_live_session(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)
    ws = await open_ws(gw, client)
    manager = gw.app[keys.SESSIONS]
    loaded = await manager.load(client.cookie)
    assert loaded is not None
    await manager.save(loaded)          # publishes the store key: the bridge re-checks and stays
    await asyncio.sleep(0.3)
    await ws.send_str("alive")
    assert (await ws.receive(timeout=WAIT)).data == "alive"
    assert len(gw.app[keys.WEBSOCKETS]) == 1
    await ws.close()
    await assert_no_bridges(gw)


async def test_sign_out_on_another_replica_closes_the_socket(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream, redis_url: str) -> None:
    gw1, client1 = await signed_in(make_gateway, client_for, upstream, REDIS_URL=redis_url)
    gw2 = await make_gateway(gateway_env(upstream.url, REDIS_URL=redis_url))
    ws = await open_ws(gw1, client1)
    await ws.send_str("on replica 1")
    assert (await ws.receive(timeout=WAIT)).data == "on replica 1"

    client2 = client_for(gw2)
    client2.cookie = client1.cookie
    resp = await client2.request("POST", "/_authproxy/api/auth/logout")
    assert resp.status == 200 and (await resp.json())["loggedOut"] is True
    started = time.monotonic()
    assert await expect_close(ws, 4001) == "session ended"
    assert time.monotonic() - started < WAIT          # pub/sub, not the 5 s re-check
    await assert_no_bridges(gw1)


async def test_idle_expiry_closes_the_socket(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream, SESSION_IDLE_TIMEOUT="1")
    ws = await open_ws(gw, client)
    started = time.monotonic()
    assert await expect_close(ws, 4001, timeout=4.0) == "session ended"
    assert time.monotonic() - started < 3.0           # at the expiry, not at the next 5 s re-check
    await assert_no_bridges(gw)


async def test_a_socket_in_use_keeps_its_session_alive(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    """A UI that talks only over its WebSocket is in use: its frames slide the idle timeout."""
    gw, client = await signed_in(make_gateway, client_for, upstream, SESSION_IDLE_TIMEOUT="1")
    ws = await open_ws(gw, client)
    for i in range(10):                                # 3 s of traffic, three idle timeouts long
        await ws.send_str(f"still here {i}")
        assert (await ws.receive(timeout=WAIT)).data == f"still here {i}"
        await asyncio.sleep(0.3)
    resp = await client.request("GET", "/_authproxy/api/auth/session")
    assert (await resp.json())["authenticated"] is True
    # Then silence: the idle timeout ends the session and the socket with it.
    assert await expect_close(ws, 4001, timeout=4.0) == "session ended"
    await assert_no_bridges(gw)


async def test_shutdown_closes_every_bridge(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)
    sockets = [await open_ws(gw, client) for _ in range(3)]
    assert len(gw.app[keys.WEBSOCKETS]) == 3
    started = time.monotonic()
    await asyncio.wait_for(gw.stop(), 5.0)
    assert time.monotonic() - started < WAIT
    for ws in sockets:
        assert await expect_close(ws, 1001) == "server shutting down"
    await assert_no_bridges(gw)


async def test_many_sockets_at_once_lose_nothing(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)
    sockets = [await open_ws(gw, client) for _ in range(64)]

    async def talk(n: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        for i in range(200):
            text = f"{n}:{i}:" + "x" * (i % 7 * 300)
            await ws.send_str(text)
            msg = await ws.receive(timeout=WAIT)
            assert (msg.type, msg.data) == (WSMsgType.TEXT, text)

    await asyncio.wait_for(asyncio.gather(*(talk(n, ws) for n, ws in enumerate(sockets))), 30)
    for ws in sockets:
        await ws.close()
    await assert_no_bridges(gw)


# ---- what only a raw socket can send -------------------------------------------------------------------


async def raw_ws(gw: Gateway, client: GatewayClient, first_frames: bytes = b"") -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made handshake (with `first_frames` in the same write), checked up to the 101."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    key = base64.b64encode(os.urandom(16)).decode()
    head = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in ws_headers(client).items()) + "\r\n")
    writer.write(head.encode() + first_frames)
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    assert b"Sec-WebSocket-Extensions" not in answer
    return reader, writer


def masked(opcode: int, payload: bytes, *, claim: int | None = None) -> bytes:
    length = len(payload) if claim is None else claim
    size = bytes([0x80 | length]) if length < 126 else bytes([0x80 | 127]) + length.to_bytes(8, "big")
    mask = os.urandom(4)
    return bytes([0x80 | opcode]) + size + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked frame from the gateway: (opcode, payload)."""
    b0, b1 = await asyncio.wait_for(reader.readexactly(2), WAIT)
    assert not b1 & 0x80, "frames to a client are never masked"
    length = b1 & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(length)


async def test_frames_sent_along_with_the_handshake_are_relayed(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)
    reader, writer = await raw_ws(gw, client, masked(0x1, b"early") + masked(0x2, b"bird"))
    assert await read_frame(reader) == (0x1, b"early")
    assert await read_frame(reader) == (0x2, b"bird")
    writer.write(masked(0x8, (1000).to_bytes(2, "big")))
    assert await read_frame(reader) == (0x8, (1000).to_bytes(2, "big") + b"echoed")   # upstream's answer
    assert await asyncio.wait_for(reader.read(), WAIT) == b""                         # then the TCP close
    await assert_no_bridges(gw)


@pytest.mark.parametrize(("frame", "code", "reason"), [
    (bytes([0x81, 0x02]) + b"hi", 1002, b"unmasked frame"),        # a client must mask
    (masked(0x2, b"", claim=1 << 40), 1009, b"message too big"),    # announced, never sent
    (masked(0x3, b"?"), 1002, b"unknown opcode"),
])
async def test_a_client_breaking_the_protocol_is_dropped_and_the_upstream_told(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream, frame: bytes, code: int, reason: bytes) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)
    reader, writer = await raw_ws(gw, client, masked(0x1, b"fine"))
    assert await read_frame(reader) == (0x1, b"fine")
    writer.write(frame)
    assert await read_frame(reader) == (0x8, code.to_bytes(2, "big") + reason)
    assert await asyncio.wait_for(reader.read(), WAIT) == b""
    await until(lambda: upstream.closes)
    assert upstream.closes == [(1001, "client went away")]        # never the broken frame
    writer.close()
    await assert_no_bridges(gw)


async def test_a_session_ending_mid_frame_closes_after_that_frame(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)
    ws = await open_ws(gw, client, "/ws-slow")
    await asyncio.sleep(0.2)                     # half of the upstream's frame has gone through
    resp = await client.request("POST", "/_authproxy/api/auth/logout")
    assert resp.status == 200
    await asyncio.sleep(0.3)                     # the CLOSE waits: it cannot go inside a frame
    upstream.release.set()
    msg = await ws.receive(timeout=WAIT)
    assert (msg.type, msg.data) == (WSMsgType.BINARY, b"s" * 4000)
    assert await expect_close(ws, 4001) == "session ended"
    await until(lambda: upstream.closes)
    assert upstream.closes == [(1001, "session ended")]
    await assert_no_bridges(gw)


async def test_a_client_that_reads_slowly_holds_the_upstream_back(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        upstream: SocketUpstream) -> None:
    gw, client = await signed_in(make_gateway, client_for, upstream)
    ws = await open_ws(gw, client, "/ws-flood")
    connection = ws._response.connection       # stop reading: the kernel buffers fill up
    assert connection is not None and connection.transport is not None
    connection.transport.pause_reading()
    await asyncio.sleep(1.0)
    # Without flow control the gateway would have taken all 64 MiB into memory by now; with it the
    # upstream waits once the socket buffers on both legs are full (a few MiB each).
    assert upstream.flooded < 40, upstream.flooded
    connection.transport.resume_reading()
    for _ in range(64):
        msg = await ws.receive(timeout=WAIT * 5)
        assert (msg.type, len(msg.data)) == (WSMsgType.BINARY, 1 << 20)
    assert upstream.flooded == 64
    await ws.close()
    await assert_no_bridges(gw)


async def test_the_bridge_over_authproxys_own_tls(
        make_tls_gateway: MakeTlsGateway, upstream: SocketUpstream) -> None:
    """HTTPS_ENABLED: the browser's leg is a TLS transport, which the relay takes over like a plain one."""
    gw = await make_tls_gateway({"UPSTREAM_URL": upstream.url, "UPSTREAM_TYPE": "technitium",
                                 "ACCESS_LOG": "false"})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     connector=aiohttp.TCPConnector(ssl=False)) as http:
        client = GatewayClient(base=gw.url, http=http, headers={})
        assert (await client.login(*ALICE)).status == 200
        ws = await http.ws_connect(gw.url.replace("https://", "wss://") + "/ws", autoping=False,
                                   headers={"Cookie": f"{client.cookie_name}={client.cookie}"})
        await ws.send_str("over tls")
        assert (await ws.receive(timeout=WAIT)).data == "over tls"
        blob = bytes(range(256)) * 4096
        await ws.send_bytes(blob)
        assert (await ws.receive(timeout=WAIT)).data == blob
        resp = await client.request("POST", "/_authproxy/api/auth/logout")
        assert resp.status == 200
        assert await expect_close(ws, 4001) == "session ended"
    await assert_no_bridges(gw)


async def test_over_tls_a_plain_http_origin_on_the_same_host_and_port_is_refused(
        make_tls_gateway: MakeTlsGateway, upstream: SocketUpstream) -> None:
    """authproxy serving TLS itself: `http://127.0.0.1:<port>` is not the origin of `https://127.0.0.1:<port>`."""
    gw = await make_tls_gateway({"UPSTREAM_URL": upstream.url, "UPSTREAM_TYPE": "technitium",
                                 "ACCESS_LOG": "false"})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     connector=aiohttp.TCPConnector(ssl=False)) as http:
        client = GatewayClient(base=gw.url, http=http, headers={})
        assert (await client.login(*ALICE)).status == 200
        url = gw.url.replace("https://", "wss://") + "/ws"
        cookie = {"Cookie": f"{client.cookie_name}={client.cookie}"}
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(url, headers=cookie, origin=gw.url.replace("https://", "http://"))
        assert err.value.status == 403
        assert upstream.handshakes == []
        ws = await http.ws_connect(url, headers=cookie, origin=gw.url)
        await ws.send_str("over tls")
        assert (await ws.receive(timeout=WAIT)).data == "over tls"
        await ws.close()
    await assert_no_bridges(gw)
