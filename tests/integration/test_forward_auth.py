"""The forward-auth endpoint of the real app, asked the way Caddy, nginx and Traefik ask it.

No proxy binaries here (tests/e2e/test_forward_auth.py runs the real ones): requests carry exactly the
headers each proxy sends, from 127.0.0.1 (a trusted proxy by default). Host names come from the
X-Forwarded-Host / X-Original-URL headers, so dns.example.com and nas.example.com need no DNS.

The checks go where a proxy set up as the README says sends them: to the forward-auth listener
(FORWARD_AUTH_PORT), or (the `secret` variant of `one_site`) to the public listener with the
X-Authproxy-Secret header (FORWARD_AUTH_SECRET). The contract is the same either way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from multidict import CIMultiDict

from authproxy.web.forward_auth import forwarded_client
from tests.fakes.technitium import FakeTechnitium
from tests.integration.conftest import Audit
from tests.support.gateway import SECRET, Gateway, MakeGateway, gateway_env
from tests.support.technitium import ALICE

LOGIN = "/_authproxy/api/auth/login"
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
API = {"Accept": "application/json"}
BOB = ("bob", "bob-pass")
FA_SECRET = "forward-auth-secret-" + "f" * 40
VERIFY = "/_authproxy/verify"


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def proxy_headers(kind: str, url: str, method: str = "GET") -> list[tuple[str, str]]:
    """What each proxy puts on its auth request for the client request `method url` (as observed
    with the real binaries: Caddy adds Via, Traefik its X-Forwarded-Port/-Server and X-Real-Ip, nginx
    only what the shipped config sets)."""
    parts = urlsplit(url)
    uri = parts.path + (f"?{parts.query}" if parts.query else "")
    forwarded = [
        ("X-Forwarded-Method", method),
        ("X-Forwarded-Proto", parts.scheme),
        ("X-Forwarded-Host", parts.netloc),
        ("X-Forwarded-Uri", uri),
        ("X-Forwarded-For", "127.0.0.1"),
    ]
    if kind == "caddy":
        return [*forwarded, ("Via", "1.1 Caddy")]
    if kind == "traefik":
        return [*forwarded, ("X-Forwarded-Port", "443"), ("X-Forwarded-Server", "traefik"),
                ("X-Real-Ip", "127.0.0.1")]
    return [("X-Original-Method", method), ("X-Original-URL", url), *forwarded, ("X-Real-IP", "127.0.0.1")]


@dataclass
class Asker:
    """Asks /verify* where the proxy would (`verify_base`, with `proof` headers), everything else at the
    public listener."""

    gw: Gateway
    http: aiohttp.ClientSession
    cookie_name: str
    verify_base: str = ""
    proof: dict[str, str] = field(default_factory=dict)

    async def request(self, method: str, path: str, headers: list[tuple[str, str]] | dict[str, str],
                      **kw: Any) -> Reply:
        h = CIMultiDict(headers.items() if isinstance(headers, dict) else headers)
        base = self.gw.url
        if path.startswith(VERIFY):
            base = self.verify_base or self.gw.forward_auth_url
            for name, value in self.proof.items():
                h.setdefault(name, value)
        async with self.http.request(method, base + path, headers=h, allow_redirects=False, **kw) as resp:
            return Reply(resp.status, CIMultiDict(resp.headers), await resp.read())

    async def verify(self, kind: str | None, url: str, *, cookie: str | None = None, method: str = "GET",
                     extra: dict[str, str] | None = None, proxy_kind: str | None = None,
                     path_suffix: str = "") -> Reply:
        """Ask /verify/<kind> (or /verify for kind=None) as `proxy_kind` (default: kind) would."""
        h = proxy_headers(proxy_kind or kind or "caddy", url, method)
        if cookie:
            h.append(("Cookie", f"other=1; {self.cookie_name}={cookie}"))
        h += list((extra or {}).items())
        path = "/_authproxy/verify" + (f"/{kind}" if kind else "") + path_suffix
        return await self.request("GET", path, h)

    async def sign_in(self, host: str, user: tuple[str, str], *, rd: str | None = None,
                      cookie: str | None = None) -> tuple[str, Reply]:
        headers = {**API, "X-Forwarded-Proto": "https", "X-Forwarded-Host": host}
        if cookie:
            headers["Cookie"] = f"{self.cookie_name}={cookie}"
        body = {"username": user[0], "password": user[1], **({"rd": rd} if rd is not None else {})}
        reply = await self.request("POST", LOGIN, headers, json=body)
        assert reply.status == 200, reply.body
        for value in reply.headers.getall("Set-Cookie", ()):
            if value.startswith(f"{self.cookie_name}="):
                return value.split(";", 1)[0].split("=", 1)[1], reply
        raise AssertionError(f"no session cookie in {reply.headers}")


def tokens(fake: FakeTechnitium, user: str) -> set[str]:
    return {t for t, s in fake.sessions.items() if s.username == user}


def bearer(reply: Reply) -> str:
    value = reply.headers.get("Authorization", "")
    assert value.startswith("Bearer "), reply.headers
    return value.removeprefix("Bearer ")


@pytest.fixture
async def nas() -> AsyncIterator[FakeTechnitium]:
    fake = FakeTechnitium(api_version=15)
    fake.add_user(*BOB, display_name="Bob Builder")
    fake.add_user(*ALICE, display_name="Alice Example")
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
def dns(technitium: FakeTechnitium) -> FakeTechnitium:
    technitium.add_user(*BOB, display_name="Bob Builder")
    return technitium


@pytest.fixture
async def two_sites(make_gateway: MakeGateway, dns: FakeTechnitium, nas: FakeTechnitium, tmp_path: Path,
                    http_client: aiohttp.ClientSession) -> Asker:
    """One authproxy for dns.example.com (alice only) and nas.example.com (bob only) under .example.com."""
    config = tmp_path / "authproxy.toml"
    config.write_text(f"""
