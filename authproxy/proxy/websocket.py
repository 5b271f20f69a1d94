"""WebSocket bridge: the client's socket on one side, the upstream's on the other, frames relayed as-is.

`proxy.http.forward` has already found the site and the credential; `bridge` then

1. refuses what is not a WebSocket handshake (400) or comes from another origin (403: the upstream's
   own Origin check is about to be satisfied by us, so cross-site socket hijacking is stopped here);
2. builds the upstream handshake like an HTTP request (hop-by-hop, identity headers and the authproxy
   cookie stripped, the adapter injects the credential), keeps the offered subprotocols, and sets
   `Origin` to the upstream's own origin;
3. connects upstream *before* upgrading the client, so a refusal is still an HTTP answer
   (502, or "signed out" when the adapter says a 401/403 means the credential died);
4. upgrades the client with the subprotocol the upstream chose and relays in three supervised tasks:

       client ──► pump ──► upstream       text/binary/ping/pong forwarded as they come (no decoding)
       client ◄── pump ◄── upstream       a CLOSE on one side closes the other with the same code
       watch: session still in the store? wakes on invalidation messages, every RECHECK_INTERVAL s,
              and at the idle/absolute expiry; ends the bridge with 4001 "session ended"

   The first task to finish decides the close codes; every task is cancelled and awaited before
   `bridge` returns.

`BridgeRegistry` (proxy/bridges.py, app[keys.WEBSOCKETS]) knows every open bridge by session.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal, TypeAlias
from urllib.parse import urlsplit

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from authproxy import keys
from authproxy.errors import StoreError
from authproxy.log import log
from authproxy.proxy.bridges import CLOSE_TIMEOUT, SESSION_ENDED, Bridge, BridgeRegistry
from authproxy.proxy.http import _credential_died, build_upstream_request
from authproxy.routing import Site
from authproxy.sessions.manager import CHANNEL, LoadedSession
from authproxy.sessions.model import Credential
from authproxy.web.common import client_ip, error_response

MAX_MSG_SIZE = 16 * 1024 * 1024

# Set by aiohttp's client itself (or meaningless upstream); Origin is replaced, protocols passed apart.
_HANDSHAKE_HEADERS = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                      "Sec-WebSocket-Accept", "Sec-WebSocket-Protocol", "Origin", "Content-Length",
                      "Content-Type")
_TEXT, _BINARY, _PING, _PONG, _CLOSE, _ERROR = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING,
                                                WSMsgType.PONG, WSMsgType.CLOSE, WSMsgType.ERROR)

Side = Literal["client", "upstream", "watch"]


# ---- the handshake ---------------------------------------------------------------------------------


def _origin_allowed(request: web.Request) -> bool:
    """No Origin (non-browser client) or the public origin itself; anything else is cross-site."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https"):
        return False
    default = ":443" if parts.scheme == "https" else ":80"
    return parts.netloc.lower().removesuffix(default) == request.host.lower().removesuffix(default)


