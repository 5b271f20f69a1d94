"""System notices over the webhook: a sign-in from a new address, a lockout, a service credential too
privileged (found at start-up); rate-limited, and never with a secret."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.fakes.technitium import FakeTechnitium
from tests.fakes.webhook import WebhookReceiver
from tests.integration.conftest import Audit
from tests.integration.test_hybrid import background_token
from tests.integration.test_otp import JWT_SECRET, REQUEST, VERIFY, otp_env, post
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env


async def notices(webhook: WebhookReceiver, count: int, timeout: float = 5.0) -> list[str]:
    """The notices once `count` have arrived (they are sent in the background)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(webhook.notices()) < count:
        assert asyncio.get_running_loop().time() < deadline, webhook.notices()
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # and no more than that
    return webhook.notices()


async def test_new_address_and_lockout_notices_rate_limited_without_secrets(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient],
    audit: Audit,
) -> None:
    c = client_for(
        await make_gateway(otp_env(technitium, webhook_receiver.discord_url, LOGIN_MAX_FAILURES="2"))
    )
    tokens = []
    for _ in range(2):
        await post(c, REQUEST)
        status, body = await post(c, VERIFY, {"otp": webhook_receiver.code()})
        assert status == 200
        tokens.append(body["token"])
    [first] = await notices(webhook_receiver, 1)  # the second sign-in is from a known address
    assert first == "authproxy: New sign-in for `admin` from `127.0.0.1` at `technitium`."
    for _ in range(5):
        await post(c, VERIFY, {"otp": "000000"})
    found = await notices(webhook_receiver, 2)
    assert found[1] == "authproxy: Lockout: too many attempts for `admin` from `127.0.0.1`; refused for now."
    assert len(found) == 2  # three throttled answers, one notice
    for post_ in webhook_receiver.posts:
        for secret in (*tokens, JWT_SECRET):
            assert secret not in str(post_.body)


async def test_a_too_privileged_service_credential_is_told_at_start(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    audit: Audit,
) -> None:
    token = background_token(technitium, Zones=2)
    await make_gateway(
        gateway_env(
            technitium.url,
            AUTH_MODE="hybrid",
            TECHNITIUM_BACKGROUND_TOKEN=token,
            DISCORD_WEBHOOK_URL=webhook_receiver.discord_url,
        )
    )
    [notice] = await notices(webhook_receiver, 1)
    assert notice.startswith("authproxy: The service credential of `technitium` is too privileged")
    assert token not in str([p.body for p in webhook_receiver.posts])


async def test_notices_can_be_turned_off(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient],
    audit: Audit,
) -> None:
    c = client_for(await make_gateway(otp_env(technitium, webhook_receiver.discord_url, OTP_NOTIFY="false")))
    await post(c, REQUEST)
    assert (await post(c, VERIFY, {"otp": webhook_receiver.code()}))[0] == 200
    await asyncio.sleep(0.3)
    assert webhook_receiver.notices() == [] and len(webhook_receiver.posts) == 1


def test_a_typed_name_reaches_the_chat_as_inert_text() -> None:
    from authproxy.login.notices import notice_for

    hostile = "[click](https://evil.example) @everyone `x`\n<https://evil.example|login>" + "a" * 100
    found = notice_for(
        {"event": "login", "outcome": "throttled", "user": hostile, "client_ip": "203.0.113.9"}
    )
    assert found is not None
    text = found[2]
    name = text.split("for ", 1)[1].split(" from", 1)[0]
    assert name.startswith("`") and name.endswith("`") and name.count("`") == 2
    assert "\n" not in text and len(name) <= 66
