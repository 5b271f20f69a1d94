"""Every typed key the application stores on `web.Application` (no other global state), and on a request."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from authproxy.accounts.store import AccountStore
    from authproxy.config.schema import Config
    from authproxy.login.background import BackgroundWork
    from authproxy.login.keepalive import UpstreamKeepalive
    from authproxy.login.otp import OneTimeCodes
    from authproxy.login.passthrough import PassthroughLogin
    from authproxy.login.regulation import Regulator
    from authproxy.login.service import ServiceClient, ServiceGate
    from authproxy.login.tokens import JwtTokens, TokenClaims
    from authproxy.metrics import Metrics
    from authproxy.proxy.bridges import BridgeRegistry
    from authproxy.redirects import RedirectPolicy
    from authproxy.routing import Router
    from authproxy.sessions.manager import SessionManager
    from authproxy.sessions.model import Session
    from authproxy.sessions.store import SessionStore
    from authproxy.web.common import RequestSession
    from authproxy.web.middleware import TrustedPeers

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
SERVICE_GATE: web.AppKey[ServiceGate] = web.AppKey("service_gate")      # service clients (hybrid)
BACKGROUND: web.AppKey[BackgroundWork] = web.AppKey("background")       # background tokens, checked
ACCOUNTS: web.AppKey[AccountStore] = web.AppKey("accounts")             # authproxy's own accounts (local)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")                    # absent: metrics off

# The request's session, loaded once and kept on the request (web.common.current_session): every later
# step of the same request (a UI call, the credential for the proxy) reads it from here.
SESSION: web.RequestKey[RequestSession] = web.RequestKey("authproxy.session")
# The service client a request without a session was proven to be (web/service.py), if any.
SERVICE_CLIENT: web.RequestKey[ServiceClient] = web.RequestKey("authproxy.service_client")
HSTS: web.AppKey[str] = web.AppKey("hsts", str)   # the Strict-Transport-Security value, "" = off
# JWT bearer tokens (None: not configured) and one-time codes (AUTH_MODE=otp only); the claims of the
# bearer token a request was let in with (web/bearer.py).
TOKENS: web.AppKey[JwtTokens | None] = web.AppKey("tokens")
OTP: web.AppKey[OneTimeCodes | None] = web.AppKey("otp")
BEARER: web.RequestKey[TokenClaims] = web.RequestKey("authproxy.bearer")
# A local account's JWT at a local site: the account as it is now, shaped as its session (web/bearer.py)
LOCAL_BEARER: web.RequestKey[Session] = web.RequestKey("authproxy.local_bearer")
# A bearer JWT whose own (sealed) upstream credential this request carries (web/bearer.py `_own`).
TOKEN_CREDENTIAL: web.RequestKey[TokenClaims] = web.RequestKey("authproxy.token_credential")
