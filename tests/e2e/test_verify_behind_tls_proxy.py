"""ISSUE V1: a browser must never get the upstream credential from `/_authproxy/verify*`.

The exact setup of the report: authproxy is the transparent reverse proxy (it serves the UI itself) behind
a REAL nginx that terminates TLS (a self-signed certificate made here) and forwards every path with
`proxy_pass http://127.0.0.1:PORT; proxy_bind 127.0.0.2;`, and authproxy trusts that proxy
(`TRUST_PROXY=true TRUSTED_PROXIES=127.0.0.2/32`). A signed-in browser then asks
`/_authproxy/verify/caddy` through nginx with its own cookie and its own `X-Forwarded-Uri: /` (and the other
verify spellings). Before the fix the answer was `200` with `Authorization: Bearer <the real token>`; in
`AUTH_MODE=none` the same request without any cookie got the service token.

Each forward-auth setup is tried: none configured (verify is not served at all), the separate listener
(`FORWARD_AUTH_PORT`: the public listener answers 404), and the shared secret (`FORWARD_AUTH_SECRET`: the
browser does not know it, so 403, also when it guesses).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.technitium import FakeTechnitium
from tests.support.gateway import Gateway, MakeGateway, gateway_env
from tests.support.proxies import RunningProxy, launch_tls_terminator, wait_ready
from tests.support.technitium import ALICE

pytestmark = pytest.mark.e2e

LOGIN = "/_authproxy/api/auth/login"
COOKIE = "__Host-authproxy"
FA_SECRET = "front-proxy-secret-" + "k" * 40
SETUPS: dict[str, dict[str, str]] = {
    "not set up": {},
    "separate listener": {"FORWARD_AUTH_PORT": "0"},
    "shared secret": {"FORWARD_AUTH_SECRET": FA_SECRET},
}
# The verify spellings, each with the forwarded facts a browser would forge for it.
ASKS: list[tuple[str, dict[str, str]]] = [
    ("/_authproxy/verify/caddy", {"X-Forwarded-Uri": "/"}),
    ("/_authproxy/verify/traefik", {"X-Forwarded-Uri": "/", "X-Forwarded-Method": "GET"}),
    ("/_authproxy/verify/nginx", {"X-Original-URL": "https://127.0.0.1/", "X-Original-Method": "GET"}),
    ("/_authproxy/verify", {"X-Forwarded-Uri": "/"}),
    ("/_authproxy/%76erify/caddy", {"X-Forwarded-Uri": "/"}),
]
Front = Callable[[Mapping[str, str]], Awaitable[tuple[Gateway, RunningProxy]]]


@pytest.fixture
async def front(make_gateway: MakeGateway, tmp_path: Path) -> AsyncIterator[Front]:
    """authproxy (the real app, as `authproxy run` configures it) behind a TLS-terminating nginx."""
    started: list[RunningProxy] = []

    async def start(env: Mapping[str, str]) -> tuple[Gateway, RunningProxy]:
        gw = await make_gateway(env)
        nginx = launch_tls_terminator(tmp_path / f"nginx-{len(started)}", gw.url, bind="127.0.0.2")
        started.append(nginx)
        await wait_ready(nginx)
        return gw, nginx

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     connector=aiohttp.TCPConnector(ssl=False)) as http:
        yield http


async def _ask(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
    from yarl import URL

    async with http.get(URL(url, encoded=True), headers=headers, allow_redirects=False) as resp:
        return resp.status, "\n".join(f"{k}: {v}" for k, v in resp.headers.items()), await resp.read()


def _assert_no_credential(status: int, head: str, body: bytes, secrets: set[str], what: str) -> None:
    assert status in (403, 404), (what, status, head)
    for secret in secrets:
        assert secret not in head and secret.encode() not in body, (what, head)
    assert "authorization:" not in head.lower() and "x-authproxy-token:" not in head.lower(), (what, head)


@pytest.mark.parametrize("setup", SETUPS)
async def test_a_signed_in_browser_behind_the_tls_proxy_gets_no_credential_from_verify(
        front: Front, browser: aiohttp.ClientSession, technitium: FakeTechnitium, setup: str) -> None:
    gw, nginx = await front(gateway_env(technitium.url, TRUSTED_PROXIES="127.0.0.2/32", **SETUPS[setup]))
    async with browser.post(nginx.url + LOGIN, json={"username": ALICE[0], "password": ALICE[1]}) as resp:
        assert resp.status == 200, (await resp.text(), nginx.log_tail())
        cookie = resp.cookies[COOKIE].value
    jar = {"Cookie": f"{COOKIE}={cookie}"}
    # The transparent setup itself works: the UI's API answers through nginx with alice's own token.
    async with browser.post(nginx.url + "/api/user/session/get", headers=jar) as resp:
        assert resp.status == 200 and (await resp.json())["username"] == "alice"
    tokens = {t for t, s in technitium.sessions.items() if s.username == "alice"}
    assert tokens

    guesses: list[dict[str, str]] = [{}]
    if setup == "shared secret":
        guesses += [{"X-Authproxy-Secret": "guess"}, {"X-Authproxy-Secret": FA_SECRET[:-1]}]
    for path, forged in ASKS:
        for guess in guesses:
            status, head, body = await _ask(browser, nginx.url + path, {**jar, **forged, **guess})
            _assert_no_credential(status, head, body, tokens, f"{setup}: {path} {guess}")
            assert FA_SECRET not in head and FA_SECRET.encode() not in body

    # Forward auth itself still works for the proxy where it is set up (from the trusted 127.0.0.2).
    if setup != "not set up":
        base, proof = ((gw.forward_auth_url, {}) if setup == "separate listener"
                       else (gw.url, {"X-Authproxy-Secret": FA_SECRET}))
        check = {**jar, **proof, "X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "127.0.0.1", "X-Forwarded-Uri": "/"}
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as proxy,
            proxy.get(base + "/_authproxy/verify/caddy", headers=check) as resp,
        ):
            assert resp.status == 200, await resp.text()
            assert resp.headers["Authorization"].removeprefix("Bearer ") in tokens


@pytest.mark.parametrize("setup", SETUPS)
async def test_auth_mode_none_hands_no_service_token_to_a_browser(
        front: Front, browser: aiohttp.ClientSession, technitium: FakeTechnitium, setup: str) -> None:
    service = technitium.create_session("alice", type="ApiToken", token_name="authproxy")
    _, nginx = await front(gateway_env(technitium.url, AUTH_MODE="none", UPSTREAM_SERVICE_TOKEN=service,
                                       TRUSTED_PROXIES="127.0.0.2/32", **SETUPS[setup]))
    # The transparent setup works without any sign-in (the service credential is injected upstream).
    async with browser.post(nginx.url + "/api/zones/list") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok", nginx.log_tail()
    for path, forged in ASKS:
        status, head, body = await _ask(browser, nginx.url + path, forged)
        _assert_no_credential(status, head, body, {service}, f"{setup}: {path}")
