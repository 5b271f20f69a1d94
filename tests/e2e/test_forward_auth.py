"""authproxy's forward-auth endpoint behind REAL Caddy, nginx and Traefik, started from the shipped configs.

The stack, started once for the module (each binary once):

    client --https--> Caddy / nginx / Traefik --> echo upstream (the protected app: shows what it got)
                            |  forward_auth / auth_request / ForwardAuth
                            +--> authproxy's forward-auth listener (FORWARD_AUTH_PORT)
                            |    authproxy (real app, TRUST_PROXY=true) --> fake Technitium v15 (logins)
                            +--> authproxy's public listener: the portal (/_authproxy/*)

The proxies serve HTTPS (throw-away certificates), as in a real deployment: the session cookie is Secure
and sign-in refuses plain HTTP. The decision uses the site matched by host (the one Technitium site), so
the credential injected into the echo upstream is the signed-in user's real Technitium token. Plus the
Technitium v14 recipes (Caddy, nginx) against a v14 fake, and one proxy per kind pointing at a dead
authproxy (fails closed).

ISSUE V1, a browser never gets a credential from /_authproxy/verify*: through each shipped setup as is,
through each with its own /verify exclusion removed (as a hand-written config might forget it: authproxy's
public listener must refuse by itself), and through the FORWARD_AUTH_SECRET alternative of the Caddy and
nginx configs; forward auth itself works in all of them.

The main gateway runs in hybrid mode with one service API key: a service client passes each proxy with
its X-API-Key, and the app never sees that key (nor a client's X-Authproxy-Secret / -Token).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from yarl import URL

from authproxy.app import create_app
from authproxy.config.loader import ensure_session_secrets, load_config
from authproxy.login.service import new_key
from authproxy.web import forward_auth
from tests.fakes.echo import EchoUpstream, ReceivedRequest
from tests.fakes.technitium import FakeTechnitium
from tests.support.gateway import gateway_env
from tests.support.procs import free_port
from tests.support.proxies import Check, ProxyPool, RunningProxy
from tests.support.technitium import ALICE

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

KINDS = ["caddy", "nginx", "traefik"]
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
API = {"Accept": "application/json"}
BOB = ("bob", "bob-pass")  # a real Technitium account, but not in ALLOWED_USERS
LOGIN = "/_authproxy/api/auth/login"
COOKIE = "__Host-authproxy"
FA_SECRET = "e2e-forward-auth-secret-" + "w" * 40
# The main gateway runs in hybrid mode: people as in session mode, plus one service client by API key,
# served with a least-privileged background token (DnsClient: View only).
SERVICE_KEY, SERVICE_ENTRY = new_key("e2e-job")
BACKGROUND_USER = "e2e-background"
FORGED = {
    "Authorization": "Basic bWFsbG9yeTpldmls",
    "Remote-User": "mallory",
    "Remote-Groups": "admins",
    "Remote-Name": "Mallory",
    "Remote-Email": "mallory@evil.example",
    "X-Authproxy-Token": "forged-token",
    "X-Forwarded-Uri": "/spoofed",
    "X-Forwarded-Method": "DELETE",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "http",
    "X-Forwarded-Prefix": "/evil",
    "X-Forwarded-For": "203.0.113.9",
    "X-Original-URL": "https://evil.example/spoofed",
    "X-Original-Method": "DELETE",
    "X-Real-IP": "203.0.113.9",
}
FORGED_VALUES = {
    "mallory",
    "Mallory",
    "bWFsbG9yeTpldmls",
    "forged-token",
    "/spoofed",
    "DELETE",
    "evil.example",
    "/evil",
    "203.0.113.9",
}


@dataclass
class Gateway:
    url: str
    runner: web.AppRunner

    @property
    def check(self) -> Check:
        """Where the proxies send their checks: the forward-auth listener."""
        listener = self.runner.app[forward_auth.LISTENER]
        return Check(url=f"http://127.0.0.1:{listener.addresses[0][1]}")


@dataclass
class Stack:
    technitium: FakeTechnitium
    technitium_v14: FakeTechnitium
    background_token: str
    echo: EchoUpstream
    gateway: Gateway
    gateway_v14: Gateway
    proxies: dict[str, RunningProxy]
    v14: dict[str, RunningProxy]
    dead: dict[str, RunningProxy]
    published: dict[str, RunningProxy]   # the shipped configs without their own /verify exclusion
    secret: dict[str, RunningProxy]      # the FORWARD_AUTH_SECRET alternative (Caddy, nginx), also published
    http: aiohttp.ClientSession


async def _start_gateway(env: dict[str, str], data_dir: Path) -> Gateway:
    """The real app, configured exactly as `authproxy run` would be from this environment."""
    config, _ = ensure_session_secrets(load_config({**env, "AUTHPROXY_DATA_DIR": str(data_dir)}))
    runner = web.AppRunner(create_app(config), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return Gateway(url=f"http://127.0.0.1:{runner.addresses[0][1]}", runner=runner)


def _fake(api_version: int) -> FakeTechnitium:
    fake = FakeTechnitium(api_version=api_version)
    fake.add_user(*ALICE, display_name="Alice Example")
    fake.add_user(*BOB, display_name="Bob Example")
    return fake


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    base = tmp_path_factory.mktemp("forward-auth")
    pool = ProxyPool(base / "proxies")
    technitium, technitium_v14, echo = _fake(15), _fake(14), EchoUpstream()
    gateways: list[Gateway] = []
    try:
        await asyncio.gather(technitium.start(), technitium_v14.start(), echo.start())
        technitium.add_user(BACKGROUND_USER, "bg-pass", permissions={"DnsClient": 1})
        background = technitium.create_session(BACKGROUND_USER, type="ApiToken", token_name="e2e")
        gateway = await _start_gateway(
            gateway_env(technitium.url, ALLOWED_USERS="alice", FORWARD_AUTH_PORT="0", AUTH_MODE="hybrid",
                        TECHNITIUM_BACKGROUND_TOKEN=background, SERVICE_API_KEYS=SERVICE_ENTRY),
            base / "gw",
        )
        gateways.append(gateway)
        gateway_v14 = await _start_gateway(
            gateway_env(technitium_v14.url, FORWARD_AUTH_PORT="0"), base / "gw14"
        )
        gateways.append(gateway_v14)
        gateway_secret = await _start_gateway(gateway_env(technitium.url, FORWARD_AUTH_SECRET=FA_SECRET),
                                              base / "gw-secret")
        gateways.append(gateway_secret)
        dead_url = f"http://127.0.0.1:{free_port()}"
        published = Check(url=gateway.check.url, published=True)
        secret = Check(secret=FA_SECRET, published=True)
        started = await asyncio.gather(
            *(pool.start(kind, gateway.url, echo.url, tls=True, check=gateway.check) for kind in KINDS),
            *(
                pool.start(kind, gateway_v14.url, echo.url, recipe="technitium-v14", check=gateway_v14.check)
                for kind in ("caddy", "nginx")
            ),
            *(pool.start(kind, dead_url, echo.url) for kind in KINDS),
            *(pool.start(kind, gateway.url, echo.url, tls=True, check=published) for kind in KINDS),
            *(
                pool.start(kind, gateway_secret.url, echo.url, tls=True, check=secret)
                for kind in ("caddy", "nginx")
            ),
        )
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                         connector=aiohttp.TCPConnector(ssl=False)) as http:
            yield Stack(technitium=technitium, technitium_v14=technitium_v14, background_token=background,
                        echo=echo, gateway=gateway,
                        gateway_v14=gateway_v14, proxies=dict(zip(KINDS, started[:3], strict=True)),
                        v14=dict(zip(("caddy", "nginx"), started[3:5], strict=True)),
                        dead=dict(zip(KINDS, started[5:8], strict=True)),
                        published=dict(zip(KINDS, started[8:11], strict=True)),
                        secret=dict(zip(("caddy", "nginx"), started[11:], strict=True)), http=http)
    finally:
        pool.stop_all()
        for gw in gateways:
            await gw.runner.cleanup()
        await asyncio.gather(technitium.close(), technitium_v14.close(), echo.close())


# ---- helpers ---------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    cookie: str | None

    def json(self) -> Any:
        return json.loads(self.body)


async def _send(stack: Stack, method: str, url: str, *, headers: dict[str, str] | None = None,
                cookie: str | None = None, **kw: Any) -> Answer:
    h = dict(headers or {})
    if cookie:
        h["Cookie"] = f"{COOKIE}={cookie}"
    async with stack.http.request(
        method, URL(url, encoded=True), headers=h, allow_redirects=False, **kw
    ) as resp:
        body = await resp.read()
        found = None
        for value in resp.headers.getall("Set-Cookie", ()):
            m = re.match(rf"\s*{re.escape(COOKIE)}=([^;]*)", value)
            if m:
                found = m.group(1)
        return Answer(resp.status, dict(resp.headers), body, found)


async def _sign_in(stack: Stack, base: str, user: tuple[str, str], rd: str | None = None) -> Answer:
    body: dict[str, str] = {"username": user[0], "password": user[1]}
    if rd is not None:
        body["rd"] = rd
    answer = await _send(stack, "POST", base + LOGIN, headers=API, json=body)
    assert answer.status == 200, answer.body
    assert answer.cookie, answer.headers
    return answer


def _seen(stack: Stack, path: str) -> list[ReceivedRequest]:
    return [r for r in stack.echo.requests if r.path == path]


def _tokens_of(fake: FakeTechnitium, username: str) -> set[str]:
    return {t for t, s in fake.sessions.items() if s.username == username}


def _log(stack: Stack, kind: str) -> str:
    return stack.proxies[kind].log_tail()


# ---- the browser flow, end to end --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_browser_signs_in_and_lands_on_the_original_url(stack: Stack, kind: str) -> None:
    proxy = stack.proxies[kind]
    target = f"/{kind}/app/page?x=1&x=2&q=a%20b&enc=%2Fy"
    original = proxy.url + target

    # 1. Not signed in: the proxy sends the browser to the portal's login page with the whole URL as rd.
    first = await _send(stack, "GET", original, headers=BROWSER)
    assert first.status == 302, (first.status, first.body, _log(stack, kind))
    login_page = f"{proxy.url}/_authproxy/login?rd={quote(original, safe='')}"
    assert first.headers["Location"] == login_page
    assert _seen(stack, f"/{kind}/app/page") == []

    # 2. The login page is served through the proxy on the same host and carries rd along.
    page = await _send(stack, "GET", login_page, headers=BROWSER)
    assert page.status == 200, _log(stack, kind)
    assert b'name="rd"' in page.body and b"x=1&amp;x=2" in page.body

    # 3. Sign in (the JSON login the page's script uses) with that rd, through the proxy.
    signed_in = await _sign_in(stack, proxy.url, ALICE, rd=original)
    assert signed_in.json()["redirect"] == original
    assert signed_in.json()["user"] == "alice"

    # 4. Follow the redirect with the cookie: the app gets exactly the original request, plus the
    #    signed-in user's own Technitium token and identity.
    landed = await _send(stack, "GET", signed_in.json()["redirect"], headers=BROWSER, cookie=signed_in.cookie)
    assert landed.status == 200, (landed.body, _log(stack, kind))
    seen = _seen(stack, f"/{kind}/app/page")[-1]
    assert seen.raw_path == target
    token = seen.header("Authorization")
    assert token is not None and token.startswith("Bearer ")
    assert token.removeprefix("Bearer ") in _tokens_of(stack.technitium, "alice")
    assert seen.header("Remote-User") == "alice"
    assert seen.header("Remote-Name") == "Alice Example"
    assert seen.header_values("Cookie") == []  # neither the authproxy ticket nor anything else

    # The form login (no script) honours rd the same way: 303 to the original URL.
    form = await _send(stack, "POST", proxy.url + LOGIN, headers={**BROWSER, "Origin": proxy.url},
                       data={"username": ALICE[0], "password": ALICE[1], "rd": original})
    assert form.status == 303 and form.headers["Location"] == original and form.cookie


@pytest.mark.parametrize("kind", KINDS)
async def test_login_refuses_a_return_url_on_another_host(stack: Stack, kind: str) -> None:
    proxy = stack.proxies[kind]
    for rd in ("https://evil.example/", "//evil.example/x", "https://127.0.0.1.evil.example/",
               proxy.url.replace("https://", "http://") + "/x", "https://127.0.0.1:1/x"):
        answer = await _sign_in(stack, proxy.url, ALICE, rd=rd)
        assert answer.json()["redirect"] == "/", rd


@pytest.mark.parametrize("kind", KINDS)
async def test_browser_post_without_session(stack: Stack, kind: str) -> None:
    proxy = stack.proxies[kind]
    answer = await _send(stack, "POST", f"{proxy.url}/{kind}/form?a=1", headers=BROWSER, data=b"field=1")
    # Caddy and Traefik pass authproxy's 303 on; nginx's error_page can only say 302 (or 401/403).
    assert answer.status == (302 if kind == "nginx" else 303), (answer.status, _log(stack, kind))
    assert answer.headers["Location"] == (
        f"{proxy.url}/_authproxy/login?rd={quote(f'{proxy.url}/{kind}/form?a=1', safe='')}")
    assert _seen(stack, f"/{kind}/form") == []


@pytest.mark.parametrize("kind", KINDS)
async def test_api_clients_without_session_get_401_json(stack: Stack, kind: str) -> None:
    proxy = stack.proxies[kind]
    for headers in (
        API,
        {**BROWSER, "X-Requested-With": "XMLHttpRequest"},
        {**BROWSER, "Sec-Fetch-Mode": "cors"},
        {"Cookie": f"{COOKIE}=v1.forged.ticket"},
    ):
        answer = await _send(stack, "GET", f"{proxy.url}/{kind}/api/items?a=1", headers=headers)
        assert answer.status == 401, (headers, answer.status, _log(stack, kind))
        assert "Location" not in answer.headers
        assert answer.json()["error"] == "unauthenticated"
    assert _seen(stack, f"/{kind}/api/items") == []


@pytest.mark.parametrize("kind", KINDS)
async def test_signed_in_but_not_allowed_is_403_not_a_redirect(stack: Stack, kind: str) -> None:
    proxy = stack.proxies[kind]
    bob = await _sign_in(stack, proxy.url, BOB, rd=f"{proxy.url}/{kind}/private")
    for headers in (BROWSER, API):
        answer = await _send(stack, "GET", f"{proxy.url}/{kind}/private", headers=headers, cookie=bob.cookie)
        assert answer.status == 403, (answer.status, _log(stack, kind))
        assert "Location" not in answer.headers
    assert _seen(stack, f"/{kind}/private") == []


@pytest.mark.parametrize("kind", KINDS)
async def test_client_forged_headers_never_reach_the_upstream(stack: Stack, kind: str) -> None:
    proxy = stack.proxies[kind]
    alice = await _sign_in(stack, proxy.url, ALICE)
    answer = await _send(stack, "GET", f"{proxy.url}/{kind}/forged?k=v", headers={**API, **FORGED},
                         cookie=alice.cookie)
    assert answer.status == 200, (answer.status, answer.body, _log(stack, kind))
    seen = _seen(stack, f"/{kind}/forged")[-1]
    assert seen.raw_path == f"/{kind}/forged?k=v"
    assert len(seen.header_values("Authorization")) == 1
    assert seen.header("Authorization").removeprefix("Bearer ") in _tokens_of(stack.technitium, "alice")  # type: ignore[union-attr]
    assert seen.header_values("Remote-User") == ["alice"]
    for name in ("Remote-Groups", "Remote-Email", "X-Authproxy-Token", "X-Original-URL", "X-Original-Method",
                 "X-Forwarded-Uri", "X-Forwarded-Method", "X-Forwarded-Prefix"):
        assert seen.header(name) is None, (name, seen.headers)
    leaked = [(k, v) for k, v in seen.headers if any(bad in v for bad in FORGED_VALUES)]
    assert leaked == [], leaked
    assert seen.header("X-Forwarded-Proto") == "https"
    assert seen.header("X-Forwarded-Host") == proxy.url.removeprefix("https://")


@pytest.mark.parametrize("kind", KINDS)
async def test_the_verify_endpoint_is_not_published(stack: Stack, kind: str) -> None:
    """Its 200 answer carries the upstream token: only the proxy itself may ask."""
    proxy = stack.proxies[kind]
    alice = await _sign_in(stack, proxy.url, ALICE)
    for path in (f"/_authproxy/verify/{kind}", "/_authproxy/verify", "/_authproxy/%76erify/caddy",
                 "/_authproxy//verify/nginx"):
        answer = await _send(stack, "GET", proxy.url + path, cookie=alice.cookie,
                             headers={"X-Forwarded-Uri": "/", "X-Original-URL": f"{proxy.url}/"})
        assert "Authorization" not in answer.headers and "X-Authproxy-Token" not in answer.headers, (
            path,
            answer,
        )
        if answer.status == 200:
            # Traefik: the path is not the portal's, so it goes to the app router like any other path
            # (checked, then to the protected app, which this echo upstream is).
            assert kind == "traefik" and json.loads(answer.body)["path"].startswith("/_authproxy/"), path
        else:
            assert answer.status == 404, (path, answer.status)
            assert not any(t.encode() in answer.body for t in _tokens_of(stack.technitium, "alice")), path


SETUPS = [*(("shipped", kind) for kind in KINDS), *(("published", kind) for kind in KINDS),
          ("secret", "caddy"), ("secret", "nginx")]


def _setup(stack: Stack, setup: str) -> dict[str, RunningProxy]:
    return {"shipped": stack.proxies, "published": stack.published, "secret": stack.secret}[setup]


@pytest.mark.parametrize(("setup", "kind"), SETUPS)
async def test_a_browser_never_gets_a_credential_from_verify(stack: Stack, setup: str, kind: str) -> None:
    """ISSUE V1 through real proxies: whatever path of the site a browser asks, with its own cookie and its
    own forwarded facts, the check's credential never comes back to it; and forward auth works there."""
    proxy = _setup(stack, setup)[kind]
    alice = await _sign_in(stack, proxy.url, ALICE)
    tokens = _tokens_of(stack.technitium, "alice")
    page = f"/{kind}/{setup}/page"
    through = await _send(stack, "GET", proxy.url + page, headers=API, cookie=alice.cookie)
    assert through.status == 200, (through.status, through.body, proxy.log_tail())
    assert _seen(stack, page)[-1].header("Authorization").removeprefix("Bearer ") in tokens  # type: ignore[union-attr]

    forged = {"X-Forwarded-Uri": "/", "X-Forwarded-Method": "GET", "X-Forwarded-Host": "127.0.0.1",
              "X-Forwarded-Proto": "https", "X-Original-URL": f"{proxy.url}/", "X-Original-Method": "GET"}
    for path in ("/_authproxy/verify/caddy", "/_authproxy/verify/traefik", "/_authproxy/verify/nginx",
                 "/_authproxy/verify", "/_authproxy/%76erify/caddy", "/_authproxy//verify/nginx"):
        for guess in ({}, {"X-Authproxy-Secret": "guess"}):
            answer = await _send(
                stack, "GET", proxy.url + path, cookie=alice.cookie, headers={**forged, **guess}
            )
            what = (setup, kind, path, guess, answer.status)
            for name in ("Authorization", "X-Authproxy-Token", "Remote-User", "Cookie"):
                assert name not in answer.headers, what
            if answer.status == 200:
                # Shipped Traefik: not the portal's path, so the app router checks it; the echo app answers.
                assert (setup, kind) == ("shipped", "traefik"), what
                assert json.loads(answer.body)["path"].startswith("/_authproxy/"), what
                continue
            assert answer.status in (403, 404), what
            assert not any(t.encode() in answer.body for t in tokens), what
            assert FA_SECRET.encode() not in answer.body and b"X-Authproxy-Secret" not in answer.body, what
            if setup == "secret" and b'"error"' in answer.body:
                assert json.loads(answer.body)["error"] in ("forward_auth_refused", "not_found"), what