def upstream_origin(upstream_url: str) -> str:
    parts = urlsplit(upstream_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def build_handshake(request: web.Request, site: Site,
                    credential: Credential | None) -> tuple[str, CIMultiDict[str], list[str]]:
    """(upstream URL, headers, offered subprotocols) for the upstream handshake."""
    ureq = build_upstream_request(request, site)
    protocols = [p.strip() for value in ureq.headers.getall("Sec-WebSocket-Protocol", ())
                 for p in value.split(",") if p.strip()]
    for name in _HANDSHAKE_HEADERS:
        ureq.headers.popall(name, None)
    site.adapter.prepare_request(ureq, credential)
    ip = client_ip(request)
    ureq.headers["Origin"] = upstream_origin(site.config.upstream_url)
    ureq.headers["X-Forwarded-For"] = ip
    ureq.headers["X-Forwarded-Proto"] = "https" if request.secure else "http"
    ureq.headers["X-Forwarded-Host"] = request.host
    ureq.headers["X-Real-IP"] = ip
    url = site.config.upstream_url + ureq.raw_path + (f"?{ureq.raw_query}" if ureq.raw_query else "")
    return url, ureq.headers, protocols


async def bridge(request: web.Request, site: Site, loaded: LoadedSession | None,
                 credential: Credential | None) -> web.StreamResponse:
    """Answer an authenticated `Upgrade: websocket` request by bridging it to the site's upstream."""
    if not web.WebSocketResponse().can_prepare(request).ok:
        return error_response(request, 400, "bad_websocket_handshake", "This is not a valid WebSocket request.")
    if not _origin_allowed(request):
        return error_response(request, 403, "cross_site", "Cross-site WebSocket connections are refused.")
    registry = request.app[keys.WEBSOCKETS]
    url, headers, protocols = build_handshake(request, site, credential)
    try:
        async with asyncio.timeout(site.config.connect_timeout):
            upstream = await registry.client.ws_connect(
                URL(url, encoded=True), protocols=protocols, headers=headers, autoclose=False, autoping=False,
                heartbeat=None, max_msg_size=MAX_MSG_SIZE, compress=0, decode_text=False,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT))
    except aiohttp.WSServerHandshakeError as exc:
        return await _refused(request, site, loaded, exc)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("upstream websocket unreachable",
                    extra={"fields": {"site": site.name, "error": type(exc).__name__}})
        return error_response(request, 502, "upstream_unavailable",
                              f"{site.name} is not answering right now; try again in a moment.",
                              title="Upstream unavailable")

    entry = Bridge(store_key=loaded.store_key if loaded else None, site=site.name,
                   expires_at=loaded.session.expires_at if loaded else None, loaded=loaded,
                   slide_every=request.app[keys.SESSIONS].touch_interval, slid_at=time.monotonic())
    # compress=False: no permessage-deflate towards the browser either (the upstream leg has none), so
    # frames are not inflated and deflated again on the way through (measured with a deflate-offering
    # client and 64-byte messages: 31 -> 25 us of bridge CPU per message, +17% messages/s).
    client: _ClientWS = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (), autoclose=False, autoping=False,
        max_msg_size=MAX_MSG_SIZE, timeout=CLOSE_TIMEOUT, decode_text=False, compress=False)
    registry.add(entry)
    try:
        try:
            await client.prepare(request)
        except BaseException:
            await upstream.close(code=1001, message=b"client went away")
            raise
        await _relay(request, client, upstream, entry)
    finally:
        registry.remove(entry)
        entry.done.set()
    return client


async def _refused(request: web.Request, site: Site, loaded: LoadedSession | None,
                   exc: aiohttp.WSServerHandshakeError) -> web.StreamResponse:
    status = exc.status
    headers = CIMultiDictProxy(CIMultiDict(exc.headers or {}))
    if status in (401, 403) and site.adapter.is_expired(status, headers, None):
        return await _credential_died(request, site, loaded)
    log.warning("upstream refused the websocket", extra={"fields": {"site": site.name, "status": status}})
    return error_response(request, 502, "upstream_refused",
                          f"{site.name} refused the WebSocket connection (HTTP {status}).",
                          title="Upstream refused")


# ---- the relay -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _End:
    side: Side
    kind: Literal["close", "lost", "error", "stop"]
    code: int | None = None
    reason: str = ""


_ClientWS: TypeAlias = "web.WebSocketResponse[Literal[False]]"
_UpstreamWS: TypeAlias = "aiohttp.ClientWebSocketResponse[Literal[False]]"


async def _pump(src: _ClientWS | _UpstreamWS, dst: _ClientWS | _UpstreamWS, side: Side,
                activity: Bridge | None = None) -> _End:
    """Forward frames from `src` to `dst` until `src` closes; says why it stopped.

    With `activity` (the client side of a session's bridge), frames count as the person being there:
    at most every `slide_every` seconds the watch is asked to slide the session's idle timeout, so a
    UI that talks only over its socket is not signed out while in use.
    """
    send, ping, pong = dst.send_frame, dst.ping, dst.pong
    monotonic = time.monotonic
    try:
        while True:
            msg = await src.receive()
            if activity is not None and monotonic() - activity.slid_at >= activity.slide_every:
                activity.slid_at = monotonic()
                activity.slide = True
                activity.wake.set()
            kind = msg.type
            if kind is _TEXT or kind is _BINARY:
                await send(msg.data, kind)
            elif kind is _PING:
                await ping(msg.data)
            elif kind is _PONG:
                await pong(msg.data)
            elif kind is _CLOSE:
                return _End(side, "close", msg.data, msg.extra or "")
            elif kind is _ERROR:
                return _End(side, "error", reason=type(msg.data).__name__)
            else:  # CLOSING / CLOSED: the connection went away (or we are closing it)
                return _End(side, "lost")
    except (ConnectionError, aiohttp.ClientError, RuntimeError):
        # Writing failed: the *other* side is gone.
        return _End("upstream" if side == "client" else "client", "lost")
    except Exception as exc:  # noqa: BLE001 - a relay failure ends this bridge, never the server
        log.warning("websocket relay failed", extra={"fields": {"from": side, "error": type(exc).__name__}})
        return _End(side, "error", reason=type(exc).__name__)


