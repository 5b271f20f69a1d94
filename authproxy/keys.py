"""Every typed key the application stores on `web.Application` (no other global state)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from authproxy.config.schema import Config
    from authproxy.login.keepalive import UpstreamKeepalive
    from authproxy.login.passthrough import PassthroughLogin
    from authproxy.login.regulation import Regulator
    from authproxy.proxy.bridges import BridgeRegistry
    from authproxy.routing import Router
    from authproxy.sessions.manager import SessionManager
    from authproxy.sessions.store import SessionStore
    from authproxy.web.middleware import TrustedPeers
    from authproxy.web.redirects import RedirectPolicy

CONFIG: web.AppKey[Config] = web.AppKey("config")
STORE: web.AppKey[SessionStore] = web.AppKey("store")
SESSIONS: web.AppKey[SessionManager] = web.AppKey("sessions")
ROUTER: web.AppKey[Router] = web.AppKey("router")
HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http")
REGULATOR: web.AppKey[Regulator] = web.AppKey("regulator")
LOGIN: web.AppKey[PassthroughLogin] = web.AppKey("login")
REDIRECTS: web.AppKey[RedirectPolicy] = web.AppKey("redirects")
WEBSOCKETS: web.AppKey[BridgeRegistry] = web.AppKey("websockets")
KEEPALIVE: web.AppKey[UpstreamKeepalive] = web.AppKey("keepalive")
TRUSTED_PEERS: web.AppKey[TrustedPeers] = web.AppKey("trusted_peers")
HSTS: web.AppKey[str] = web.AppKey("hsts", str)   # the Strict-Transport-Security value, "" = off
