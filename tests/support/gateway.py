"""Run the real authproxy application on a free loopback port, in-process, for integration tests.

`make_gateway(env, store=...)` builds the Config exactly as `authproxy run` does (load_config on an
env mapping) and serves `create_app(config)` with aiohttp's AppRunner. `GatewayClient` keeps the
session cookie by hand (the cookie is Secure and tests speak plain HTTP on loopback, so they send
`X-Forwarded-Proto: https` from a trusted peer, as a TLS-terminating proxy would). With FORWARD_AUTH_PORT in
the env (`0`: any free port) the app also opens its forward-auth listener: `gw.forward_auth_url`.
`make_tls_gateway(env)` serves it over its own TLS instead (HTTPS_ENABLED, self-signed): what a
browser must see as `https://` itself, e.g. the `Origin` of a WebSocket handshake.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from authproxy.app import create_app, handler_options
from authproxy.config.loader import ensure_session_secrets, load_config
from authproxy.config.schema import Config
from authproxy.sessions.store import SessionStore
from authproxy.tls import self_signed, server_context
from authproxy.web import forward_auth

SECRET = "test-secret-" + "x" * 40


@dataclass
class Gateway:
    app: web.Application
    runner: web.AppRunner
    config: Config
    url: str
    port: int

    @property
    def forward_auth_url(self) -> str:
        """The forward-auth listener (FORWARD_AUTH_PORT), where the proxies' checks go."""
        runner = self.app.get(forward_auth.LISTENER)
        if runner is None:
            raise AssertionError(
                "this gateway has no forward-auth listener; set FORWARD_AUTH_PORT (0: any port)"
            )
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


@dataclass
class GatewayClient:
    """An HTTP client that behaves like a browser behind a TLS proxy: keeps the session cookie."""

    base: str
    http: aiohttp.ClientSession
    cookie_name: str = "__Host-authproxy"
    cookie: str | None = None
    headers: dict[str, str] = field(default_factory=lambda: {"X-Forwarded-Proto": "https"})

    @property
    def origin(self) -> str:
        """The origin the browser sees: the TLS proxy's (https), at the gateway's host:port."""
        return "https://" + self.base.split("://", 1)[1]

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        h = dict(self.headers)
        if self.cookie:
            h["Cookie"] = f"{self.cookie_name}={self.cookie}"
        if extra:
            h.update(extra)
        return h

    def remember(self, resp: aiohttp.ClientResponse) -> None:
        for value in resp.headers.getall("Set-Cookie", ()):
            m = re.match(rf"\s*{re.escape(self.cookie_name)}=([^;]*)", value)
            if m:
                self.cookie = m.group(1) or None

    async def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                      encoded: bool = False, **kw: Any) -> aiohttp.ClientResponse:
        """`encoded`: send `path` exactly as written (the client would otherwise normalise `%74` to `t`)."""
        kw.setdefault("allow_redirects", False)
        url = URL(self.base + path, encoded=True) if encoded else self.base + path
        resp = await self.http.request(method, url, headers=self._headers(headers), **kw)
        self.remember(resp)
        return resp

    async def login(self, username: str, password: str, totp: str | None = None,
                    **extra: Any) -> aiohttp.ClientResponse:
        body: dict[str, Any] = {"username": username, "password": password, **extra}
        if totp is not None:
            body["totp"] = totp
        resp = await self.request("POST", "/_authproxy/api/auth/login", json=body)
        await resp.read()
        return resp


def gateway_env(upstream_url: str, **overrides: str) -> dict[str, str]:
    env = {"UPSTREAM_URL": upstream_url, "UPSTREAM_TYPE": "technitium", "TRUST_PROXY": "true",
           "SESSION_SECRET": SECRET, "ACCESS_LOG": "false"}
    env.update(overrides)
    return env


MakeGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[MakeGateway]:
    started: list[Gateway] = []

    async def make(env: Mapping[str, str], *, store: SessionStore | None = None, port: int = 0,
                   config_file: Path | None = None) -> Gateway:
        env = dict(env)
        env.setdefault("AUTHPROXY_DATA_DIR", str(tmp_path / "data"))
        config, _ = ensure_session_secrets(load_config(env, config_file))
        app = create_app(config, store=store)
        runner = web.AppRunner(app, access_log=None, **handler_options(config))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        bound = runner.addresses[0][1]
        gw = Gateway(app=app, runner=runner, config=config, url=f"http://127.0.0.1:{bound}", port=bound)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.stop()


MakeTlsGateway = Callable[[Mapping[str, str]], Awaitable[Gateway]]


@pytest.fixture
async def make_tls_gateway(tmp_path: Path) -> AsyncIterator[MakeTlsGateway]:
    """Like make_gateway, but authproxy itself serves TLS (HTTPS_ENABLED, self-signed), as `run` does.

    With no TLS proxy in front, nothing the client says about its address or scheme may be believed.
    """
    runners: list[web.AppRunner] = []

    async def make(env: Mapping[str, str]) -> Gateway:
        env = {"HTTPS_ENABLED": "true", "AUTHPROXY_DATA_DIR": str(tmp_path / "tls-data"), **env}
        config, _ = ensure_session_secrets(load_config(env))
        cert, key, _ = self_signed(config.server.data_dir, "127.0.0.1")
        app = create_app(config)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(cert, key))
        await site.start()
        port = runner.addresses[0][1]
        return Gateway(app=app, runner=runner, config=config, url=f"https://127.0.0.1:{port}", port=port)

    yield make
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def http_client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture
def client_for(http_client: aiohttp.ClientSession) -> Callable[[Gateway], GatewayClient]:
    def make(gw: Gateway) -> GatewayClient:
        return GatewayClient(base=gw.url, http=http_client, cookie_name=_cookie_name(gw))
    return make


def _cookie_name(gw: Gateway) -> str:
    from authproxy import keys

    return gw.app[keys.SESSIONS].cookie_name
