"""Helpers of the local-accounts tests: a gateway with AUTH_MODE=local in front of the echo upstream,
its first admin signed in with a changed password, and people made through the admin API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fakes.echo import EchoUpstream
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env

API = "/_authproxy/api/auth"
FIRST = "first-admin-pass-1"
ADMIN = "admin-pass-changed-2"


def local_env(upstream: str, **extra: str) -> dict[str, str]:
    return gateway_env(upstream, AUTH_MODE="local", AUTHPROXY_ADMIN_PASSWORD=FIRST, **extra)


async def body(resp: Any) -> dict[str, Any]:
    data: dict[str, Any] = await resp.json(content_type=None)
    return data


@dataclass
class Local:
    gw: Gateway
    admin: GatewayClient
    client_for: Callable[[Gateway], GatewayClient]

    async def user(self, username: str, role: str = "viewer", password: str | None = None,
                   site: str | None = None, **fields: Any) -> tuple[dict[str, Any], GatewayClient]:
        """Make a person with the admin API and sign them in; their record and their client."""
        password = password or f"{username}-password-123"
        fields = {"username": username, "password": password, "role": role, **fields}
        resp = await self.admin.request("POST", f"{API}/users", json=fields)
        made = await body(resp)
        assert resp.status == 201, made
        person = self.client_for(self.gw)
        resp = await person.login(username, password, **({"site": site} if site else {}))
        assert resp.status == 200, await resp.text()
        return made["user"], person


async def start_local(make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
                      echo: EchoUpstream, *, config_file: Any = None, **extra: str) -> Local:
    env = local_env(echo.url, **extra)
    if config_file is not None:
        env.pop("UPSTREAM_URL")
        env.pop("UPSTREAM_TYPE")
    gw = await make_gateway(env, config_file=config_file)
    admin = client_for(gw)
    first_site = {"site": gw.config.sites[0].name} if config_file is not None else {}
    resp = await admin.login("admin", FIRST, **first_site)
    assert resp.status == 200, await resp.text()
    resp = await admin.request("POST", f"{API}/change-password",
                               json={"currentPassword": FIRST, "newPassword": ADMIN})
    assert resp.status == 200, await resp.text()
    return Local(gw, admin, client_for)
