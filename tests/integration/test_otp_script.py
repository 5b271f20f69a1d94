"""The README's shell script (section "One-time codes and JWTs", "The script"), run as written with sh,
curl and jq: ask for a code, read it from the webhook (as the owner reads the chat), type it in, get a JWT,
call the API, sign out. Once against authproxy serving TLS itself, and through real nginx, Caddy and
Traefik with forward auth in front of the app."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.fakes.technitium import FakeTechnitium
from tests.fakes.webhook import WebhookReceiver
from tests.integration.test_otp import otp_env
from tests.support.gateway import MakeGateway, MakeTlsGateway
from tests.support.proxies import PROJECT_ROOT, Check, RunningProxy

SCRIPT_START = "#!/bin/sh\n# otp-api.sh"


def readme_script() -> str:
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", text, re.DOTALL) if b.startswith(SCRIPT_START)]
    assert len(blocks) == 1, "README: exactly one ```sh block must hold otp-api.sh"
    return blocks[0]


async def run_script(tmp_path: Path, base: str, webhook: WebhookReceiver) -> tuple[dict[str, object], str]:
    for tool in ("sh", "curl", "jq"):
        assert shutil.which(tool), f"{tool} is needed (apt-get install -y curl jq)"
    script = tmp_path / "otp-api.sh"
    script.write_text(readme_script(), encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CURL_OPTS": "--insecure"}
    proc = await asyncio.create_subprocess_exec(
        "sh",
        str(script),
        base,
        "/api/zones/list",
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    for _ in range(200):  # the owner waits for the message in the chat
        if webhook.delivered():
            break
        await asyncio.sleep(0.05)
    proc.stdin.write(webhook.code().encode() + b"\n")
    await proc.stdin.drain()
    proc.stdin.close()
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return json.loads(out), err.decode()


def upstream_saw_the_service_token(technitium: FakeTechnitium, service_token: str) -> None:
    [seen] = technitium.requests_to("/api/zones/list")
    assert seen.headers.get("Authorization") == f"Bearer {service_token}"
    assert "eyJ" not in str(dict(seen.headers)) + seen.raw_query  # no JWT went upstream


async def test_the_readme_script_against_authproxy(
    tmp_path: Path,
    make_tls_gateway: MakeTlsGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
) -> None:
    env = otp_env(technitium, webhook_receiver.discord_url)
    gw = await make_tls_gateway(env)
    body, err = await run_script(tmp_path, gw.url, webhook_receiver)
    assert body["status"] == "ok"
    assert '"message": "OTP sent to Discord webhook"' in err and '"revoked": true' in err
    upstream_saw_the_service_token(technitium, env["TECHNITIUM_TOKEN"])


@pytest.mark.parametrize("kind", ["nginx", "caddy", "traefik"])
async def test_the_readme_script_through_forward_auth(
    kind: str,
    tmp_path: Path,
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    forward_auth_proxy: Callable[..., Awaitable[RunningProxy]],
) -> None:
    """Through the shipped proxy configs (nginx auth_request, Caddy forward_auth, Traefik ForwardAuth):
    each drops the client's Authorization (the JWT) and copies authproxy's answer in its place."""
    env = otp_env(technitium, webhook_receiver.discord_url, FORWARD_AUTH_PORT="0")
    gw = await make_gateway(env)
    proxy = await forward_auth_proxy(kind, gw.url, technitium.url, tls=True,
                                     check=Check(url=gw.forward_auth_url))
    body, err = await run_script(tmp_path, proxy.url, webhook_receiver)
    assert body["status"] == "ok" and '"revoked": true' in err
    upstream_saw_the_service_token(technitium, env["TECHNITIUM_TOKEN"])
