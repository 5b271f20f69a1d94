"""create_app(config) -> web.Application: reads like the list of what authproxy is made of."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from authproxy import keys
from authproxy.config.schema import Config
from authproxy.crypto import Keyring
from authproxy.log import AccessLogger
from authproxy.login.keepalive import UpstreamKeepalive
from authproxy.login.passthrough import PassthroughLogin
from authproxy.login.regulation import Regulator
from authproxy.proxy import http as proxy_http
from authproxy.proxy import websocket as proxy_websocket
from authproxy.routing import Router
from authproxy.sessions.manager import CHANNEL, SessionManager
from authproxy.sessions.registry import create_store
from authproxy.sessions.store import SessionStore
from authproxy.upstreams.base import UpstreamAdapter
from authproxy.web import api, forward_auth, health, portal
from authproxy.web.middleware import TrustedForwarded, TrustedPeers, request_rules
from authproxy.web.redirects import RedirectPolicy


def upstream_client(config: Config) -> aiohttp.ClientSession:
    """One shared client: no cookie jar (users' cookies never mix), no decompression, pooled."""
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=128, keepalive_timeout=30, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
                                 skip_auto_headers=("User-Agent", "Accept-Encoding"), trust_env=False)


def redirect_policy(config: Config) -> RedirectPolicy:
    domains = list(config.server.allowed_redirect_domains)
    if config.session.cookie_domain:
        domains.append(config.session.cookie_domain)
    for site in config.sites:
        domains.extend(site.hosts)
    return RedirectPolicy(domains)


def handler_options(config: Config) -> dict[str, Any]:
    """What every connection handler of the server needs (aiohttp's RequestHandler keyword arguments;
    `authproxy run` and the test gateways pass the same).

    auto_decompress off: a compressed request body is forwarded as sent, with its Content-Encoding and
    Content-Length; aiohttp would otherwise inflate it and the upstream would get the inflated bytes
    under the compressed length, still labelled gzip (cut short, or a wait for bytes that never come).
    """
    return {"max_field_size": config.server.max_header_size, "max_line_size": config.server.max_header_size,
            "auto_decompress": False}


def create_app(config: Config, *, store: SessionStore | None = None) -> web.Application:
    """Compose the gateway. `store` may be injected (tests); by default it follows REDIS_URL."""
    if not config.session.secrets:
        raise ValueError("create_app needs signing secrets; call config.loader.ensure_session_secrets first")
    peers = TrustedPeers(config.server.trusted_proxies)
    forwarded = (TrustedForwarded(peers, skip_prefix=config.server.prefix + "/verify")
                 if config.server.trust_proxy else None)
    app = web.Application(middlewares=[request_rules(forwarded)], client_max_size=1 << 20)
    app[keys.CONFIG] = config
    app[keys.TRUSTED_PEERS] = peers
    app[keys.STORE] = store if store is not None else create_store(config)
    app[keys.SESSIONS] = SessionManager(store=app[keys.STORE], keyring=Keyring(config.session.secrets),
                                        config=config.session)
    app[keys.REGULATOR] = Regulator(app[keys.STORE], config.throttle)
    app[keys.KEEPALIVE] = UpstreamKeepalive(app[keys.SESSIONS], lambda name: _adapter(app, name))
    app[keys.LOGIN] = PassthroughLogin(app[keys.SESSIONS], app[keys.REGULATOR], app[keys.KEEPALIVE])
    app[keys.REDIRECTS] = redirect_policy(config)
    app.cleanup_ctx.append(_lifecycle)
    if config.server.forward_auth_listener:
        app.cleanup_ctx.append(_forward_auth_listener)  # after _lifecycle: it serves on that state

    prefix = config.server.prefix
    health.setup(app, prefix)
    api.setup(app, prefix)
    forward_auth.setup(app, prefix)
    portal.setup(app, prefix)
    proxy_http.setup(app)
    proxy_websocket.setup(app)
    app.router.add_route("*", "/{tail:.*}", proxy_http.forward)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    app[keys.HTTP] = upstream_client(config)
    app[keys.ROUTER] = Router.build(config.sites, app[keys.HTTP])
    for site in app[keys.ROUTER].sites:   # adapters whose upstream-side state every replica must share
        bind = getattr(site.adapter, "bind_store", None)
        if bind is not None:
            bind(app[keys.STORE])
    await app[keys.STORE].start()
    app[keys.SESSIONS].start()
    app[keys.STORE].subscribe(CHANNEL, app[keys.KEEPALIVE].invalidated)
    logging.getLogger("authproxy").info(
        "authproxy ready", extra={"fields": {"mode": config.auth_mode, "store": app[keys.STORE].name,
                                             "sites": [s.name for s in config.sites]}})
    yield
    await app[keys.KEEPALIVE].close()
    await app[keys.HTTP].close()
    await app[keys.STORE].close()


async def _forward_auth_listener(app: web.Application) -> AsyncIterator[None]:
    """The second listener, FORWARD_AUTH_HOST:FORWARD_AUTH_PORT, the only one that serves /verify*. It
    lives and dies with the application, so every process that serves (each of WORKERS, sharing both
    ports through SO_REUSEPORT) has one, and the test gateways get it as `authproxy run` does."""
    config = app[keys.CONFIG]
    server = config.server
    runner = web.AppRunner(
        forward_auth.listener_app(app), handle_signals=False, access_log_class=AccessLogger,
        access_log=logging.getLogger("authproxy.access") if server.access_log else None,
        shutdown_timeout=server.drain_timeout, **handler_options(config))
    await runner.setup()
    try:
        await web.TCPSite(runner, server.forward_auth_host, server.forward_auth_port,
                          reuse_port=server.workers > 1).start()
        app[forward_auth.LISTENER] = runner
        logging.getLogger("authproxy").info(
            "forward-auth listener ready: /verify* is served here only",
            extra={"fields": {"address": f"http://{server.forward_auth_address(runner.addresses[0][1])}"}})
        yield
    finally:
        await runner.cleanup()


def _adapter(app: web.Application, site: str) -> UpstreamAdapter | None:
    found = app[keys.ROUTER].by_name.get(site)
    return found.adapter if found is not None else None