auth_mode = "session"
[server]
trust_proxy = true
forward_auth_port = 0
[session]
cookie_domain = ".example.com"
[[sites]]
name = "dns"
type = "technitium"
upstream_url = "{dns.url}"
hosts = ["dns.example.com"]
allowed_users = ["alice"]
[[sites]]
name = "nas"
type = "technitium"
upstream_url = "{nas.url}"
hosts = ["nas.example.com"]
allowed_users = ["bob"]
""", encoding="utf-8")
    gw = await make_gateway({"SESSION_SECRET": SECRET, "ACCESS_LOG": "false"}, config_file=config)
    return Asker(gw, http_client, "authproxy")


@pytest.fixture(params=["listener", "secret"])
async def one_site(make_gateway: MakeGateway, dns: FakeTechnitium, http_client: aiohttp.ClientSession,
                   request: pytest.FixtureRequest) -> Asker:
    """One site; the proxy asks at the forward-auth listener, or at the public one with the shared secret."""
    if request.param == "listener":
        gw = await make_gateway(gateway_env(dns.url, ALLOWED_USERS="alice", FORWARD_AUTH_PORT="0"))
        return Asker(gw, http_client, "__Host-authproxy")
    gw = await make_gateway(gateway_env(dns.url, ALLOWED_USERS="alice", FORWARD_AUTH_SECRET=FA_SECRET))
    return Asker(gw, http_client, "__Host-authproxy", verify_base=gw.url,
                 proof={"X-Authproxy-Secret": FA_SECRET})


# ---- several hosts, one cookie domain, one sign-in per upstream account ---------------------------------


async def test_one_cookie_for_two_hosts_one_sign_in_per_upstream_account(
    two_sites: Asker, dns: FakeTechnitium, nas: FakeTechnitium
) -> None:
    ask = two_sites
    nas_url = "https://nas.example.com/shares?path=%2Fdata&x=1"

    # alice signs in at dns.example.com; the cookie is for the whole domain; rd to the other host is fine.
    cookie, reply = await ask.sign_in("dns.example.com", ALICE, rd=nas_url)
    assert reply.json()["redirect"] == nas_url
    assert "Domain=.example.com" in reply.headers["Set-Cookie"]

    ok = await ask.verify("caddy", "https://dns.example.com/api/zones/list", cookie=cookie)
    assert ok.status == 200, ok.body
    assert bearer(ok) in tokens(dns, "alice")
    assert ok.headers["Remote-User"] == "alice" and ok.headers["Remote-Name"] == "Alice Example"
    assert ok.headers["Cache-Control"] == "no-store"

    # nas.example.com is another upstream account: sign in there too (no loop, a login redirect).
    for kind in ("caddy", "traefik"):
        login = await ask.verify(kind, nas_url, cookie=cookie, extra=BROWSER)
        assert login.status == 302
        assert login.headers["Location"] == (
            f"https://nas.example.com/_authproxy/login?rd={quote(nas_url, safe='')}")
    login = await ask.verify("nginx", nas_url, cookie=cookie, extra=BROWSER)
    assert login.status == 401 and login.headers["Location"].startswith("https://nas.example.com/_authproxy/login?rd=")

    cookie2, reply = await ask.sign_in("nas.example.com", BOB, rd=nas_url, cookie=cookie)
    assert reply.json()["redirect"] == nas_url
    assert reply.json()["sites"] == ["dns", "nas"]

    # One cookie, both sites, each with its own account's token and identity (and allow list).
    for kind in ("caddy", "traefik", "nginx"):
        on_dns = await ask.verify(kind, "https://dns.example.com/", cookie=cookie2)
        on_nas = await ask.verify(kind, nas_url, cookie=cookie2)
        assert on_dns.status == on_nas.status == 200, (kind, on_dns.body, on_nas.body)
        assert bearer(on_dns) in tokens(dns, "alice") and on_dns.headers["Remote-User"] == "alice"
        assert bearer(on_nas) in tokens(nas, "bob") and on_nas.headers["Remote-User"] == "bob"
        assert on_nas.headers["Remote-Name"] == "Bob Builder"
    # Signing in again re-issued the session (new id, no fixation): the first cookie is dead.
    assert (await ask.verify("caddy", "https://dns.example.com/", cookie=cookie)).status == 401

    # A host no site serves: refused, whoever asks.
    other = await ask.verify("caddy", "https://other.example.com/", cookie=cookie2, extra=BROWSER)
    assert other.status == 403 and "Location" not in other.headers


async def test_a_sign_in_through_technitiums_own_ui_keeps_each_sites_owner(
        two_sites: Asker, dns: FakeTechnitium, nas: FakeTechnitium) -> None:
    """The UI's own login (authproxy answers /api/user/login for the UI) merges sessions like the portal:
    alice's dns credential stays alice's after bob signs in to nas through nas's UI."""
    ask = two_sites
    cookie, _ = await ask.sign_in("dns.example.com", ALICE)
    reply = await ask.request("POST", "/api/user/login", {
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "nas.example.com", "Origin": "https://nas.example.com",
        "Cookie": f"{ask.cookie_name}={cookie}"}, data={"user": BOB[0], "pass": BOB[1], "totp": ""})
    assert reply.status == 200 and b'"ok"' in reply.body, reply.body
    cookie2 = next(v.split(";", 1)[0].split("=", 1)[1] for v in reply.headers.getall("Set-Cookie")
                   if v.startswith(f"{ask.cookie_name}="))
    on_dns = await ask.verify("caddy", "https://dns.example.com/", cookie=cookie2)
    assert on_dns.status == 200, on_dns.body                    # dns admits alice only: judged as alice
    assert on_dns.headers["Remote-User"] == "alice" and bearer(on_dns) in tokens(dns, "alice")
    on_nas = await ask.verify("caddy", "https://nas.example.com/", cookie=cookie2)
    assert on_nas.status == 200 and on_nas.headers["Remote-User"] == "bob"