@pytest.mark.parametrize("kind", KINDS)
async def test_websocket_after_sign_in(stack: Stack, kind: str) -> None:
    proxy = stack.proxies[kind]
    ws_url = proxy.url.replace("https://", "wss://", 1) + "/ws"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await stack.http.ws_connect(ws_url)
    assert refused.value.status == 401

    alice = await _sign_in(stack, proxy.url, ALICE)
    before = len(_seen(stack, "/ws"))
    async with stack.http.ws_connect(ws_url, headers={**FORGED, "Cookie": f"{COOKIE}={alice.cookie}"}) as ws:
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "hello"
        await ws.send_bytes(b"\x00\x01")
        assert await ws.receive_bytes(timeout=5) == b"\x00\x01"
    upgrades = _seen(stack, "/ws")[before:]
    assert len(upgrades) == 1 and upgrades[0].websocket
    assert upgrades[0].header("Authorization").removeprefix("Bearer ") in _tokens_of(  # type: ignore[union-attr]
        stack.technitium, "alice")
    assert upgrades[0].header("Remote-User") == "alice"
    assert upgrades[0].header("X-Authproxy-Token") is None


@pytest.mark.parametrize("kind", KINDS)
async def test_fails_closed_when_authproxy_is_down(stack: Stack, kind: str) -> None:
    proxy = stack.dead[kind]
    for headers in (BROWSER, {**API, **FORGED}):
        answer = await _send(stack, "GET", f"{proxy.url}/{kind}/down", headers=headers)
        assert 500 <= answer.status < 600, (answer.status, proxy.log_tail())
    assert _seen(stack, f"/{kind}/down") == []


