"""Shared fixtures for the integration tests: one fake Technitium, one real gateway in front of it."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from authproxy.app import create_app
from authproxy.config.loader import ensure_session_secrets, load_config
from authproxy.log import JsonFormatter
from authproxy.tls import self_signed, server_context
from tests.fakes.technitium import FakeTechnitium
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env

LOGIN = "/_authproxy/api/auth/login"
LOGOUT = "/_authproxy/api/auth/logout"
SESSION = "/_authproxy/api/auth/session"
HEARTBEAT = "/_authproxy/api/auth/heartbeat"
ME = "/_authproxy/api/auth/me"
BROWSER = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture
async def gw(make_gateway: MakeGateway, technitium: FakeTechnitium) -> Gateway:
    return await make_gateway(gateway_env(technitium.url))


@pytest.fixture
def client(gw: Gateway, client_for: Callable[[Gateway], GatewayClient]) -> GatewayClient:
    return client_for(gw)


class Audit:
    """The audit lines as the JSON formatter writes them (what an operator's log file holds)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.fmt = JsonFormatter()

    def lines(self, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for record in self.caplog.records:
            if record.name == "authproxy.audit":
                line = json.loads(self.fmt.format(record))
                if event is None or line["event"] == event:
                    out.append(line)
        return out


@pytest.fixture
def audit(caplog: pytest.LogCaptureFixture) -> Iterator[Audit]:
    caplog.set_level(logging.INFO, logger="authproxy.audit")
    yield Audit(caplog)


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