async def test_allow_lists_are_per_site(two_sites: Asker, dns: FakeTechnitium) -> None:
    ask = two_sites
    # bob has an account on dns too, but dns only admits alice: 403, never a redirect (no loop).
    cookie, _ = await ask.sign_in("dns.example.com", BOB)
    for kind in ("caddy", "traefik", "nginx"):
        for accept in (BROWSER, API):
            denied = await ask.verify(kind, "https://dns.example.com/x", cookie=cookie, extra=accept)
            assert denied.status == 403, (kind, denied.status)
            assert "Location" not in denied.headers and "Authorization" not in denied.headers
    assert (
        b"<html" in (await ask.verify("caddy", "https://dns.example.com/", cookie=cookie, extra=BROWSER)).body
    )


@pytest.mark.parametrize(("rd", "expected"), [
    ("https://nas.example.com/a?b=1", "https://nas.example.com/a?b=1"),
    ("https://dns.example.com/", "https://dns.example.com/"),
    ("https://media.example.com/", "https://media.example.com/"),  # COOKIE_DOMAIN covers subdomains
    ("/relative?x=1", "/relative?x=1"),
    ("https://evil.example/", "/"),
    ("https://nas.example.com.evil.example/", "/"),
    ("https://evil.example/?https://nas.example.com/", "/"),
    ("http://nas.example.com/", "/"),
    ("https://nas.example.com:8443/", "/"),
    ("//evil.example/", "/"),
    ("https://nas.example.com//evil.example", "/"),
    ("https://nas.example.com@evil.example/", "/"),
    ("javascript:alert(1)", "/"),
])
async def test_login_redirect_targets(two_sites: Asker, rd: str, expected: str) -> None:
    _, reply = await two_sites.sign_in("dns.example.com", ALICE, rd=rd)
    assert reply.json()["redirect"] == expected