async def _watch(request: web.Request, entry: Bridge, registry: BridgeRegistry) -> _End:
    """Ends when the session is gone (any replica), expired (idle or absolute), or the app stops."""
    store = request.app[keys.STORE]
    clock = request.app[keys.SESSIONS].clock
    delay: float | None = None if entry.store_key is None else 0.0
    while True:
        if entry.stop is None and delay != 0.0:
            try:
                async with asyncio.timeout(delay):
                    await entry.wake.wait()
            except TimeoutError:
                pass
        entry.wake.clear()
        if entry.stop is not None:
            return _End("watch", "stop", *entry.stop)
        if entry.store_key is None:
            delay = None
            continue
        delay = registry.recheck_interval
        try:
            if entry.slide and entry.loaded is not None:
                entry.slide = False
                await request.app[keys.SESSIONS].touch(entry.loaded)
            left = await store.ttl(entry.store_key)
        except StoreError:
            log.warning("cannot re-check a websocket's session; keeping it open for now",
                        extra={"fields": {"site": entry.site}})
            continue
        now = clock()
        if left is None or (entry.expires_at is not None and now >= entry.expires_at):
            return _End("watch", "stop", *SESSION_ENDED)
        delay = min(delay, left + 0.05)
        if entry.expires_at is not None:
            delay = min(delay, entry.expires_at - now + 0.05)
        delay = max(delay, 0.05)


def _sendable(code: int | None, fallback: int) -> int:
    """A code that may appear in a CLOSE frame (1005/1006/1015 and 0 are only ever reported)."""
    if code is not None and (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        return code
    return fallback


def _reason(text: str) -> bytes:
    return text.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")


def _plan(end: _End) -> tuple[int, str, int, str]:
    """(client code, reason, upstream code, reason) for how the bridge ended."""
    if end.side == "watch":
        return end.code or 1001, end.reason, 1001, end.reason  # session ended / shutting down
    if end.kind == "close":
        code = _sendable(end.code, 1000)
        return code, end.reason, code, end.reason
    if end.side == "client":
        return 1001, "", 1001, "client went away"
    if end.kind == "error":
        return 1011, "upstream error", 1001, ""
    return 1011, "upstream connection lost", 1001, ""


async def _relay(request: web.Request, client: _ClientWS, upstream: _UpstreamWS, entry: Bridge) -> None:
    registry = request.app[keys.WEBSOCKETS]
    tasks = (
        asyncio.create_task(_pump(client, upstream, "client", entry if entry.loaded else None),
                            name="authproxy-ws-client"),
        asyncio.create_task(_pump(upstream, client, "upstream"), name="authproxy-ws-upstream"),
        asyncio.create_task(_watch(request, entry, registry), name="authproxy-ws-watch"),
    )
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = next(t for t in tasks if t in done)
        end = first.result()
        tasks[2].cancel()
        c_code, c_reason, u_code, u_reason = _plan(end)
        # A pump still waiting on a socket is woken by that socket's close() and returns.
        await asyncio.gather(client.close(code=c_code, message=_reason(c_reason)),
                             upstream.close(code=u_code, message=_reason(u_reason)), return_exceptions=True)
        log.debug("websocket bridge closed", extra={"fields": {
            "site": entry.site, "by": end.side, "how": end.kind, "client_code": c_code, "upstream_code": u_code}})
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not upstream.closed:  # cancelled mid-way (server shutting down hard)
            await upstream.close(code=1001)


# ---- wiring ----------------------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    """The registry, its invalidation listener, and closing every bridge when the app stops."""
    app[keys.WEBSOCKETS] = BridgeRegistry()

    async def listen(app: web.Application) -> None:
        app[keys.STORE].subscribe(CHANNEL, app[keys.WEBSOCKETS].invalidated)

    async def close_all(app: web.Application) -> None:
        await app[keys.WEBSOCKETS].close_all()

    async def release(app: web.Application) -> None:
        await app[keys.WEBSOCKETS].aclose()

    app.on_startup.append(listen)
    app.on_shutdown.append(close_all)
    app.on_cleanup.append(release)
