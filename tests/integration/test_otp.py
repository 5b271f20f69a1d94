"""AUTH_MODE=otp: one-time codes by webhook, against a real webhook receiver (an aiohttp app on a free
port) and the Technitium fake as the upstream. The test reads each code from the captured payload, as
its owner reads it in the chat channel."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from authproxy import keys
from authproxy.config.loader import load_config
from authproxy.errors import ConfigError
from tests.fakes.clock import OffsetClock
from tests.fakes.technitium import FakeTechnitium
from tests.fakes.webhook import WebhookReceiver
from tests.integration.conftest import Audit
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env
from tests.support.technitium import ALICE

REQUEST = "/_authproxy/api/auth/otp/request"
VERIFY = "/_authproxy/api/auth/otp/verify"
JWT_SECRET = "k7Qv2pW9zR4mT8nY1bX6cJ3hL5fD0sGa-Ue_Ni"  # 38 random characters, no placeholder
INVALID = {"error": "invalid_otp", "message": "Invalid or expired OTP"}


def otp_env(
    technitium: FakeTechnitium, webhook: str, *, discord: bool = True, **extra: str
) -> dict[str, str]:
    token = technitium.create_session(ALICE[0], type="ApiToken", token_name="authproxy-otp")
    hook = {"DISCORD_WEBHOOK_URL": webhook} if discord else {"OTP_WEBHOOK_URL": webhook}
    return gateway_env(
        technitium.url, AUTH_MODE="otp", JWT_SECRET=JWT_SECRET, TECHNITIUM_TOKEN=token, **hook, **extra
    )


@pytest.fixture
async def otp_gw(
    make_gateway: MakeGateway, technitium: FakeTechnitium, webhook_receiver: WebhookReceiver
) -> Gateway:
    return await make_gateway(
        otp_env(technitium, webhook_receiver.discord_url, OTP_MAX_ATTEMPTS="3", LOGIN_MAX_FAILURES="20")
    )


@pytest.fixture
def otp(otp_gw: Gateway, client_for: Callable[[Gateway], GatewayClient]) -> GatewayClient:
    return client_for(otp_gw)


async def post(c: GatewayClient, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    resp = await c.request("POST", path, json=body) if body is not None else await c.request("POST", path)
    return resp.status, await resp.json()


async def test_request_delivers_a_code_to_discord_and_verify_answers_a_jwt_and_a_session(
    otp: GatewayClient, webhook_receiver: WebhookReceiver, technitium: FakeTechnitium
) -> None:
    before = time.time()
    status, body = await post(otp, REQUEST)
    assert (status, body) == (200, {"message": "OTP sent to Discord webhook"})
    [sent] = webhook_receiver.posts
    assert sent.path.startswith("/api/webhooks/") and sent.headers["Content-Type"] == "application/json"
    content = sent.body["content"]
    code = webhook_receiver.code()
    assert code in content and "expires in 5 minutes" in content.lower()
    stamp = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", content)
    assert (
        stamp is not None
        and abs(time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")) - time.timezone - before) < 5
    )
    assert sent.body["allowed_mentions"] == {"parse": []}

    status, body = await post(otp, VERIFY, {"otp": code})
    assert status == 200, body
    assert set(body) == {"token", "expires_at"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["expires_at"])
    assert body["token"].count(".") == 2 and otp.cookie  # the browser's session too
    token = body["token"]

    # With the cookie, and with the bearer alone: the upstream gets the service token, never the JWT.
    resp = await otp.request("GET", "/api/zones/list")
    assert resp.status == 200, await resp.text()
    cookie, otp.cookie = otp.cookie, None
    resp = await otp.request("GET", "/api/zones/list", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    seen = technitium.requests_to("/api/zones/list")
    assert len(seen) == 2
    for upstream in seen:
        assert token not in json.dumps(dict(upstream.headers)) + upstream.raw_query
    assert cookie


async def test_the_same_answer_for_an_unknown_user_and_nothing_is_sent(
    otp: GatewayClient, webhook_receiver: WebhookReceiver, audit: Audit
) -> None:
    status, body = await post(otp, REQUEST, {"username": "mallory"})
    assert (status, body) == (200, {"message": "OTP sent to Discord webhook"})
    assert webhook_receiver.posts == []
    assert [line["outcome"] for line in audit.lines("otp_request")] == ["unknown_user"]
    status, body = await post(otp, VERIFY, {"otp": "123456", "username": "mallory"})
    assert (status, body) == (401, INVALID)


async def test_a_code_works_once_and_a_new_request_replaces_the_previous_code(
    otp: GatewayClient, webhook_receiver: WebhookReceiver
) -> None:
    await post(otp, REQUEST, {"username": "admin"})
    first = webhook_receiver.code()
    await post(otp, REQUEST, {})
    second = webhook_receiver.code()
    if first != second:
        assert await post(otp, VERIFY, {"otp": first}) == (401, INVALID)
    status, _ = await post(otp, VERIFY, {"otp": second, "username": "admin"})
    assert status == 200
    assert await post(otp, VERIFY, {"otp": second}) == (401, INVALID)


async def test_wrong_codes_and_the_attempt_limit(
    otp: GatewayClient, webhook_receiver: WebhookReceiver, audit: Audit
) -> None:
    await post(otp, REQUEST)
    code = webhook_receiver.code()
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for _ in range(3):  # OTP_MAX_ATTEMPTS=3
        assert await post(otp, VERIFY, {"otp": wrong}) == (401, INVALID)
    assert await post(otp, VERIFY, {"otp": code}) == (401, INVALID)  # the code is gone
    outcomes = [line["outcome"] for line in audit.lines("login")]
    assert outcomes == ["failure", "failure", "failure", "too_many_tries"]
    # A fresh code works again.
    await post(otp, REQUEST)
    assert (await post(otp, VERIFY, {"otp": webhook_receiver.code()}))[0] == 200


async def test_a_code_expires_on_the_controlled_clock(
    otp: GatewayClient, otp_gw: Gateway, webhook_receiver: WebhookReceiver
) -> None:
    clock = OffsetClock()
    codes = otp_gw.app[keys.OTP]
    assert codes is not None
    codes.clock = clock
    await post(otp, REQUEST)
    clock.advance(4 * 60 + 50)
    await post(otp, REQUEST)
    code = webhook_receiver.code()
    clock.advance(5 * 60 + 1)  # OTP_EXPIRATION_MINUTES=5 (the default)
    assert await post(otp, VERIFY, {"otp": code}) == (401, INVALID)


async def test_two_concurrent_verifies_of_one_code_exactly_one_wins_across_replicas(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    redis_url: str,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    env = otp_env(technitium, webhook_receiver.discord_url, REDIS_URL=redis_url, LOGIN_MAX_FAILURES="50")
    one, two = client_for(await make_gateway(env)), client_for(await make_gateway(env))
    for _ in range(3):
        await post(one, REQUEST)
        code = webhook_receiver.code()
        results = await asyncio.gather(*(post(c, VERIFY, {"otp": code}) for c in (one, two, one, two)))
        assert sorted(status for status, _ in results) == [200, 401, 401, 401], results


async def test_verifies_are_throttled_per_user_and_address(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    c = client_for(
        await make_gateway(
            otp_env(technitium, webhook_receiver.discord_url, LOGIN_MAX_FAILURES="3", OTP_MAX_ATTEMPTS="20")
        )
    )
    for _ in range(3):
        assert (await post(c, VERIFY, {"otp": "000000"}))[0] == 401
    resp = await c.request("POST", VERIFY, json={"otp": "000000"})
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["error"] == "too_many_attempts"


async def test_webhook_answers_500_gives_502_and_leaves_no_usable_code(
    otp: GatewayClient, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.fail_next(500)
    status, body = await post(otp, REQUEST)
    assert (status, body["error"]) == (502, "otp_delivery_failed")
    leaked = re.findall(r"\d{6}", json.dumps(webhook_receiver.posts[-1].body))[0]  # it arrived, yet failed
    assert await post(otp, VERIFY, {"otp": leaked}) == (401, INVALID)


async def test_webhook_rate_limit_is_waited_out_or_fails_when_too_long(
    otp: GatewayClient, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.rate_limit_next(1, 0.3)
    started = time.monotonic()
    status, body = await post(otp, REQUEST)
    assert status == 200, body
    assert time.monotonic() - started >= 0.3
    assert [p.answered for p in webhook_receiver.posts] == [429, 204]
    assert (await post(otp, VERIFY, {"otp": webhook_receiver.code()}))[0] == 200

    webhook_receiver.rate_limit_next(1, 60)  # longer than OTP_WEBHOOK_TIMEOUT (10 s): no waiting
    started = time.monotonic()
    status, body = await post(otp, REQUEST)
    assert (status, body["error"]) == (502, "otp_delivery_failed")
    assert time.monotonic() - started < 5


async def test_webhook_slow_or_down_gives_502(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    c = client_for(
        await make_gateway(otp_env(technitium, webhook_receiver.discord_url, OTP_WEBHOOK_TIMEOUT="1"))
    )
    webhook_receiver.delay = 3
    started = time.monotonic()
    status, body = await post(c, REQUEST)
    assert (status, body["error"]) == (502, "otp_delivery_failed")
    assert time.monotonic() - started < 2.5
    webhook_receiver.delay = 0
    for _ in range(200):  # the slow post lands after the timeout: that code was withdrawn
        if webhook_receiver.posts:
            break
        await asyncio.sleep(0.05)
    assert await post(c, VERIFY, {"otp": webhook_receiver.code()}) == (401, INVALID)
    await webhook_receiver.close()
    status, body = await post(c, REQUEST)
    assert (status, body["error"]) == (502, "otp_delivery_failed")


async def test_generic_webhook_with_a_json_template(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    template = (
        '{"topic": "authproxy", "title": "Code for {{username}}", "message": "{{message}}", "priority": 4}'
    )
    c = client_for(
        await make_gateway(
            otp_env(technitium, webhook_receiver.url + "/ntfy", discord=False, OTP_WEBHOOK_TEMPLATE=template)
        )
    )
    assert await post(c, REQUEST, {"username": "admin"}) == (200, {"message": "OTP sent"})
    [sent] = webhook_receiver.posts
    assert sent.path == "/ntfy"
    assert sent.body["topic"] == "authproxy" and sent.body["title"] == "Code for admin"
    assert sent.body["priority"] == 4 and webhook_receiver.code() in sent.body["message"]
    assert (await post(c, VERIFY, {"otp": webhook_receiver.code()}))[0] == 200


async def test_no_secret_reaches_a_log_or_an_answer(
    otp: GatewayClient, webhook_receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    webhook_receiver.fail_next(500)
    failed = await otp.request("POST", REQUEST)
    await post(otp, REQUEST)
    code = webhook_receiver.code()
    status, body = await post(otp, VERIFY, {"otp": code})
    assert status == 200
    logged = "\n".join(
        r.getMessage() + json.dumps(getattr(r, "fields", {}), default=str) for r in caplog.records
    )
    for secret in (code, body["token"], JWT_SECRET, "wh-token-SECRET-d1sc0rd", "api/webhooks"):
        assert secret not in logged
    assert "api/webhooks" not in await failed.text()


def test_configuration_problems_name_the_variable() -> None:
    base = gateway_env("http://127.0.0.1:1", AUTH_MODE="otp", TECHNITIUM_TOKEN="t" * 20)

    def problems(**env: str) -> str:
        with pytest.raises(ConfigError) as caught:
            load_config({**base, **env})
        return str(caught.value)

    assert "DISCORD_WEBHOOK_URL or OTP_WEBHOOK_URL" in problems(JWT_SECRET=JWT_SECRET)
    text = problems(DISCORD_WEBHOOK_URL="https://discord.com/api/webhooks/1/abc", JWT_SECRET="short")
    assert "JWT_SECRET: the secret is shorter than 32 bytes" in text
    text = problems(
        DISCORD_WEBHOOK_URL="https://discord.com/api/webhooks/1/abc",
        JWT_SECRET="change-me-to-a-long-random-value-please",
    )
    assert "looks like a placeholder" in text
    text = problems(OTP_WEBHOOK_URL="ftp://secret-host/x", JWT_SECRET=JWT_SECRET)
    assert "OTP_WEBHOOK_URL: must be an http:// or https:// URL" in text and "secret-host" not in text
    text = problems(
        OTP_WEBHOOK_URL="https://ntfy.sh/x", OTP_WEBHOOK_TEMPLATE='{"text": "{{cod}}"}', JWT_SECRET=JWT_SECRET
    )
    assert "OTP_WEBHOOK_TEMPLATE: names unknown fields cod" in text
    assert (
        load_config(
            {
                **base,
                "DISCORD_WEBHOOK_URL": "https://discord.com/api/webhooks/1/abc",
                "JWT_SECRET": JWT_SECRET,
            }
        ).auth_mode
        == "otp"
    )


def test_check_config_tells_codes_and_keys_never_secrets() -> None:
    from tests.integration.test_cli import base_env, check_config

    hook = "https://discord.com/api/webhooks/1/wh-token-SECRET"
    done = check_config(
        base_env(
            **gateway_env(
                "http://127.0.0.1:1",
                AUTH_MODE="otp",
                TECHNITIUM_TOKEN="t" * 20,
                DISCORD_WEBHOOK_URL=hook,
                JWT_SECRET=JWT_SECRET,
                OTP_LEGACY_PATHS="true",
            )
        )
    )
    assert done.returncode == 0, done.stderr
    assert (
        "one-time codes: at technitium; sent by Discord webhook; valid 5 min, 5 tries; users admin"
        in done.stdout
    )
    assert "legacy paths" in done.stdout and "JWTs: signed by hs-" in done.stdout
    assert "wh-token-SECRET" not in done.stdout + done.stderr and JWT_SECRET not in done.stdout


async def test_sign_in_needs_https_and_otp_mode(otp_gw: Gateway, http_client: aiohttp.ClientSession) -> None:
    resp = await http_client.post(otp_gw.url + REQUEST)  # no X-Forwarded-Proto: plain HTTP
    assert resp.status == 400 and (await resp.json())["error"] == "https_required"


async def test_code_requests_have_their_own_budget(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    c = client_for(
        await make_gateway(
            otp_env(
                technitium,
                webhook_receiver.discord_url,
                OTP_MAX_REQUESTS="2",
                LOGIN_MAX_FAILURES="1",
                OTP_NOTIFY="false",
            )
        )
    )
    for _ in range(2):
        assert (await post(c, REQUEST))[0] == 200
    for body in ({}, {"username": "mallory"}):  # the address's budget is spent, whoever is named
        resp = await c.request("POST", REQUEST, json=body)
        assert resp.status == 429 and 0 < int(resp.headers["Retry-After"]) <= 900
    assert len(webhook_receiver.posts) == 2
    # Asking for codes spent none of the sign-in budget: the code still works.
    assert (await post(c, VERIFY, {"otp": webhook_receiver.code()}))[0] == 200


async def test_an_unknown_user_waits_as_long_as_a_delivery_takes(
    otp: GatewayClient, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.delay = 0.4
    for _ in range(4):  # the moving average of deliveries learns 0.4 s
        assert (await post(otp, REQUEST))[0] == 200
    started = time.monotonic()
    answer = await post(otp, REQUEST, {"username": "nobody"})
    assert answer == (200, {"message": "OTP sent to Discord webhook"})
    assert time.monotonic() - started >= 0.25