async def test_the_login_page_and_form_honour_rd(two_sites: Asker) -> None:
    rd = "https://nas.example.com/shares?x=1"
    page = await two_sites.request(
        "GET",
        f"/_authproxy/login?rd={quote(rd, safe='')}",
        {**BROWSER, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "nas.example.com"},
    )
    assert page.status == 200 and b'value="https://nas.example.com/shares?x=1"' in page.body
    assert b'name="site" value="nas"' in page.body
    form = await two_sites.request(
        "POST", LOGIN, {**BROWSER, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "nas.example.com",
                        "Origin": "https://nas.example.com"},
        data={"username": BOB[0], "password": BOB[1], "rd": rd, "site": "nas"})
    assert form.status == 303 and form.headers["Location"] == rd
    evil = await two_sites.request(
        "POST", LOGIN, {**BROWSER, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "nas.example.com",
                        "Origin": "https://nas.example.com"},
        data={"username": BOB[0], "password": BOB[1], "rd": "https://evil.example/", "site": "nas"})
    assert evil.status == 303 and evil.headers["Location"] == "/"


# ---- the per-proxy contract -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["caddy", "traefik", "nginx", None])
async def test_not_signed_in(one_site: Asker, kind: str | None) -> None:
    url = "https://dns.example.com/a/b?x=1&y=%20z"
    proxy = kind or "nginx"
    login = f"https://dns.example.com/_authproxy/login?rd={quote(url, safe='')}"
    for method in ("GET", "HEAD", "POST", "DELETE"):
        reply = await one_site.verify(kind, url, method=method, extra=BROWSER, proxy_kind=proxy)
        if proxy == "nginx":
            assert reply.status == 401 and reply.headers["Location"] == login
        else:
            assert reply.status == (302 if method in ("GET", "HEAD") else 303), (method, reply.status)
            assert reply.headers["Location"] == login
    for extra in (
        API,
        {**BROWSER, "X-Requested-With": "XMLHttpRequest"},
        {**BROWSER, "Sec-Fetch-Mode": "cors"},
        {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"},
    ):
        reply = await one_site.verify(kind, url, extra=extra, proxy_kind=proxy)
        assert reply.status == 401 and "Location" not in reply.headers, (extra, reply.status)
        assert reply.json()["error"] == "unauthenticated"


async def test_auto_detect(one_site: Asker) -> None:
    url = "https://dns.example.com/x"
    assert (await one_site.verify(None, url, extra=BROWSER, proxy_kind="caddy")).status == 302
    assert (await one_site.verify(None, url, extra=BROWSER, proxy_kind="traefik")).status == 302
    assert (await one_site.verify(None, url, extra=BROWSER, proxy_kind="nginx")).status == 401


@pytest.mark.parametrize("kind", ["caddy", "traefik", None])
async def test_a_client_x_original_url_through_caddy_or_traefik_changes_nothing(
    one_site: Asker, kind: str | None, dns: FakeTechnitium
) -> None:
    cookie, _ = await one_site.sign_in("dns.example.com", ALICE)
    forged = {"X-Original-URL": "https://nas.example.com/admin", "X-Original-Method": "DELETE"}
    reply = await one_site.verify(
        kind,
        "https://dns.example.com/x",
        cookie=cookie,
        extra={**forged, **BROWSER},
        proxy_kind=kind or "caddy",
    )
    if kind is None:
        assert reply.status == 400  # auto-detect sees both families disagree: refused, not believed
    else:
        assert reply.status == 200 and bearer(reply) in tokens(dns, "alice")


async def test_signed_in_and_allowed(one_site: Asker, dns: FakeTechnitium) -> None:
    cookie, _ = await one_site.sign_in("dns.example.com", ALICE)
    for kind in ("caddy", "traefik", "nginx", None):
        reply = await one_site.verify(kind, "https://dns.example.com/api/x?y=1", cookie=cookie,
                                      proxy_kind=kind or "traefik", extra={"Authorization": "Basic forged"})
        assert reply.status == 200
        assert bearer(reply) in tokens(dns, "alice")
        assert reply.headers["Remote-User"] == "alice"
        assert "Remote-Groups" not in reply.headers and "Remote-Email" not in reply.headers  # unknown: absent
        assert "Set-Cookie" not in reply.headers
        assert reply.body == b""


async def test_caddy_appends_the_client_query_to_the_verify_uri_and_it_is_ignored(
    one_site: Asker, dns: FakeTechnitium
) -> None:
    url = "https://dns.example.com/p?rd=https://evil.example/&proxy=nginx"
    reply = await one_site.verify("caddy", url, extra=BROWSER, path_suffix="?rd=https://evil.example/&proxy=nginx")
    assert reply.status == 302
    assert reply.headers["Location"] == f"https://dns.example.com/_authproxy/login?rd={quote(url, safe='')}"
    cookie, _ = await one_site.sign_in("dns.example.com", ALICE)
    reply = await one_site.verify("caddy", url, cookie=cookie, path_suffix="?token=forged&user=mallory")
    assert reply.status == 200 and bearer(reply) in tokens(dns, "alice")


async def test_websocket_upgrades(one_site: Asker, dns: FakeTechnitium) -> None:
    cookie, _ = await one_site.sign_in("dns.example.com", ALICE)
    caddy_upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    # Caddy forwards the Upgrade headers to the auth service; the (kept-alive) connection must survive.
    for _ in range(3):
        reply = await one_site.verify(
            "caddy", "https://dns.example.com/ws", cookie=cookie, extra=caddy_upgrade
        )
        assert reply.status == 200 and bearer(reply) in tokens(dns, "alice")
    # Traefik drops them but says X-Forwarded-Proto: ws / wss.
    for proto in ("ws", "wss"):
        h = [(k, proto if k == "X-Forwarded-Proto" else v)
             for k, v in proxy_headers("traefik", "https://dns.example.com/ws")]
        h.append(("Cookie", f"__Host-authproxy={cookie}"))
        reply = await one_site.request("GET", "/_authproxy/verify/traefik", h)
        assert reply.status == 200, reply.body
        h = [(k, v) for k, v in h if k != "Cookie"]
        reply = await one_site.request("GET", "/_authproxy/verify/traefik", h)
        assert reply.status == 401


async def test_traefik_preserve_request_method_is_fine(one_site: Asker) -> None:
    h = proxy_headers("traefik", "https://dns.example.com/form", "POST") + list(BROWSER.items())
    reply = await one_site.request("POST", "/_authproxy/verify/traefik", h, data=b"a=1")
    assert reply.status == 303


@pytest.mark.parametrize("change", [
    [("X-Forwarded-Host", "evil.example")],                       # a second X-Forwarded-Host
    [("X-Forwarded-Uri", "/other")],                              # a second X-Forwarded-Uri
])
async def test_duplicate_forwarded_headers_are_refused(
    one_site: Asker, change: list[tuple[str, str]]
) -> None:
    h = proxy_headers("caddy", "https://dns.example.com/x") + change
    reply = await one_site.request("GET", "/_authproxy/verify/caddy", h)
    assert reply.status == 400  # aiohttp-remotes already refuses a repeated X-Forwarded-Host
    if change[0][0] != "X-Forwarded-Host":
        assert reply.json()["error"] == "bad_forwarded_request"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Forwarded-Uri", "//evil.example/x"),
        ("X-Forwarded-Uri", "https://evil.example/"),
        ("X-Forwarded-Uri", "/a\\b"),
        ("X-Forwarded-Host", "evil.example/x"),
        ("X-Forwarded-Host", "a@evil.example"),
        ("X-Forwarded-Proto", "javascript"),
        ("X-Forwarded-Method", "get /x"),
    ],
)
async def test_malformed_forwarded_headers_are_refused(one_site: Asker, name: str, value: str) -> None:
    h = [(k, value if k == name else v) for k, v in proxy_headers("caddy", "https://dns.example.com/x")]
    reply = await one_site.request("GET", "/_authproxy/verify/caddy", h)
    assert reply.status == 400, (name, value, reply.status)


