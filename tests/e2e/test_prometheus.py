"""The real Prometheus (Debian's 2.42) scrapes authproxy's forward-auth listener, and every expression of
the Grafana dashboard (deploy/grafana/authproxy.json) is asked of it: each must parse and, after some
traffic, answer with data. `promtool check metrics` lints the exposition as Prometheus' own tool does."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.fakes.technitium import FakeTechnitium
from tests.integration.test_forward_auth import proxy_headers
from tests.support.apps import _require_binary
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env
from tests.support.procs import ManagedProcess, free_port, wait_for_port
from tests.support.technitium import ALICE

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# Panels that show something only once it happened (an upstream or the store failing, a background
# token that is not safe, a throttled sign-in, an open WebSocket): they must parse, and may be empty.
MAY_BE_EMPTY = ("authproxy_upstream_errors_total", "authproxy_store_errors_total",
                "authproxy_background_token_state", "authproxy_sign_ins_throttled_total")


async def query(http: aiohttp.ClientSession, base: str, expr: str) -> list[Any]:
    async with http.get(base + "/api/v1/query", params={"query": expr}) as resp:
        body = await resp.json()
    assert resp.status == 200 and body["status"] == "success", (expr, body)
    result: list[Any] = body["data"]["result"]
    return result


async def traffic(gw: Gateway, client: GatewayClient, http: aiohttp.ClientSession) -> None:
    assert (await client.login(ALICE[0], "wrong")).status == 401
    assert (await client.login(*ALICE)).status == 200
    for _ in range(3):
        resp = await client.request("GET", "/api/zones/list")
        await resp.read()
    headers = CIMultiDict([*proxy_headers("nginx", "https://dns.example.com/api/zones/list"),
                           ("Cookie", f"__Host-authproxy={client.cookie}")])
    for _ in range(3):
        async with http.get(gw.forward_auth_url + "/_authproxy/verify/nginx", headers=headers) as resp:
            assert resp.status == 200


async def test_prometheus_scrapes_and_every_dashboard_expression_answers(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession,
        client_for: Callable[[Gateway], GatewayClient], process_factory: Callable[..., ManagedProcess],
        tmp_path: Path) -> None:
    prometheus = _require_binary("prometheus", "prometheus")
    promtool = _require_binary("promtool", "prometheus")
    gw = await make_gateway(gateway_env(technitium.url, FORWARD_AUTH_PORT="0"))
    client = client_for(gw)
    await traffic(gw, client, http_client)
    async with http_client.get(gw.forward_auth_url + "/_authproxy/metrics") as resp:
        text = await resp.text()
    lint = await asyncio.to_thread(subprocess.run, [promtool, "check", "metrics"], input=text,
                                   capture_output=True, text=True, timeout=30, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    target = gw.forward_auth_url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "authproxy", "metrics_path": "/_authproxy/metrics",
                            "static_configs": [{"targets": [target]}]}],
    }))
    port = free_port()
    proc = process_factory([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                            f"--web.listen-address=127.0.0.1:{port}"], name="prometheus")
    await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 30, process=proc)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not await _up(http_client, base):   # scraped at least once, and the target is up
        assert time.monotonic() < deadline, proc.log_tail()
        await asyncio.sleep(0.5)
    # More traffic between scrapes, so rate() has two samples that differ.
    await asyncio.sleep(2.5)
    await traffic(gw, client, http_client)
    await asyncio.sleep(2.5)

    dashboard = json.loads((ROOT / "deploy/grafana/authproxy.json").read_text())
    empty = []
    for panel in dashboard["panels"]:
        for target_ in panel["targets"]:
            expr = target_["expr"].replace("$job", "authproxy")
            result = await query(http_client, base, expr)
            if not result and not any(name in expr for name in MAY_BE_EMPTY + ("authproxy_websockets_open",)):
                empty.append((panel["title"], expr))
    assert not empty, empty
    # The numbers are authproxy's: two successful sign-ins' worth and one failure each round.
    [ok] = await query(http_client, base, 'authproxy_sign_ins_total{outcome="success"}')
    assert float(ok["value"][1]) == 2
    [allowed] = await query(http_client, base,
                            'authproxy_verify_decisions_total{proxy="nginx",outcome="allow"}')
    assert float(allowed["value"][1]) == 6


async def _up(http: aiohttp.ClientSession, base: str) -> bool:
    try:
        result = await query(http, base, 'up{job="authproxy"}')
    except (aiohttp.ClientError, AssertionError):
        return False
    return bool(result) and result[0]["value"][1] == "1"
