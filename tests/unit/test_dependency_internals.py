"""The libraries' internals authproxy builds on still have the shape and behaviour it assumes.

Why: authproxy reaches below aiohttp's public API on its hot paths (a lean upstream client on aiohttp's
`ResponseHandler`, the WebSocket bridge taking the socket over with `RequestHandler.set_parser`, trusted
forwarded headers written into `Request._cache`), relies on how aiohttp-remotes applies what it finds,
and reads Redis URLs with redis-py's own `parse_url`. No deprecation warns before such a thing changes,
so when the lock (requirements/test.lock) moves to a release that changed one, these fail first, each
naming the internal and the module that uses it; pyproject.toml caps those libraries below the next
release that may change them. Fix the user, then lift the cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib.metadata import version
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request


@contextlib.contextmanager
def internal(package: str, name: str, used_by: str) -> Iterator[None]:
    """Turn any failure inside into one that names the internal, the release and the user."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every kind of breakage is reported the same way
        pytest.fail(f"{package} {version(package)}: internal `{name}` changed shape ({type(exc).__name__}: "
                    f"{exc}); {used_by} relies on it. Adapt that code before moving the lock past this "
                    f"release, then lift the upper bound in pyproject.toml.", pytrace=True)


@contextlib.asynccontextmanager
async def raw_server(answer: Callable[[bytes], bytes]) -> AsyncIterator[int]:
    """A loopback TCP server that answers each read with `answer(data)`, closing after a
    `Connection: close` answer."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            reply = answer(data)
            writer.write(reply)
            await writer.drain()
            if b"Connection: close" in reply:
                break
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


async def _exchange(proto: Any, request: bytes, *, head: bool = False) -> tuple[Any, Any]:
    """One request on a `ResponseHandler`, as `proxy.upstream.UpstreamPool.request` sends it."""
    proto.set_response_params(skip_payload=head, read_until_eof=True, auto_decompress=False,
                              read_timeout=5.0, read_bufsize=1 << 16)
    proto.transport.write(request)
    proto.start_timeout()
    while True:
        message, payload = await proto.read()
        if not 100 <= message.code <= 199:
            return message, payload


async def test_aiohttp_response_handler_as_the_upstream_pool_uses_it() -> None:
    used_by = "authproxy/proxy/upstream.py (UpstreamPool, the proxy's hot path)"
    with internal("aiohttp", "aiohttp.client_proto.ResponseHandler", used_by):
        from aiohttp.client_proto import ResponseHandler
        params = inspect.signature(ResponseHandler.set_response_params).parameters
        for name in ("skip_payload", "read_until_eof", "auto_decompress", "read_timeout", "read_bufsize"):
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name

    def answer(data: bytes) -> bytes:
        if data.startswith(b"GET /bad"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"
        if data.startswith(b"GET /eof"):
            return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
        if data.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        return b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" \
               b"HTTP/1.1 200 Fine\r\nContent-Length: 5\r\nX-A: b\r\nX-A: c\r\n\r\nhello"

    loop = asyncio.get_running_loop()
    async with raw_server(answer) as port:
        with internal("aiohttp", "ResponseHandler(loop): read() -> (RawResponseMessage, StreamReader), "
                                 "is_connected, should_close, transport, start_timeout, close", used_by):
            _, proto = await loop.create_connection(lambda: ResponseHandler(loop), "127.0.0.1", port)
            for _ in range(2):  # kept alive: the second request goes on the same connection
                message, payload = await _exchange(proto, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (message.code, message.reason) == (200, "Fine")
                assert message.headers.getall("X-A") == ["b", "c"]
                assert isinstance(payload, aiohttp.StreamReader)
                assert await payload.read() == b"hello"
                assert proto.is_connected() and not proto.should_close
            message, payload = await _exchange(proto, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", head=True)
            assert message.code == 200 and await payload.read() == b""
            message, payload = await _exchange(proto, b"GET /eof HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await payload.read() == b"until the end" and proto.should_close
            proto.close()
            assert not proto.is_connected()

        with internal("aiohttp", "aiohttp.http_exceptions.HttpProcessingError (code, message, headers) "
                                 "raised by ResponseHandler.read() for an unparsable answer", used_by):
            from aiohttp.http_exceptions import HttpProcessingError
            _, proto = await loop.create_connection(lambda: ResponseHandler(loop), "127.0.0.1", port)
            with pytest.raises(HttpProcessingError) as caught:
                await _exchange(proto, b"GET /bad HTTP/1.1\r\nHost: x\r\n\r\n")
            assert isinstance(caught.value.code, int) and isinstance(caught.value.message, str)
            assert hasattr(caught.value, "headers")
            proto.close()


def test_aiohttp_request_cache_holds_what_clone_overrides() -> None:
    used_by = "authproxy/web/middleware.py (amend: trusted X-Forwarded-* without request.clone())"
    with internal("aiohttp", "web.Request._cache (the reify cache clone() seeds with scheme/host/remote)",
                  used_by):
        request = make_mocked_request("GET", "/p?q=1", headers={"Host": "internal:8080"})
        assert str(request.url) == "http://internal:8080/p?q=1"  # computed and cached
        cache = request._cache
        assert isinstance(cache, dict) and "url" in cache
        cache.update(scheme="https", host="public.example", remote="203.0.113.9")
        cache.pop("url")
        assert (request.scheme, request.host, request.remote, request.secure) == \
               ("https", "public.example", "203.0.113.9", True)
        assert str(request.url) == "https://public.example/p?q=1"


def test_aiohttp_handle_error_is_where_its_own_error_answers_are_made() -> None:
    used_by = "authproxy/app.py (quiet_protocol_errors: aiohttp's 400 quotes nothing of the request)"
    from aiohttp import web_protocol

    with internal(
        "aiohttp", "web_protocol.RequestHandler.handle_error(request, status, exc, message)", used_by
    ):
        params = list(inspect.signature(web_protocol.RequestHandler.handle_error).parameters)
        assert params == ["self", "request", "status", "exc", "message"], params
        source = inspect.getsource(web_protocol.RequestHandler)
        assert "self.handle_error(" in source or "_make_error_handler" in source


async def test_aiohttp_set_parser_hands_over_the_upgraded_socket() -> None:
    used_by = "authproxy/proxy/websocket.py and proxy/relay.py (the WebSocket bridge)"
    received = asyncio.Event()

    class Early:
        """Same shape as proxy.websocket._Early: what aiohttp read past the request, then the rest."""

        def __init__(self) -> None:
            self.data = b""

        def feed_data(self, data: bytes) -> tuple[bool, bytes]:
            self.data += data
            if self.data.endswith(b"LATER"):
                received.set()
            return False, b""

        def feed_eof(self) -> None:
            pass

    early = Early()
    seen: dict[str, object] = {}

    async def upgrade(request: web.Request) -> web.StreamResponse:
        switched = web.StreamResponse(status=101, headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        await switched.prepare(request)
        seen["protocol_is_transports"] = request.transport is not None and \
            request.transport.get_protocol() is request.protocol
        request.protocol.set_parser(early)  # as proxy/websocket.py does
        await asyncio.wait_for(received.wait(), 5)
        return switched

    app = web.Application()
    app.router.add_get("/ws", upgrade)
    with internal("aiohttp", "RequestHandler.set_parser(parser): parser.feed_data(bytes) -> (eof, tail) gets "
                             "the bytes read past an Upgrade request, then every later read", used_by):
        async with TestServer(app, host="127.0.0.1") as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                         b"EARLY")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101"), head
            writer.write(b"LATER")
            await asyncio.wait_for(received.wait(), 5)
            writer.close()
        assert early.data == b"EARLYLATER"
        assert seen["protocol_is_transports"] is True  # relay.attach keeps it as the leg's `original`


async def test_aiohttp_remotes_applies_what_it_found_through_clone_only() -> None:
    used_by = (
        "authproxy/web/middleware.py (TrustedForwarded hands it a request whose clone() amends in place)"
    )
    calls: list[dict[str, object]] = []
    request = make_mocked_request("GET", "/", headers={
        "X-Forwarded-For": "203.0.113.9, 127.0.0.1", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "public.example"})

    class Recorder:
        headers = request.headers

        def clone(self, **overrides: object) -> web.Request:
            calls.append(overrides)
            return request

    async def handler(seen: web.Request) -> web.StreamResponse:
        assert seen is request
        return web.Response(text="ok")

    with internal("aiohttp-remotes", "XForwardedFiltered.middleware(request, handler) calling "
                                     "request.clone(scheme=, host=, remote=) once", used_by):
        from aiohttp_remotes import XForwardedFiltered

        middleware: Callable[..., Awaitable[web.StreamResponse]] = XForwardedFiltered(
            {"127.0.0.1"}
        ).middleware
        response = await middleware(Recorder(), handler)
        assert response.status == 200
        assert calls == [{"remote": "203.0.113.9", "scheme": "https", "host": "public.example"}]


def test_redis_parse_url_and_ssl_connection_as_the_resp_client_reads_them() -> None:
    used_by = "authproxy/sessions/resp.py (Endpoint.from_url: the hot-read client reaches redis-py's server)"
    with internal("redis", "redis.asyncio.connection.parse_url / SSLConnection(**ssl_*).ssl_context.get()",
                  used_by):
        from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
        kw = dict(parse_url("redis://user:pw@example.org:6380/4"))
        assert (kw["host"], kw["port"], kw["db"], kw["username"], kw["password"]) == \
               ("example.org", 6380, 4, "user", "pw")
        assert kw.get("connection_class") is not SSLConnection
        kw = dict(parse_url("unix://:pw@/run/redis.sock?db=2"))
        assert (kw["path"], kw["db"], kw["password"]) == ("/run/redis.sock", 2, "pw")
        assert kw["connection_class"] is UnixDomainSocketConnection
        kw = dict(parse_url("rediss://h:1/0?ssl_cert_reqs=none"))
        assert kw["connection_class"] is SSLConnection
        ssl_kw = {k: v for k, v in kw.items() if k.startswith("ssl_")}
        assert ssl_kw == {"ssl_cert_reqs": "none"}
        context = SSLConnection(**ssl_kw).ssl_context.get()
        assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_NONE