async def test_missing_forwarded_headers_are_refused_not_guessed(one_site: Asker) -> None:
    for kind in ("caddy", "traefik", "nginx"):
        reply = await one_site.request(
            "GET", f"/_authproxy/verify/{kind}", {"Host": "dns.example.com", **BROWSER}
        )
        assert reply.status == 400, kind


async def test_unknown_proxy_name(one_site: Asker) -> None:
    reply = await one_site.request("GET", "/_authproxy/verify/apache", proxy_headers("caddy", "https://h/"))
    assert reply.status == 404 and reply.json()["error"] == "unknown_proxy"


# ---- who may ask --------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", [{"FORWARD_AUTH_PORT": "0"}, {"FORWARD_AUTH_SECRET": FA_SECRET}])
async def test_untrusted_peers_are_refused(make_gateway: MakeGateway, dns: FakeTechnitium,
                                           http_client: aiohttp.ClientSession, env: dict[str, str]) -> None:
    """The listener or the secret come on top of TRUSTED_PROXIES, never instead of it."""
    gw = await make_gateway(gateway_env(dns.url, TRUSTED_PROXIES="10.0.0.0/8", **env))
    ask = Asker(
        gw,
        http_client,
        "__Host-authproxy",
        verify_base=gw.url if "FORWARD_AUTH_SECRET" in env else "",
        proof={"X-Authproxy-Secret": FA_SECRET},
    )
    for kind in ("caddy", "traefik", "nginx", None):
        reply = await ask.verify(kind, "https://dns.example.com/x", extra=BROWSER, proxy_kind=kind or "nginx")
        assert reply.status == 403 and reply.json()["error"] == "untrusted_proxy", (kind, reply.status)
        assert "Location" not in reply.headers