# ---- Technitium v14: the token goes into the query -----------------------------------------------------


@pytest.mark.parametrize("kind", ["caddy", "nginx"])
async def test_v14_recipe_puts_the_real_token_in_the_query(stack: Stack, kind: str) -> None:
    proxy = stack.v14[kind]
    # Sign in at authproxy directly, as a TLS-terminating proxy would forward it.
    alice = await _send(stack, "POST", stack.gateway_v14.url + LOGIN,
                        headers={**API, "X-Forwarded-Proto": "https"},
                        json={"username": ALICE[0], "password": ALICE[1]})
    assert alice.status == 200 and alice.cookie, alice.body
    tokens = _tokens_of(stack.technitium_v14, "alice")

    target = f"/api/{kind}/zones/list?node=a%20b&token=forged-token&x=1"
    answer = await _send(stack, "GET", proxy.url + target, cookie=alice.cookie,
                         headers={"X-Authproxy-Token": "forged-token", "X-API-Key": "apk_forged", **API})
    assert answer.status == 200, (answer.status, answer.body, proxy.log_tail())
    seen = _seen(stack, f"/api/{kind}/zones/list")[-1]
    assert seen.header("X-API-Key") is None
    query = parse_qs(seen.query_string)
    assert query["node"] == ["a b"] and query["x"] == ["1"]
    assert len(query["token"]) == 1 and query["token"][0] in tokens, seen.query_string
    assert seen.header("X-Authproxy-Token") is None
    assert seen.header("Authorization") is None

    # Without a session: no token, no upstream request.
    answer = await _send(stack, "GET", proxy.url + f"/api/{kind}/nosession?token=x", headers=API)
    assert answer.status == 401
    assert _seen(stack, f"/api/{kind}/nosession") == []


