"""create_app(config) -> web.Application: reads like the list of what authproxy is made of."""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import aiohttp
import aiohttp.web_response
from aiohttp import web, web_protocol

from authproxy import keys
from authproxy.config.schema import Config
from authproxy.crypto import Keyring
from authproxy.errors import ListenError
from authproxy.log import AccessLogger
from authproxy.login.background import BackgroundWork
from authproxy.login.keepalive import UpstreamKeepalive
from authproxy.login.passthrough import PassthroughLogin
from authproxy.login.regulation import Regulator
from authproxy.login.service import ApiKeys, ServiceGate
from authproxy.metrics import Metrics, flushing
from authproxy.proxy import http as proxy_http
from authproxy.proxy import websocket as proxy_websocket
from authproxy.redirects import RedirectPolicy
from authproxy.routing import Router
from authproxy.sessions.instrumented import InstrumentedStore
from authproxy.sessions.manager import CHANNEL, SessionManager
from authproxy.sessions.registry import create_store
from authproxy.sessions.store import SessionStore
from authproxy.upstreams.base import UpstreamAdapter
from authproxy.web import api, forward_auth, health, passwordless, portal
from authproxy.web.common import hsts_value, plain_expect
from authproxy.web.middleware import TrustedForwarded, TrustedPeers, request_rules


def upstream_client(config: Config) -> aiohttp.ClientSession:
    """One shared client: no cookie jar (users' cookies never mix), no decompression, pooled."""
    connector = aiohttp.TCPConnector(
        limit=256, limit_per_host=128, keepalive_timeout=30, enable_cleanup_closed=True
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        trust_env=False,
    )


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


SERVER_NAME = "authproxy"


def name_the_server() -> None:
    """Every answer says `Server: authproxy`, never `Python/3.x aiohttp/3.y` (a version to look up).

    aiohttp writes its default into every answer that has no Server header, also the 400 it sends by
    itself for a malformed request before any handler, middleware or signal runs; its module default
    is the one place that reaches all of them, and it costs nothing per answer. (Proxied answers drop
    the upstream's own Server header, so they say the same.)"""
    setattr(aiohttp.web_response, "SERVER_SOFTWARE", SERVER_NAME)  # noqa: B010 (not re-exported)