async def test_auth_mode_none_answers_with_the_service_credential(
    make_gateway: MakeGateway, dns: FakeTechnitium, http_client: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(gateway_env(dns.url, AUTH_MODE="none", UPSTREAM_SERVICE_TOKEN="svc-token-1234",
                                        FORWARD_AUTH_PORT="0"))
    reply = await Asker(gw, http_client, "x").verify("caddy", "https://dns.example.com/x", extra=BROWSER)
    assert reply.status == 200
    assert "svc-token-1234" in (
        reply.headers.get("Authorization", "") + reply.headers.get("X-Authproxy-Token", "")
    )
    assert "Remote-User" not in reply.headers


async def test_auth_mode_none_service_token_follows_the_configured_api_version(
    make_gateway: MakeGateway, dns: FakeTechnitium, http_client: aiohttp.ClientSession
) -> None:
    """v15 -> Bearer only (Traefik can copy it); v14 -> the token header the recipes move into the query;
    unknown -> both, so either server version reads it."""
    expected = {"15": ({"Authorization": "Bearer svc-token-1234"}, "X-Authproxy-Token"),
                "14": ({"X-Authproxy-Token": "svc-token-1234"}, "Authorization")}
    for version, (present, absent) in expected.items():
        gw = await make_gateway(
            gateway_env(
                dns.url,
                AUTH_MODE="none",
                UPSTREAM_SERVICE_TOKEN="svc-token-1234",
                TECHNITIUM_API_VERSION=version,
                FORWARD_AUTH_PORT="0",
            )
        )
        reply = await Asker(gw, http_client, "x").verify(
            "traefik", "https://dns.example.com/x", extra=BROWSER
        )
        assert reply.status == 200
        for name, value in present.items():
            assert reply.headers.get(name) == value, (version, name)
        assert absent not in reply.headers, version
    gw = await make_gateway(gateway_env(dns.url, AUTH_MODE="none", UPSTREAM_SERVICE_TOKEN="svc-token-1234",
                                        FORWARD_AUTH_PORT="0"))
    reply = await Asker(gw, http_client, "x").verify("caddy", "https://dns.example.com/x", extra=BROWSER)
    assert reply.headers.get("Authorization") == "Bearer svc-token-1234"
    assert reply.headers.get("X-Authproxy-Token") == "svc-token-1234"


async def test_an_expiry_found_by_verify_is_audited_with_the_persons_address(
    make_gateway: MakeGateway, dns: FakeTechnitium, http_client: aiohttp.ClientSession, audit: Audit
) -> None:
    gw = await make_gateway(gateway_env(dns.url, SESSION_IDLE_TIMEOUT="1s", SESSION_MAX_AGE="1h",
                                        FORWARD_AUTH_PORT="0"))
    asker = Asker(gw, http_client, "__Host-authproxy")
    cookie, _ = await asker.sign_in("dns.example.com", ALICE)
    await asyncio.sleep(1.3)
    # Caddy appends the client's address to X-Forwarded-For; authproxy sees only Caddy (127.0.0.1).
    reply = await asker.verify("caddy", "https://dns.example.com/", cookie=cookie,
                               extra={"X-Forwarded-For": "203.0.113.9, 127.0.0.1"})
    assert reply.status == 401
    (line,) = audit.lines("expiry")
    assert (line["outcome"], line["client_ip"]) == ("idle_timeout", "203.0.113.9")


def test_the_person_behind_the_proxies_is_the_last_untrusted_hop() -> None:
    trusted = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8"))
    assert forwarded_client(["198.51.100.1, 203.0.113.9", "10.0.0.2"], "127.0.0.1", trusted) == "203.0.113.9"
    assert forwarded_client(["10.0.0.3, 127.0.0.1"], "127.0.0.1", trusted) == "10.0.0.3"
    assert forwarded_client([], "127.0.0.1", trusted) == "127.0.0.1"
    assert forwarded_client(["unknown, 203.0.113.9"], "127.0.0.1", trusted) == "203.0.113.9"
    assert forwarded_client(["203.0.113.9, not-an-ip"], "127.0.0.1", trusted) == "127.0.0.1"


async def test_another_sites_page_gets_no_credential_through_forward_auth(one_site: Asker,
                                                                         dns: FakeTechnitium) -> None:
    # The proxies pass the browser's Sec-Fetch-* headers to /verify with the rest.
    cookie, _ = await one_site.sign_in("dns.example.com", ALICE)
    nav = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Accept": "text/html"}
    for kind in ("caddy", "traefik", "nginx"):
        reply = await one_site.verify(kind, "https://dns.example.com/api/zones/delete?zone=example.com",
                                      cookie=cookie, extra=nav)
        assert reply.status == 403 and "Authorization" not in reply.headers, kind
        assert b"another site" in reply.body
        # A link from another site to the UI's page is fine, and so is the UI's own call.
        page = await one_site.verify(kind, "https://dns.example.com/", cookie=cookie, extra=nav)
        assert page.status == 200 and bearer(page) in tokens(dns, "alice")
        own = await one_site.verify(
            kind,
            "https://dns.example.com/api/zones/delete?zone=example.com",
            cookie=cookie,
            extra={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},
        )
        assert own.status == 200
    # Cross-site WebSocket hijacking: a foreign page's socket gets nothing either.
    ws = await one_site.verify("caddy", "https://dns.example.com/api/ws", cookie=cookie,
                               extra={"Origin": "https://evil.example", "Upgrade": "websocket"})
    assert ws.status == 403


async def test_the_api_is_the_api_however_its_path_is_spelt(one_site: Asker) -> None:
    """The proxies pass `$request_uri` on as sent; the upstream (Kestrel) resolves `/./` and `%2e`, and
    many servers merge `//`: the cross-site rule judges the path as they will read it."""
    cookie, _ = await one_site.sign_in("dns.example.com", ALICE)
    nav = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Accept": "text/html"}
    for kind in ("caddy", "traefik", "nginx"):
        for path in (
            "/api//zones/delete",
            "/./api/zones/delete",
            "/%2e/api/zones/delete",
            "/x/../api/zones/delete",
            "/%2E%2E/API//zones/delete",
            "/api/.//zones/delete",
        ):
            reply = await one_site.verify(
                kind, f"https://dns.example.com{path}?zone=example.com", cookie=cookie, extra=nav
            )
            assert reply.status == 403 and "Authorization" not in reply.headers, (kind, path, reply.status)
        # A target that starts with `//` stays refused as malformed, before any decision.
        reply = await one_site.verify(
            kind, "https://dns.example.com//api/zones/delete", cookie=cookie, extra=nav
        )
        assert reply.status == 400 and "Authorization" not in reply.headers, kind
        # The same spellings from the site itself pass.
        own = await one_site.verify(kind, "https://dns.example.com/./api//zones/list", cookie=cookie,
                                    extra={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"})
        assert own.status == 200 and "Authorization" in own.headers, kind


async def test_echoing_methods_get_no_credential_through_forward_auth(one_site: Asker) -> None:
    """Caddy and Traefik forward TRACE with what the check answered; the upstream would echo it back."""
    cookie, _ = await one_site.sign_in("dns.example.com", ALICE)
    for kind in ("caddy", "traefik", "nginx"):
        for method in ("TRACE", "TRACK", "DEBUG"):
            reply = await one_site.verify(kind, "https://dns.example.com/x", cookie=cookie, method=method)
            assert reply.status == 405 and "Authorization" not in reply.headers, (kind, method)
        assert (await one_site.verify(kind, "https://dns.example.com/x", cookie=cookie)).status == 200
PAGE_LOAD = {**BROWSER, "Upgrade-Insecure-Requests": "1"}   # a browser loading a page, without Sec-Fetch-*


async def test_a_page_load_of_the_api_needs_a_same_origin_signal(
    one_site: Asker, dns: FakeTechnitium
) -> None:
    """Safari before 16.4 sends no Sec-Fetch-*; from a `no-referrer` page no Origin or Referer either.
    Technitium's GET API changes state, so such a page load gets no credential; scripts still do."""
    cookie, _ = await one_site.sign_in("dns.example.com", ALICE)
    api = "https://dns.example.com/api/zones/delete?zone=example.com"
    cases = [
        (PAGE_LOAD, 403),
        ({"Upgrade-Insecure-Requests": "1"}, 403),
        ({**PAGE_LOAD, "Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}, 403),   # a link from a mail
        ({**PAGE_LOAD, "Referer": "http://dns.example.com/"}, 403),                    # another scheme
        ({"Accept": "*/*"}, 200),                                                       # curl -b jar
        (API, 200),
        ({**PAGE_LOAD, "Referer": "https://dns.example.com/index.html"}, 200),         # the UI's own link
        ({**PAGE_LOAD, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate"}, 200),
    ]
    for kind in ("caddy", "traefik", "nginx"):
        for extra, status in cases:
            reply = await one_site.verify(kind, api, cookie=cookie, extra=extra)
            assert reply.status == status, (kind, extra, reply.body)
            assert ("Authorization" in reply.headers) == (status == 200)
        # The UI's pages still open from a bookmark or a link.
        page = await one_site.verify(kind, "https://dns.example.com/", cookie=cookie, extra=PAGE_LOAD)
        assert page.status == 200 and bearer(page) in tokens(dns, "alice")


async def test_a_sockets_origin_is_compared_by_scheme_host_and_port(one_site: Asker) -> None:
    cookie, _ = await one_site.sign_in("dns.example.com", ALICE)
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
    cases = [
        ("https://dns.example.com/api/ws", "https://dns.example.com", 200),
        ("https://dns.example.com/api/ws", "http://dns.example.com", 403),
        ("https://dns.example.com/api/ws", "https://dns.example.com:8443", 403),
        ("https://dns.example.com/api/ws", "https://other.example.com", 403),
        ("https://dns.example.com:443/api/ws", "https://dns.example.com", 200),     # the host with its port
        ("https://dns.example.com/api/ws", "https://dns.example.com:443", 200),
        ("https://dns.example.com:443/api/ws", "http://dns.example.com:443", 403),
        ("wss://dns.example.com/api/ws", "https://dns.example.com", 200),           # Traefik says wss
        ("wss://dns.example.com/api/ws", "http://dns.example.com", 403),
    ]
    for kind in ("caddy", "traefik", "nginx"):
        for url, origin, status in cases:
            reply = await one_site.verify(kind, url, cookie=cookie, extra={**upgrade, "Origin": origin})
            assert reply.status == status, (kind, url, origin)
            assert ("Authorization" in reply.headers) == (status == 200)


async def test_without_a_method_header_a_foreign_request_cannot_pass_as_a_link(one_site: Asker) -> None:
    # An nginx recipe without X-Original-Method: the subrequest is a GET whatever the client sent, so
    # a cross-site form post would look like a navigation.
    cookie, _ = await one_site.sign_in("dns.example.com", ALICE)
    nav = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Accept": "text/html"}
    bare = [("X-Original-URL", "https://dns.example.com/"), ("Cookie", f"__Host-authproxy={cookie}"),
            *nav.items()]
    assert (await one_site.request("GET", "/_authproxy/verify/nginx", bare)).status == 403
    with_method = [*bare, ("X-Original-Method", "GET")]
    assert (await one_site.request("GET", "/_authproxy/verify/nginx", with_method)).status == 200