# ---- the generic recipes: a client's `token` parameter never reaches the app ----------------------------


@pytest.mark.parametrize("kind", ["caddy", "nginx"])
async def test_a_clients_token_parameter_never_reaches_the_app(stack: Stack, kind: str) -> None:
    """Technitium v15 still reads `?token=` (the Bearer header wins while one is injected): nothing the
    client sends may name the credential, so the shipped recipes drop it (Traefik cannot: README)."""
    proxy = stack.proxies[kind]
    alice = await _sign_in(stack, proxy.url, ALICE)
    path = f"/{kind}/api/query-check"
    for query, kept in (("token=forged&a=1", "a=1"), ("a=1&token=forged&b=%2F", {"a=1", "b=%2F"}),
                        ("%74oken=forged", ""), ("token", "")):
        answer = await _send(stack, "GET", f"{proxy.url}{path}?{query}", headers=API, cookie=alice.cookie)
        assert answer.status == 200, (query, answer.status, answer.body, _log(stack, kind))
        seen = _seen(stack, path)[-1]
        raw_query = seen.raw_path.partition("?")[2]
        assert "forged" not in raw_query and "oken" not in raw_query, (query, seen.raw_path)
        got = {item for item in raw_query.split("&") if item}
        assert got == ({kept} if isinstance(kept, str) and kept else kept or set()), (query, seen.raw_path)
        assert seen.header("Authorization").removeprefix("Bearer ") in _tokens_of(  # type: ignore[union-attr]
            stack.technitium, "alice")
    # Other spellings (which ASP.NET reads as `token` too) are dropped as well, or the request refused.
    spelled = re.compile(r"(?i)(?:^|&)(?:t|%74)(?:o|%6f)(?:k|%6b)(?:e|%65)(?:n|%6e)(?:=|&|$)")
    for query in ("TOKEN=forged", "a=1&t%6Fken=forged", "%54oKeN=forged&b=1", "token=x&Token=y"):
        before = len(_seen(stack, path))
        answer = await _send(stack, "GET", f"{proxy.url}{path}?{query}", headers=API, cookie=alice.cookie)
        if answer.status == 400:
            assert len(_seen(stack, path)) == before, query
        else:
            assert answer.status == 200, (query, answer.status, _log(stack, kind))
            assert not spelled.search(_seen(stack, path)[-1].raw_path.partition("?")[2]), query
    two = await _send(stack, "GET", f"{proxy.url}{path}?token=x&Token=y", headers=API, cookie=alice.cookie)
    assert two.status == 400
    # Without a token parameter the request goes on exactly as sent (path and query bytes untouched).
    raw = f"/{kind}/api/plain%2Fpath//x?b=2&a=%2f&flag"
    answer = await _send(stack, "GET", proxy.url + raw, headers=API, cookie=alice.cookie)
    assert answer.status == 200 and _seen(stack, f"/{kind}/api/plain%2Fpath//x")[-1].raw_path == raw


