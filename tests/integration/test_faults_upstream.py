"""An upstream that restarts and forgets every token, in a forward-auth-only setup: authproxy never sees
the upstream's answers, so /verify itself must find the dead credential (a background proof when none
has been seen for `prove_every` s) and end it, so the next check asks to sign in again."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from authproxy import keys
from tests.fakes.technitium import FakeTechnitium
from tests.integration.test_forward_auth import Asker, bearer
from tests.support.gateway import MakeGateway, gateway_env
from tests.support.technitium import ALICE

URL = "https://dns.example.com/api/zones/list"


async def test_a_token_the_upstream_forgot_is_found_by_verify_alone(
        make_gateway: MakeGateway, technitium: FakeTechnitium, http_client: aiohttp.ClientSession) -> None:
    gw = await make_gateway(gateway_env(technitium.url, ALLOWED_USERS="alice", FORWARD_AUTH_PORT="0",
                                        SESSION_CACHE_TTL="0"))
    ask = Asker(gw, http_client, "__Host-authproxy")
    keepalive = gw.app[keys.KEEPALIVE]
    keepalive.prove_every = 0.5  # 30 s in production; the mechanism is the same
    cookie, _ = await ask.sign_in("dns.example.com", ALICE)
    first = await ask.verify("caddy", URL, cookie=cookie)
    assert first.status == 200
    token = bearer(first)
    keepalives = len(technitium.requests_to("/api/user/session/get"))

    # Checks within prove_every of the sign-in (which proved it) ask the upstream nothing.
    for _ in range(20):
        assert (await ask.verify("caddy", URL, cookie=cookie)).status == 200
    assert len(technitium.requests_to("/api/user/session/get")) == keepalives

    technitium.sessions.clear()  # the upstream restarted: every token is gone
    started = time.monotonic()
    statuses: list[int] = []
    while time.monotonic() - started < 5:
        reply = await ask.verify("caddy", URL, cookie=cookie)
        statuses.append(reply.status)
        if reply.status != 200:
            break
        assert bearer(reply) == token
        await asyncio.sleep(0.05)
    found_after = time.monotonic() - started
    assert statuses[-1] == 401, statuses  # an API call is told to sign in again (a browser: 302)
    assert found_after < 0.5 + 1.0, found_after
    # The proof is one cheap authenticated call, not one per check.
    assert len(technitium.requests_to("/api/user/session/get")) <= keepalives + 2
    again, _ = await ask.sign_in("dns.example.com", ALICE)
    assert (await ask.verify("caddy", URL, cookie=again)).status == 200
    print(f"dead token found {found_after:.2f} s after the upstream forgot it (prove_every 0.5 s); "
          f"{len(statuses)} checks")
