"""Login throttling: per user and per client IP, shared through the store (a real Redis for replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from authproxy.login.regulation import client_network
from tests.fakes.technitium import FakeTechnitium
from tests.integration.conftest import BROWSER, LOGIN, Audit
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env

WINDOW = 15 * 60


def from_ip(ip: str) -> dict[str, str]:
    """What a trusted TLS proxy in front adds for a client at `ip`."""
    return {"X-Forwarded-For": ip}


async def attempt(
    client: GatewayClient, user: str, password: str, ip: str = "198.51.100.7"
) -> tuple[int, dict[str, str], dict[str, object]]:
    resp = await client.request("POST", LOGIN, json={"username": user, "password": password},
                                headers=from_ip(ip))
    return resp.status, dict(resp.headers), await resp.json()


async def test_five_failures_then_429_with_retry_after(client: GatewayClient, technitium: FakeTechnitium,
                                                       audit: Audit) -> None:
    for _ in range(5):
        status, _, body = await attempt(client, "alice", "wrong")
        assert status == 401 and body["error"] == "invalid_credentials"
    upstream_calls = len(technitium.requests_to("/api/user/login"))
    status, headers, body = await attempt(client, "alice", "alice-pass")  # even the right password
    assert status == 429 and body["error"] == "too_many_attempts"
    assert 0 < int(headers["Retry-After"]) <= WINDOW
    # Refused before the upstream was asked: its own per-network ban is never reached through us.
    assert len(technitium.requests_to("/api/user/login")) == upstream_calls
    assert [x["outcome"] for x in audit.lines("login")][-1] == "throttled"
    # Per user: another address does not help alice ...
    status, _, _ = await attempt(client, "alice", "alice-pass", ip="203.0.113.50")
    assert status == 429
    # ... and the HTML form says the same with the page.
    form = await client.request("POST", LOGIN, data={"username": "alice", "password": "alice-pass"},
                                headers={**BROWSER, **from_ip("203.0.113.51")})
    assert form.status == 429 and "Retry-After" in form.headers
    assert "Too many failed sign-ins" in await form.text()


async def test_per_ip_throttle_across_usernames(client: GatewayClient, technitium: FakeTechnitium) -> None:
    for i in range(5):
        status, _, _ = await attempt(client, f"user{i}", "wrong", ip="198.51.100.9")
        assert status == 401
    status, headers, _ = await attempt(client, "alice", "alice-pass", ip="198.51.100.9")
    assert status == 429 and int(headers["Retry-After"]) > 0
    # Another client address is not affected.
    status, _, _ = await attempt(client, "alice", "alice-pass", ip="198.51.100.10")
    assert status == 200


async def test_per_ip_throttle_counts_an_ipv6_client_by_its_64(client: GatewayClient,
                                                                technitium: FakeTechnitium) -> None:
    # One subscriber holds a whole /64 and may pick any address in it for each attempt.
    for i in range(5):
        status, _, _ = await attempt(client, f"user{i}", "wrong", ip=f"2001:db8:aa:bb::{i + 1:x}")
        assert status == 401
    asked = len(technitium.requests_to("/api/user/login"))
    status, _, body = await attempt(client, "alice", "alice-pass", ip="2001:db8:aa:bb:ffff::1")
    # authproxy's own limit, before the upstream is asked (not the upstream's network ban, reached later).
    assert (status, body["error"]) == (429, "too_many_attempts")
    assert len(technitium.requests_to("/api/user/login")) == asked
    status, _, _ = await attempt(client, "alice", "alice-pass", ip="2001:db8:aa:bc::1")   # the next /64
    assert status == 200


async def test_a_burst_of_parallel_guesses_gets_no_more_than_the_budget(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    # Each attempt is counted before the upstream is asked: checking first and counting after the
    # answer let every guess of a burst through, since none had failed yet when each was checked.
    technitium.login_failure_sleep = 0.2   # the upstream answers failures slowly, as Technitium does
    asked = len(technitium.requests_to("/api/user/login"))
    results = await asyncio.gather(*(attempt(client, "alice", f"guess{i}") for i in range(20)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [401] * 5 + [429] * 15
    assert len(technitium.requests_to("/api/user/login")) - asked == 5
    # Across usernames, one address gets the per-address budget and no more.
    results = await asyncio.gather(
        *(attempt(client, f"user{i}", "wrong", ip="198.51.100.40") for i in range(20))
    )
    assert sorted(status for status, _, _ in results) == [401] * 5 + [429] * 15


async def test_sign_ins_that_are_not_failures_give_their_count_back(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    # Successes from one address (an office behind one NAT) and TOTP prompts never use up the budget.
    technitium.add_user("carol", "carol-pass", totp_secret="JBSWY3DPEHPK3PXP")
    for i in range(8):
        technitium.add_user(f"staff{i}", "staff-pass")
        assert (await attempt(client, f"staff{i}", "staff-pass", ip="198.51.100.41"))[0] == 200
    for _ in range(8):
        status, _, body = await attempt(client, "carol", "carol-pass", ip="198.51.100.41")
        assert (status, body["error"]) == (401, "totp_required")
    for _ in range(4):
        assert (await attempt(client, "carol", "wrong", ip="198.51.100.41"))[0] == 401
    status, _, body = await attempt(client, "carol", "carol-pass", ip="198.51.100.41")
    assert (status, body["error"]) == (401, "totp_required")   # the fifth attempt still reaches the upstream
    assert (await attempt(client, "carol", "wrong", ip="198.51.100.41"))[0] == 401
    assert (await attempt(client, "carol", "carol-pass", ip="198.51.100.41"))[0] == 429


def test_client_network_is_the_ipv4_address_or_the_ipv6_64() -> None:
    assert client_network("203.0.113.7") == "203.0.113.7"
    assert client_network("::ffff:203.0.113.7") == "203.0.113.7"
    assert (
        client_network("2001:db8:aa:bb:1:2:3:4")
        == client_network("2001:db8:aa:bb::9")
        == "2001:db8:aa:bb::/64"
    )
    assert client_network("fe80::1%eth0") == "fe80::/64"
    assert client_network("not-an-ip") == "not-an-ip"


async def test_success_resets_the_user_counter(client: GatewayClient) -> None:
    for _ in range(4):
        assert (await attempt(client, "alice", "wrong"))[0] == 401
    assert (await attempt(client, "alice", "alice-pass"))[0] == 200
    for _ in range(4):
        assert (await attempt(client, "alice", "wrong", ip="198.51.100.77"))[0] == 401
    assert (await attempt(client, "alice", "alice-pass", ip="198.51.100.78"))[0] == 200


async def test_admin_admin_probe_is_not_counted(client: GatewayClient) -> None:
    # Technitium's UI tries admin/admin by itself; that must never lock anyone out.
    for _ in range(8):
        status, _, body = await attempt(client, "admin", "admin")
        assert status == 401 and body["error"] == "invalid_credentials"
    assert (await attempt(client, "alice", "alice-pass"))[0] == 200


async def test_throttle_is_shared_between_replicas_through_redis(
        make_gateway: MakeGateway, technitium: FakeTechnitium, redis_url: str,
        client_for: Callable[[Gateway], GatewayClient]) -> None:
    env = gateway_env(technitium.url, REDIS_URL=redis_url)
    one, two = client_for(await make_gateway(env)), client_for(await make_gateway(env))
    for c in (one, two, one, two, one):
        assert (await attempt(c, "alice", "wrong"))[0] == 401
    status, headers, _ = await attempt(two, "alice", "alice-pass", ip="203.0.113.80")
    assert status == 429 and int(headers["Retry-After"]) > 0
    status, _, _ = await attempt(one, "alice", "alice-pass", ip="203.0.113.81")
    assert status == 429


async def test_throttle_limits_are_configurable(make_gateway: MakeGateway, technitium: FakeTechnitium,
                                                client_for: Callable[[Gateway], GatewayClient]) -> None:
    c = client_for(await make_gateway(gateway_env(technitium.url, LOGIN_MAX_FAILURES="2",
                                                  LOGIN_FAILURE_WINDOW="1m")))
    assert (await attempt(c, "alice", "wrong"))[0] == 401
    assert (await attempt(c, "alice", "wrong"))[0] == 401
    status, headers, _ = await attempt(c, "alice", "alice-pass")
    assert status == 429 and 0 < int(headers["Retry-After"]) <= 60


async def test_a_username_containing_block_is_throttled_like_any_other(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    # Technitium's failure message repeats the username; "block" in it is not the upstream's ban.
    technitium.add_user("blockbuster", "right-pass")
    for _ in range(5):
        status, _, body = await attempt(client, "blockbuster", "wrong")
        assert (status, body["error"]) == (401, "invalid_credentials")
    status, _, body = await attempt(client, "blockbuster", "right-pass", ip="198.51.100.99")
    assert (status, body["error"]) == (429, "too_many_attempts")


async def test_the_upstreams_own_ban_is_reported_with_its_duration(
        client: GatewayClient, technitium: FakeTechnitium) -> None:
    technitium.blocked_networks["198.51.100.66/32"] = technitium.now() + 120
    status, headers, body = await attempt(client, "alice", "alice-pass", ip="198.51.100.66")
    assert (status, body["error"]) == (429, "upstream_blocked")
    assert 0 < int(headers["Retry-After"]) <= 300
    assert "alice-pass" not in str(body)
