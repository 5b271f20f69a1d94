"""WebSocket bridge: the client's socket on one side, the upstream's on the other, frames relayed as-is.

`proxy.http.forward` has already found the site and the credential; `bridge` then

1. refuses what is not a WebSocket handshake (400). A handshake from another origin never gets here:
   the upstream's own Origin check is about to be satisfied by us, so `forward` refuses it (403) with
   the cross-site rule of every request (crosssite.refused: `Origin` compared by scheme, host and
   port; browsers always send one on a WebSocket, and Chromium no Sec-Fetch-* there);
2. builds the upstream handshake like an HTTP request (hop-by-hop, identity headers and the authproxy
   cookie stripped, the adapter injects the credential), keeps the offered subprotocols, offers no
   extension, and sets `Origin` to the upstream's own origin (proxy/ws_upstream.py does the handshake);
3. connects upstream *before* upgrading the client, so a refusal is still an HTTP answer
   (502, or "signed out" when the adapter says a 401/403 means the credential died);
4. answers the client's handshake with 101, the subprotocol the upstream chose and no extension (so
   frames need no re-encoding), takes the client's socket over from aiohttp and relays bytes both
   ways (proxy/relay.py: CLOSE frames pass through, so close codes cross as the endpoints chose them),
   while one task watches the session:

       watch: session still in the store? wakes on invalidation messages, every RECHECK_INTERVAL s,
              and at the idle/absolute expiry; ends the bridge with 4001 "session ended"

   `bridge` returns once both connections are closed and the watch task is awaited.

`BridgeRegistry` (proxy/bridges.py, app[keys.WEBSOCKETS]) knows every open bridge by session.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from authproxy import crosssite, keys
from authproxy.errors import StoreError
from authproxy.log import log
from authproxy.login.tokens import record_key
from authproxy.proxy.bridges import CLOSE_TIMEOUT, SESSION_ENDED, Bridge, BridgeRegistry
from authproxy.proxy.common import build_upstream_request, credential_died
from authproxy.proxy.headers import set_forwarded
from authproxy.proxy.relay import FrameRelay, Leg
from authproxy.proxy.ws_upstream import (
    HandshakeInvalid,
    HandshakeRefused,
    UpstreamSocket,
    accept_for,
    open_upstream,
)
from authproxy.routing import Site
from authproxy.sessions.manager import CHANNEL, LoadedSession
from authproxy.sessions.model import Credential
from authproxy.web.api import end_session
from authproxy.web.common import client_ip, error_response

MAX_MSG_SIZE = 16 * 1024 * 1024

# Written by ws_upstream itself (or meaningless upstream); Origin is replaced, protocols passed apart.
# The handshake carries no body, so no Expect either: `Expect: 100-continue` made the upstream answer
# `100 Continue` first, read as its refusal (a 502 for a client's odd header).
_HANDSHAKE_HEADERS = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                      "Sec-WebSocket-Accept", "Sec-WebSocket-Protocol", "Origin", "Content-Length",
                      "Content-Type", "Expect")


# ---- the handshake ---------------------------------------------------------------------------------


def upstream_origin(upstream_url: str) -> str:
    parts = urlsplit(upstream_url)
    scheme = crosssite.WS_SCHEMES.get(parts.scheme, parts.scheme)
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
    ureq.headers["Origin"] = upstream_origin(site.config.upstream_url)
    set_forwarded(ureq.headers, client_ip=client_ip(request), proto="https" if request.secure else "http",
                  host=request.host)
    url = site.config.upstream_url + ureq.raw_path + (f"?{ureq.raw_query}" if ureq.raw_query else "")
    return url, ureq.headers, protocols


async def bridge(request: web.Request, site: Site, loaded: LoadedSession | None,
                 credential: Credential | None) -> web.StreamResponse:
    """Answer an authenticated `Upgrade: websocket` request by bridging it to the site's upstream."""
    # aiohttp checks the handshake (method, Upgrade/Connection, version, key); offering it the client's
    # own subprotocols keeps it from logging a warning that none overlap (the upstream chooses).
    offered = tuple(
        p.strip() for v in request.headers.getall("Sec-WebSocket-Protocol", ()) for p in v.split(",")
    )
    if not web.WebSocketResponse(protocols=offered).can_prepare(request).ok:
        return error_response(
            request, 400, "bad_websocket_handshake", "This is not a valid WebSocket request."
        )
    registry = request.app[keys.WEBSOCKETS]
    url, headers, protocols = build_handshake(request, site, credential)
    try:
        async with asyncio.timeout(site.config.connect_timeout):
            upstream = await open_upstream(URL(url, encoded=True), headers, protocols,
                                           ssl_context=registry.ssl_context)
    except HandshakeRefused as exc:
        return await _refused(request, site, loaded, exc)
    except (HandshakeInvalid, OSError, TimeoutError, ValueError) as exc:
        log.warning("upstream websocket unreachable",
                    extra={"fields": {"site": site.name, "error": type(exc).__name__}})
        return error_response(request, 502, "upstream_unavailable",
                              f"{site.name} is not answering right now; try again in a moment.",
                              title="Upstream unavailable")

    claims = request.get(keys.BEARER)   # a JWT's bridge lives as long as the token's record (revocation)
    store_key = loaded.store_key if loaded else (record_key(claims.jti) if claims else None)
    expires_at = loaded.session.expires_at if loaded else (claims.exp if claims else None)
    entry = Bridge(store_key=store_key, site=site.name, expires_at=expires_at, loaded=loaded,
                   slide_every=request.app[keys.SESSIONS].touch_interval)
    relay = FrameRelay(max_message=MAX_MSG_SIZE, close_timeout=CLOSE_TIMEOUT)
    relay.attach(
        relay.upstream, upstream.transport
    )  # still paused: nothing reaches the client before its 101
    # No permessage-deflate towards the browser either (none upstream): frames pass through unchanged.
    switched = web.StreamResponse(status=101, reason="Switching Protocols", headers={
        "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Accept": accept_for(request.headers["Sec-WebSocket-Key"])})
    if upstream.protocol:
        switched.headers["Sec-WebSocket-Protocol"] = upstream.protocol
    registry.add(entry)
    try:
        try:
            await switched.prepare(request)
        except BaseException:
            relay.abort()
            raise
        await _run(request, relay, upstream, entry, site.adapter.ws_sign_out_text())
    finally:
        registry.remove(entry)
        entry.done.set()
    return switched


