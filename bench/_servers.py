"""Baseline servers the bench scripts start as separate processes (`python -m bench._servers KIND --port N`).

    bare    aiohttp, one handler answering 200 "ok"; --access-log default|off (aiohttp's own AccessLogger
            with its default format, written through logging to stderr, i.e. the process log file)
    redis   aiohttp, one handler doing one redis-py asyncio GET (connection pool, hiredis parser) of a
            sealed ~300-byte blob + one AES-GCM decryption (cryptography), then 200
    echo    aiohttp WebSocket echo on /ws (text and binary frames come back unchanged), 200 "ok" elsewhere
    proxy   aiohttp minimal streaming pass-through proxy to --upstream (shared pooled ClientSession, no
            cookie jar, no decompression, hop-by-hop headers dropped): the floor for an aiohttp proxy

The loop is chosen like `authproxy run` does: uvloop when installed, else asyncio (--loop to force).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aiohttp import WSMsgType, web


def _install_loop(choice: str) -> str:
    if choice in ("auto", "uvloop"):
        try:
            import uvloop

            uvloop.install()
            return "uvloop"
        except ImportError:
            if choice == "uvloop":
                raise
    return "asyncio"


def bare_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    return app


def redis_app(url: str) -> web.Application:
    import redis.asyncio as aioredis
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = os.urandom(32)
    nonce = os.urandom(12)
    aad = b"s:bench"
    blob = nonce + AESGCM(key).encrypt(nonce, os.urandom(300), aad)
    name = "bench:blob"

    async def start(app: web.Application) -> None:
        client = aioredis.Redis.from_url(url)
        await client.set(name, blob)
        app["redis"] = client

    async def stop(app: web.Application) -> None:
        await app["redis"].aclose()

    async def check(request: web.Request) -> web.Response:
        data = await request.app["redis"].get(name)
        plain = AESGCM(key).decrypt(data[:12], data[12:], aad)
        return web.Response(text="ok" if plain else "")

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", check)
    return app


def proxy_app(upstream: str) -> web.Application:
    """A minimal streaming pass-through proxy: the floor for an aiohttp reverse proxy (no auth at all)."""
    import aiohttp
    from multidict import CIMultiDict

    hop = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
           "proxy-authenticate", "host", "content-length"}

    async def start(app: web.Application) -> None:
        app["http"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, limit_per_host=128, keepalive_timeout=30),
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)

    async def stop(app: web.Application) -> None:
        await app["http"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in hop)
        async with request.app["http"].request(request.method, upstream + request.rel_url.raw_path_qs,
                                               headers=headers, allow_redirects=False,
                                               data=request.content if request.body_exists else None) as up:
            out = CIMultiDict((k, v) for k, v in up.headers.items() if k.lower() not in hop)
            response = web.StreamResponse(status=up.status, headers=out)
            if up.content_length is not None:
                response.content_length = up.content_length
            await response.prepare(request)
            async for chunk in up.content.iter_chunked(64 * 1024):
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def echo_app() -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path != "/ws" or request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(text="ok")
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def truenas_app() -> web.Application:
    """The TrueNAS middleware fake (tests/fakes/truenas.py) with one account; `/api/relay` is the same
    JSON-RPC endpoint under a path authproxy relays byte for byte (its generic WebSocket bridge)."""
    from tests.fakes.truenas import FakeTrueNAS

    fake = FakeTrueNAS(rate_calls=1_000_000)   # the bench measures relaying, not TrueNAS's sign-in limit
    fake.add_user("alice", "alice-pw")
    fake.app.router.add_get("/api/relay", fake._rpc)
    return fake.app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["bare", "redis", "echo", "proxy", "truenas"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    p.add_argument("--access-log", choices=["off", "default"], default="off")
    p.add_argument("--redis-url", default="")
    p.add_argument("--upstream", default="", help="proxy: the upstream base URL (http://host:port)")
    args = p.parse_args()
    loop = _install_loop(args.loop)
    access_log = None
    if args.access_log == "default":
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        access_log = logging.getLogger("aiohttp.access")
    if args.kind == "redis":
        app = redis_app(args.redis_url)
    elif args.kind == "proxy":
        app = proxy_app(args.upstream.rstrip("/"))
    else:
        app = {"bare": bare_app, "echo": echo_app, "truenas": truenas_app}[args.kind]()
    print(f"{args.kind} on 127.0.0.1:{args.port} ({loop}, access log {args.access_log})", file=sys.stderr,
          flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=access_log, print=None)


if __name__ == "__main__":
    main()
