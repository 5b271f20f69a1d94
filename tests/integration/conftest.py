"""Shared fixtures for the integration tests: one fake Technitium, one real gateway in front of it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from authproxy.log import JsonFormatter
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