async def _run(request: web.Request, relay: FrameRelay, upstream: UpstreamSocket, entry: Bridge,
               sign_out_text: str = "") -> None:
    """Take the client's socket over from aiohttp, relay until both connections are closed, and watch
    the session meanwhile. `sign_out_text`: a message from the browser containing it is the UI's own
    sign-out, which ends the authproxy session too."""
    transport = request.transport
    early = _Early()
    request.protocol.set_parser(early)  # type: ignore[arg-type]  # what aiohttp read past the request
    if transport is None:
        relay.abort()
        return
    relay.attach(relay.client, transport)
    if sign_out_text and entry.loaded is not None:
        def signed_out() -> None:
            entry.sign_out = True
            entry.wake.set()
        relay.client.reader.watch = sign_out_text.encode()
        relay.client.reader.on_watch = signed_out
    activity = _Activity(entry, relay.client) if entry.loaded is not None else None
    relay.start(early.data, upstream.early)
    watch = asyncio.create_task(
        _watch(request, entry, request.app[keys.WEBSOCKETS]), name="authproxy-ws-watch"
    )
    try:
        await asyncio.wait((relay.done, watch), return_when=asyncio.FIRST_COMPLETED)
        if watch.done() and not relay.done.done():
            code, reason = watch.result()
            relay.stop(code, reason)
        outcome = await relay.done
        log.debug("websocket bridge closed", extra={"fields": {
            "site": entry.site, "by": outcome.side, "how": outcome.kind, "code": outcome.code}})
    finally:
        watch.cancel()
        if activity is not None:
            activity.cancel()
        if not relay.done.done():  # cancelled mid-way (server shutting down hard)
            relay.abort()
        await asyncio.gather(watch, return_exceptions=True)


class _Early:
    """Stands in for aiohttp's WebSocket reader to collect bytes the client sent past its request."""

    def __init__(self) -> None:
        self.data = b""

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        pass


class _Activity:
    """Frames from the browser count as the person being there: the first frame after every
    `slide_every` seconds asks the watch to slide the session's idle timeout, so a UI that talks only
    over its socket is not signed out while in use. A timer raises the leg's flag when a slide is due,
    so a frame costs no clock read."""

    def __init__(self, entry: Bridge, leg: Leg) -> None:
        self.entry = entry
        self.leg = leg
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        leg.on_activity = self.seen
        self._arm()

    def _arm(self) -> None:
        self.timer = self.loop.call_later(self.entry.slide_every, self._due)

    def _due(self) -> None:
        self.leg.activity_due = True

    def seen(self) -> None:
        self.entry.slide = True
        self.entry.wake.set()
        self._arm()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


async def _refused(request: web.Request, site: Site, loaded: LoadedSession | None,
                   exc: HandshakeRefused) -> web.StreamResponse:
    status = exc.status
    if status in (401, 403) and site.adapter.is_expired(status, exc.headers, None):
        return await credential_died(request, site, loaded)
    log.warning("upstream refused the websocket", extra={"fields": {"site": site.name, "status": status}})
    return error_response(request, 502, "upstream_refused",
                          f"{site.name} refused the WebSocket connection (HTTP {status}).",
                          title="Upstream refused")


async def _watch(request: web.Request, entry: Bridge, registry: BridgeRegistry) -> tuple[int, str]:
    """Returns (code, reason) for the client when the session is gone (any replica), expired (idle or
    absolute), or the app stops."""
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
            return entry.stop
        if entry.store_key is None:
            delay = None
            continue
        delay = registry.recheck_interval
        if entry.sign_out and entry.loaded is not None:
            log.info("the UI signed out in a websocket message", extra={"fields": {"site": entry.site}})
            entry.sign_out = False
            try:
                await end_session(request, entry.loaded, reason="ui_websocket_logout")
            except StoreError:
                log.warning("cannot end the session the UI signed out of; retrying", extra={"fields": {
                    "site": entry.site}})
                entry.sign_out = True
                continue
            return SESSION_ENDED
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
            return SESSION_ENDED
        delay = min(delay, left + 0.05)
        if entry.expires_at is not None:
            delay = min(delay, entry.expires_at - now + 0.05)
        delay = max(delay, 0.05)


# ---- wiring ----------------------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    """The registry, its invalidation listener, and closing every bridge when the app stops."""
    app[keys.WEBSOCKETS] = BridgeRegistry()

    async def listen(app: web.Application) -> None:
        app[keys.STORE].subscribe(CHANNEL, app[keys.WEBSOCKETS].invalidated)

    async def close_all(app: web.Application) -> None:
        app[keys.WEBSOCKETS].close_all()

    async def release(app: web.Application) -> None:
        await app[keys.WEBSOCKETS].aclose()

    app.on_startup.append(listen)
    app.on_shutdown.append(close_all)
    app.on_cleanup.append(release)