# ---- authproxy's own secrets never reach the app ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_the_app_never_sees_a_client_sent_api_key_or_authproxy_header(stack: Stack, kind: str) -> None:
    """A hybrid service client's X-API-Key is authproxy's: the check reads it, then each shipped proxy
    removes it (and X-Authproxy-Secret / -Token) before the app, for a service client and for a person."""
    proxy = stack.proxies[kind]
    smuggled = {"X-Authproxy-Secret": "client-sent-secret", "X-Authproxy-Token": "client-sent-token"}
    # the service client: its key opens the check, the app gets the background token and never the key
    path = f"/{kind}/api/service-call"
    answer = await _send(stack, "GET", proxy.url + path,
                         headers={**API, **smuggled, "X-API-Key": SERVICE_KEY})
    assert answer.status == 200, (answer.status, answer.body, _log(stack, kind))
    seen = _seen(stack, path)[-1]
    assert seen.header("Authorization") == f"Bearer {stack.background_token}"
    assert seen.header_values("X-API-Key") == [], seen.headers
    assert SERVICE_KEY not in json.dumps(seen.as_json())
    # a wrong key: refused at the check, the app not asked
    wrong = await _send(stack, "GET", f"{proxy.url}/{kind}/api/wrong-key",
                        headers={**API, "X-API-Key": "apk_x"})
    assert wrong.status == 401 and _seen(stack, f"/{kind}/api/wrong-key") == []
    # a person who also sends a key (a signed-in session wins; the key still never reaches the app)
    alice = await _sign_in(stack, proxy.url, ALICE)
    path = f"/{kind}/api/person-call"
    answer = await _send(stack, "GET", proxy.url + path, cookie=alice.cookie,
                         headers={**API, **smuggled, "X-API-Key": "apk_client-chosen-key"})
    assert answer.status == 200, (answer.status, answer.body, _log(stack, kind))
    seen = _seen(stack, path)[-1]
    assert seen.header("Authorization").removeprefix("Bearer ") in _tokens_of(  # type: ignore[union-attr]
        stack.technitium, "alice")
    for name in ("X-API-Key", "X-Authproxy-Secret", "X-Authproxy-Token"):
        assert seen.header_values(name) == [], (name, seen.headers)
    everything = json.dumps(seen.as_json())
    assert "client-chosen" not in everything and "client-sent" not in everything

