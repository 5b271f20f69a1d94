"""Where a TrueNAS client socket goes: `/api/current` (JSON-RPC, proxy/truenas_bridge.py) or the
legacy `/websocket` (DDP, proxy/truenas_ddp.py), both answered in band."""

from __future__ import annotations

import contextlib

from aiohttp import WSCloseCode, web

from authproxy.proxy.truenas_bridge import MAX_FRAME, InBand, Refused
from authproxy.proxy.truenas_ddp import DdpInBand
from authproxy.routing import Site
from authproxy.sessions.manager import LoadedSession
from authproxy.sessions.model import Credential
from authproxy.upstreams.truenas import LEGACY_DDP
from authproxy.web.common import error_response


async def bridge(
    request: web.Request, site: Site, loaded: LoadedSession | None, credential: Credential | None
) -> web.StreamResponse:
    """Answer a WebSocket handshake at TrueNAS's JSON-RPC path (with or without a session)."""
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, autoping=True, compress=False, decode_text=False)
    if not ws.can_prepare(request).ok:
        return error_response(
            request, 400, "bad_websocket_handshake", "This is not a valid WebSocket request."
        )
    await ws.prepare(request)
    ddp = site.upstream_path(request.rel_url.raw_path) == LEGACY_DDP
    state = (DdpInBand if ddp else InBand)(request, site, ws, loaded, credential)
    if state.service is not None:  # a service client (hybrid) or everyone (AUTH_MODE=none)
        with contextlib.suppress(Refused):
            await state._as_session({"user_info": False})
    try:
        await state.run()
    finally:
        if not ws.closed:
            await ws.close(code=(state.closing or (WSCloseCode.OK, ""))[0])
    return ws