def quiet_protocol_errors() -> None:
    """aiohttp's own answer to a request its parser refuses quotes up to 100 bytes of the offending line.
    A script in the upstream's origin can grow the Cookie header past MAX_HEADER_SIZE (with cookies of
    its own, a longer path first to place the window) and read that 400 with a same-origin fetch: the
    HttpOnly session ticket. The answer is made a fixed text: the status and its phrase, nothing of
    the request. (The refusal is still logged, redacted.) aiohttp has no setting for it; the method is
    wrapped once per process, and tests/unit/test_dependency_internals.py checks its signature."""
    original = web_protocol.RequestHandler.handle_error
    if getattr(original, "__authproxy_quiet__", False):
        return

    def handle_error(self: web_protocol.RequestHandler, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return original(self, request, status, exc, f"{status} {phrase}\n")

    handle_error.__authproxy_quiet__ = True  # type: ignore[attr-defined]
    web_protocol.RequestHandler.handle_error = handle_error  # type: ignore[method-assign]


def create_app(config: Config, *, store: SessionStore | None = None) -> web.Application:
    """Compose the gateway. `store` may be injected (tests); by default it follows REDIS_URL. METRICS=false
    leaves out app[keys.METRICS] and every hook with it (bench/verify.py measures their cost)."""
    if not config.session.secrets:
        raise ValueError("create_app needs signing secrets; call config.loader.ensure_session_secrets first")
    name_the_server()
    quiet_protocol_errors()
    peers = TrustedPeers(config.server.trusted_proxies)
    forwarded = (TrustedForwarded(peers, skip_prefix=config.server.prefix + "/verify")
                 if config.server.trust_proxy else None)
    hsts = hsts_value(config.server.hsts_max_age, config.server.hsts_include_subdomains)
    rules = request_rules(forwarded, hsts=hsts, verify_prefix=config.server.prefix + "/verify")
    app = web.Application(middlewares=[rules], client_max_size=1 << 20)
    app[keys.CONFIG] = config
    app[keys.HSTS] = hsts
    app[keys.TRUSTED_PEERS] = peers
    app[keys.STORE] = store if store is not None else create_store(config)
    if config.server.metrics:
        app[keys.METRICS] = Metrics()
        app[keys.STORE] = InstrumentedStore(app[keys.STORE], app[keys.METRICS])
        app.cleanup_ctx.append(flushing)
    app[keys.SESSIONS] = SessionManager(store=app[keys.STORE], keyring=Keyring(config.session.secrets),
                                        config=config.session)
    app[keys.REGULATOR] = Regulator(app[keys.STORE], config.throttle)
    app[keys.KEEPALIVE] = UpstreamKeepalive(app[keys.SESSIONS], lambda name: _adapter(app, name))
    app[keys.LOGIN] = PassthroughLogin(app[keys.SESSIONS], app[keys.REGULATOR], app[keys.KEEPALIVE],
                                       names=lambda address: app[keys.BACKGROUND].name_for(address))
    # Service clients (AUTH_MODE=hybrid): API keys today; a JWT authenticator joins the same gate.
    service_keys = config.server.service_api_keys
    app[keys.SERVICE_GATE] = ServiceGate([ApiKeys(service_keys)] if service_keys else [])
    app[keys.REDIRECTS] = redirect_policy(config)
    app.cleanup_ctx.append(_lifecycle)
    if config.server.forward_auth_listener:
        app.cleanup_ctx.append(_forward_auth_listener)  # after _lifecycle: it serves on that state

    prefix = config.server.prefix
    health.setup(app, prefix)
    api.setup(app, prefix)
    passwordless.setup(app, prefix)   # one-time codes, JWTs (before the proxy's catch-all: legacy paths)
    forward_auth.setup(app, prefix)
    portal.setup(app, prefix)
    proxy_http.setup(app)
    proxy_websocket.setup(app)
    app.router.add_route("*", "/{tail:.*}", proxy_http.forward)
    for route in app.router.routes():
        # aiohttp takes an expect handler per route (keyword of every add_route) and has no app-wide one:
        # set here once, so no route is left with the default that fails on undecodable bytes.
        route._expect_handler = plain_expect(route._expect_handler)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    app[keys.HTTP] = upstream_client(config)
    app[keys.ROUTER] = Router.build(config.sites, app[keys.HTTP], auth_mode=config.auth_mode)
    for site in app[keys.ROUTER].sites:   # adapters whose upstream-side state every replica must share
        site.adapter.bind_store(app[keys.STORE])
    # Background tokens: read and judged once before serving, then every BACKGROUND_CHECK_INTERVAL.
    app[keys.BACKGROUND] = BackgroundWork(app[keys.ROUTER].sites,
                                          enabled=config.auth_mode in ("session", "hybrid"),
                                          interval=config.server.background_check_interval)
    await app[keys.BACKGROUND].start()
    await app[keys.STORE].start()
    app[keys.SESSIONS].start()
    app[keys.STORE].subscribe(CHANNEL, app[keys.KEEPALIVE].invalidated)
    yield
    await app[keys.BACKGROUND].close()
    await app[keys.KEEPALIVE].close()
    for site in app[keys.ROUTER].sites:
        await site.adapter.aclose()
    await app[keys.HTTP].close()
    await app[keys.STORE].close()


async def _forward_auth_listener(app: web.Application) -> AsyncIterator[None]:
    """The second listener, FORWARD_AUTH_HOST:FORWARD_AUTH_PORT, the only one that serves /verify*. It
    lives and dies with the application, so every process that serves (each of WORKERS, sharing both
    ports through SO_REUSEPORT) has one, and the test gateways get it as `authproxy run` does."""
    config = app[keys.CONFIG]
    server = config.server
    runner = web.AppRunner(
        forward_auth.listener_app(app),
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("authproxy.access") if server.access_log else None,
        shutdown_timeout=server.drain_timeout,
        **handler_options(config),
    )
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, server.forward_auth_host, server.forward_auth_port,
                              reuse_port=server.workers > 1).start()
        except OSError as exc:
            address = server.forward_auth_address()
            raise ListenError(f"FORWARD_AUTH_HOST/FORWARD_AUTH_PORT: cannot listen on {address}: "
                              f"{listen_problem(exc)}") from None
        app[forward_auth.LISTENER] = runner
        logging.getLogger("authproxy").info(
            "forward-auth listener ready: /verify* is served here only",
            extra={"fields": {"address": f"http://{server.forward_auth_address(runner.addresses[0][1])}"}})
        yield
    finally:
        await runner.cleanup()


def listen_problem(exc: OSError) -> str:
    """An OSError of bind() in words, with the usual fix."""
    if exc.errno == errno.EADDRINUSE:
        return ("the address is already in use (another authproxy, or another program); "
                "stop it or choose another port")
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges); choose a port above 1024"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no interface has this address here; listen on 0.0.0.0 or an address of this machine"
    return exc.strerror or type(exc).__name__


def log_ready(app: web.Application, scheme: str = "http") -> None:
    """Said once every listener is open (`authproxy run` calls it then, never before)."""
    config = app[keys.CONFIG]
    server = config.server
    host = f"[{server.host}]" if ":" in server.host else server.host
    logging.getLogger("authproxy").info(
        f"authproxy ready: listening on {scheme}://{host}:{server.port}{server.prefix}/login",
        extra={"fields": {"mode": config.auth_mode, "store": app[keys.STORE].name,
                          "sites": [s.name for s in config.sites], "workers": server.workers}})


def _adapter(app: web.Application, site: str) -> UpstreamAdapter | None:
    found = app[keys.ROUTER].by_name.get(site)
    return found.adapter if found is not None else None
