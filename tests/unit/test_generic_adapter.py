"""The declarative generic adapter: option checking, stripping/injection, expiry rules, hiding.

Why: a `type = "generic"` site is configured, not coded, so every mistake in its options must be caught
at start-up with a message naming the option and the fix, and every rule it promises (client copies of
the credential removed, the credential never returned to the browser, expiry spotted) must hold for
whatever combination is configured. Also the proxy's Location / Set-Cookie path rewriting that adapters
rely on when a UI is served under a sub-path, and qBittorrent's failed-login budget.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.config.loader import load_config
from authproxy.config.schema import SiteConfig
from authproxy.errors import ConfigError
from authproxy.proxy.http import _rewrite_location, _rewrite_set_cookie_paths
from authproxy.routing import Site
from authproxy.sessions.manager import LoadedSession
from authproxy.sessions.memory import MemoryStore
from authproxy.sessions.model import Credential, Identity, Session
from authproxy.sessions.ticket import new_ticket
from authproxy.upstreams.adguard import ADGUARD, AdGuardAdapter
from authproxy.upstreams.base import UpstreamRequest
from authproxy.upstreams.generic import GenericAdapter
from authproxy.upstreams.generic_options import parse_spec, pointer_blank, pointer_get
from authproxy.upstreams.pihole import PIHOLE
from authproxy.upstreams.qbittorrent import FailureBudget, Refusal
from authproxy.upstreams.registry import adapter_factory

BEARER: dict[str, Any] = {
    "login": {"path": "/api/login", "encoding": "form", "username_field": "user", "password_field": "pass"},
    "credential": {"from": "json", "pointer": "/data/token", "ttl": 600},
    "inject": {"as": "header", "name": "Authorization", "template": "Bearer {credential}"},
    "expiry": {"status": [401], "paths": ["/api/"], "json_pointer": "/status", "json_value": "invalid-token"},
    "hide": {"json": ["/data/token"], "json_paths": ["/api/login", "/api/session"], "params": ["token"],
             "request_cookies": ["tok"]},
}


def adapter(options: dict[str, Any], type_: str = "generic") -> GenericAdapter:
    site = SiteConfig(name="s", upstream_url="http://127.0.0.1:9", type=type_, options=options)
    made = adapter_factory(type_)(site, None)  # type: ignore[arg-type]  # no I/O in these tests
    assert isinstance(made, GenericAdapter)
    return made


def ureq(path: str = "/api/x", query: str = "", headers: dict[str, str] | None = None,
         method: str = "GET") -> UpstreamRequest:
    return UpstreamRequest(method=method, raw_path=path, raw_query=query, headers=CIMultiDict(headers or {}))


def hdrs(**kw: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in kw.items()}))


def cred(secret: str = "SECRET") -> Credential:
    return Credential(secret=secret)


def session_holding(credential: Credential) -> LoadedSession:
    session = Session(user="u", site="s", identity=Identity(username="u"), credentials={"s": credential})
    ticket = new_ticket()
    return LoadedSession(session=session, ticket=ticket, store_key=ticket.store_key)


# ---- option checking ----------------------------------------------------------------------------


def test_the_documented_configurations_are_valid() -> None:
    for options in (BEARER, ADGUARD, PIHOLE):
        spec, problems = parse_spec(options)
        assert problems == [] and spec is not None
    assert GenericAdapter.check_options(ADGUARD) == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, ["options.login: required", "options.credential: required"]),
        ({"login": {}, "credential": {"from": "cookie", "name": "s"}}, ["options.login.path: required"]),
        ({**BEARER, "extra": {}}, ["unknown table 'extra'"]),
        ({**BEARER, "login": {**BEARER["login"], "pth": "/x"}}, ["options.login: unknown option 'pth'"]),
        (
            {**BEARER, "login": {**BEARER["login"], "encoding": "xml"}},
            ["options.login.encoding: must be one of form, json, basic"],
        ),
        (
            {**BEARER, "login": {**BEARER["login"], "path": "api/login"}},
            ["options.login.path: must be a path"],
        ),
        (
            {**BEARER, "login": {**BEARER["login"], "method": "P OST"}},
            ["options.login.method: must be an HTTP"],
        ),
        (
            {**BEARER, "login": {**BEARER["login"], "blocked_status": [4290]}},
            ["options.login.blocked_status: must be a list"],
        ),
        (
            {**BEARER, "credential": {"from": "json"}},
            ['options.credential.pointer: required for from = "json"'],
        ),
        ({**BEARER, "credential": {"from": "cookie"}, "inject": {}}, ["options.credential.name: required"]),
        (
            {**BEARER, "credential": {"from": "json", "pointer": "data/token"}},
            ["options.credential.pointer: must be a JSON"],
        ),
        ({**BEARER, "inject": {}}, ["options.inject.as: required"]),
        (
            {**BEARER, "inject": {"as": "header", "name": "X", "template": "Bearer"}},
            ["must contain {credential}"],
        ),
        (
            {**BEARER, "inject": {"as": "query", "name": "t", "template": "x{credential}"}},
            ["only headers take"],
        ),
        ({**BEARER, "expiry": {"json_pointer": "/status"}}, ["options.expiry.json_value: required"]),
        ({**BEARER, "logout": {"intercept": True}}, ["options.logout.intercept: needs logout.path"]),
        ({**BEARER, "credential": {"from": "basic"}}, ['"basic" needs login.encoding = "basic"']),
        ({**BEARER, "hide": {"json": "/a"}}, ["options.hide.json: must be a list of strings"]),
    ],
)
def test_option_problems_name_the_option_and_the_fix(options: dict[str, Any], expected: list[str]) -> None:
    problems = GenericAdapter.check_options(options)
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)


def test_a_broken_generic_site_stops_start_up_listing_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "authproxy.toml"
    config.write_text('''
[[sites]]
name = "thing"
type = "generic"
upstream_url = "http://127.0.0.1:9"
[sites.options.login]
path = "login"
[sites.options.credential]
from = "smoke-signal"
''')
    with pytest.raises(ConfigError) as exc:
        load_config({"SESSION_SECRET": "s" * 40}, config)
    text = str(exc.value)
    assert "site 'thing': options.login.path: must be a path starting with /" in text
    assert "site 'thing': options.credential.from: must be one of cookie, json, header, basic" in text


def test_builtin_configurations_take_overrides_table_by_table() -> None:
    pihole = adapter({"keepalive": {"path": "/api/info/version"}}, "pihole")
    assert pihole.spec.keepalive.path == "/api/info/version" and pihole.spec.login.path == "/api/auth"
    problems = AdGuardAdapter.check_options({"login": {"path": "x"}})
    assert any("options.login.path: must be a path" in p for p in problems)


# ---- JSON pointers -----------------------------------------------------------------------------


def test_json_pointers_follow_rfc_6901() -> None:
    doc = {"a/b": {"m~n": [10, {"sid": "s"}]}, "session": {"sid": "x", "csrf": None}}
    assert pointer_get(doc, "/a~1b/m~0n/1/sid") == "s"
    assert pointer_get(doc, "/a~1b/m~0n/7", "missing") == "missing"
    assert pointer_get(doc, "") is doc
    assert pointer_blank(doc, "/session/sid") and doc["session"]["sid"] is None
    assert not pointer_blank(doc, "/session/csrf") and not pointer_blank(doc, "/nope/sid")
    assert pointer_blank(doc, "/a~1b/m~0n/0") and doc["a/b"]["m~n"][0] is None


# ---- forwarding: strip what the client sent, inject the real credential --------------------------


def test_header_injection_with_a_template_replaces_the_clients_copy() -> None:
    a = adapter(BEARER)
    req = ureq(headers={"Authorization": "Bearer forged", "Cookie": "tok=forged; ui=1; tok=again"},
               query="token=forged&a=1&TOKEN=x")
    a.prepare_request(req, cred())
    assert req.headers.getall("Authorization") == ["Bearer SECRET"]
    assert req.headers["Cookie"] == "ui=1" and req.raw_query == "a=1"
    # The same names leave form bodies (proxy/forms.py): the adapter names them.
    assert "TOKEN" in a.credential_fields() and "keep" not in a.credential_fields()
    # Answers authproxy must read are requested uncompressed.
    assert "Accept-Encoding" in req.headers
    plain = ureq("/static/app.js", headers={"Accept-Encoding": "gzip"})
    a.prepare_request(plain, cred())
    assert plain.headers["Accept-Encoding"] == "gzip"


def test_cookie_injection_strips_every_client_copy_and_keeps_other_cookies() -> None:
    a = adapter(ADGUARD, "adguard")
    req = ureq("/control/status", headers={"Cookie": "agh_session=forged; theme=dark",
                                           "Authorization": "Basic YWRtaW46YWRtaW4="})
    req.headers.add("Cookie", "agh_session=second")
    a.prepare_request(req, cred("real"))
    assert req.headers.getall("Cookie") == ["agh_session=real; theme=dark"]
    assert "Authorization" not in req.headers
    anonymous = ureq("/", headers={"Cookie": "agh_session=forged"})
    a.prepare_request(anonymous, None)
    assert "Cookie" not in anonymous.headers


def test_query_injection_keeps_the_rest_of_the_query_verbatim() -> None:
    a = adapter({**BEARER, "inject": {"as": "query", "name": "sid"}})
    req = ureq(query="sid=forged&q=a%2Fb&x=%20")
    a.prepare_request(req, cred("s/1"))
    assert req.raw_query == "q=a%2Fb&x=%20&sid=s%2F1"
    assert a.forward_auth_headers(cred("s/1")) == {"X-Authproxy-Token": "s/1"}


def test_pihole_sends_the_sid_as_a_header_and_drops_every_client_sid() -> None:
    a = adapter({}, "pihole")
    req = ureq("/api/stats/summary", query="sid=forged",
               headers={"sid": "forged", "X-FTL-SID": "forged", "Cookie": "sid=forged"})
    a.prepare_request(req, cred("real"))
    assert req.headers.getall("X-FTL-SID") == ["real"]
    assert "sid" not in req.headers and "Cookie" not in req.headers and req.raw_query == ""
    assert a.forward_auth_headers(cred("real")) == {"X-FTL-SID": "real"}


# ---- answers: expiry, hidden fields, cookies -----------------------------------------------------


def test_expiry_by_status_only_on_the_configured_paths() -> None:
    a = adapter(BEARER)
    assert a.wants_body(ureq("/api/x"), 401, hdrs()) and a.is_expired(401, hdrs(), b"")
    # A 401 outside /api/ is not about authproxy's credential: not read, never judged.
    assert not a.wants_body(ureq("/files/x"), 401, hdrs())
    assert not a.wants_body(
        ureq("/api/x"), 200, hdrs(Content_Length=str(2 << 20), Content_Type="application/json")
    )


def test_expiry_by_json_field_and_by_redirect() -> None:
    a = adapter(BEARER)
    body = json.dumps({"status": "invalid-token"}).encode()
    assert a.wants_body(ureq("/api/x"), 200, hdrs(Content_Type="application/json; charset=utf-8"))
    assert a.is_expired(200, hdrs(), body)
    assert not a.is_expired(200, hdrs(), b'{"status":"ok"}') and not a.is_expired(200, hdrs(), b"not json")
    assert not a.wants_body(
        ureq("/api/x"), 200, hdrs(Content_Type="application/json", Content_Encoding="gzip")
    )
    g = adapter(ADGUARD, "adguard")
    assert g.wants_body(ureq("/"), 302, hdrs(Location="/login.html"))
    assert g.is_expired(302, hdrs(Location="/login.html"), b"")
    assert not g.is_expired(302, hdrs(Location="/index.html"), b"")
    assert g.is_expired(302, hdrs(Location="login.html"), b"")
    assert g.is_expired(302, hdrs(Location="http://10.0.0.5:3000/login.html"), b"")


def test_hidden_json_fields_become_null() -> None:
    a = adapter(BEARER)
    req = ureq("/api/session")
    assert a.wants_body(req, 200, hdrs(Content_Type="application/json"))
    loaded = session_holding(cred("SECRET"))
    out = json.loads(a.rewrite_body(req, b'{"data":{"token":"SECRET","user":"u"}}', loaded))
    assert out == {"data": {"token": None, "user": "u"}}
    untouched = b'{"data":{"token":"t"}}'
    assert a.rewrite_body(ureq("/api/other"), untouched, loaded) is untouched
    assert a.rewrite_body(req, b"[1,2]", loaded) == b"[1,2]"
    # Spelling the path differently does not dodge the rule (the upstream decodes and normalises it).
    for disguised in ("/api/%73ession", "/api//session", "/api/x/../session", "/API/../api/session/"):
        assert a.wants_body(ureq(disguised), 200, hdrs(Content_Type="application/json")), disguised
        assert json.loads(a.rewrite_body(ureq(disguised), b'{"data":{"token":"SECRET"}}', loaded)) == \
            {"data": {"token": None}}
    # An answer that does not parse (e.g. cut short) still never echoes this session's credential.
    assert a.rewrite_body(req, b'{"data":{"token":"SECRET","us', loaded) == b'{"data":{"token":"","us'
    # Too large to read whole (over 1 MiB): the credential is cut out while it streams, on hidden paths only.
    assert a.answer_secret(req, hdrs(Content_Type="application/json"), loaded) == ("SECRET", "000000")
    assert a.answer_secret(ureq("/api/other"), hdrs(Content_Type="application/json"), loaded) is None
    assert a.answer_secret(req, hdrs(Content_Encoding="gzip"), loaded) is None
    assert a.answer_secret(req, hdrs(), None) is None


def test_session_cookies_and_declared_headers_never_reach_the_browser() -> None:
    a = adapter({**ADGUARD, "hide": {**ADGUARD["hide"], "response_headers": ["X-Session"]}}, "adguard")
    headers = CIMultiDict(
        [
            ("Set-Cookie", "agh_session=abc; Path=/; HttpOnly"),
            ("Set-Cookie", "lang=en; Path=/"),
            ("X-Session", "abc"),
            ("Content-Type", "text/plain"),
        ]
    )
    a.filter_response_headers(headers)
    assert headers.getall("Set-Cookie") == ["lang=en; Path=/"] and "X-Session" not in headers
    basic = adapter({"login": {"path": "/rpc", "encoding": "basic"}, "credential": {"from": "basic"}})
    h2 = CIMultiDict({"WWW-Authenticate": 'Basic realm="x"'})
    basic.filter_response_headers(h2)
    assert "WWW-Authenticate" not in h2
    req = ureq(headers={"Authorization": "Basic forged"})
    basic.prepare_request(req, cred("Basic real"))
    assert req.headers.getall("Authorization") == ["Basic real"]


# ---- login against a small live upstream -----------------------------------------------------------


async def test_login_outcomes_form_encoding_header_credential_and_ttl(aiohttp_server: Any) -> None:
    seen: list[dict[str, str]] = []

    async def login(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        seen.append({**form, "xff": request.headers.get("X-Forwarded-For", "")})
        if form.get("user") == "busy":
            return web.Response(status=429, headers={"Retry-After": "42"})
        if form.get("pass") != "pw":
            return web.Response(status=403, text="nope")
        if form.get("code") is None:
            return web.Response(status=401, text="code required")
        if form.get("code") != "123456":
            return web.Response(status=401, text="bad code")
        return web.json_response({"ok": True, "ttl": 900}, headers={"X-Token": "tok-1"})

    app = web.Application()
    app.router.add_post("/in", login)
    server = await aiohttp_server(app)
    options = {
        "login": {
            "path": "/in",
            "username_field": "user",
            "password_field": "pass",
            "totp_field": "code",
            "totp_required_status": 401,
            "totp_required_text": "code required",
            "fields": {"remember": 1},
        },
        "credential": {"from": "header", "name": "X-Token", "ttl_pointer": "/ttl"},
    }
    assert GenericAdapter.check_options(options) == []
    site = SiteConfig(
        name="s", upstream_url=str(server.make_url("")).rstrip("/"), type="generic", options=options
    )
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        a = GenericAdapter(site, http)
        assert (await a.login("bob", "bad", None, "198.51.100.7")).status == "invalid"
        assert seen[-1] == {"user": "bob", "pass": "bad", "remember": "1", "xff": "198.51.100.7"}
        assert (await a.login("bob", "pw", None, "")).status == "totp_required"
        assert (await a.login("bob", "pw", "000000", "")).status == "invalid"
        blocked = await a.login("busy", "pw", None, "")
        assert (blocked.status, blocked.retry_after) == ("blocked", 42)
        seen.clear()
        ok = await a.login("bob", "pw", "123456", "")
    assert ok.status == "ok" and ok.credential is not None and ok.identity is not None
    assert (ok.credential.secret, ok.credential.upstream_ttl, ok.identity.username) == ("tok-1", 900.0, "bob")
    assert seen[-1]["code"] == "123456"
    # The response header carrying the credential is dropped on the way to the browser.
    out = CIMultiDict({"X-Token": "tok-1"})
    a.filter_response_headers(out)
    assert "X-Token" not in out


# ---- the proxy's rewriting of Location and Set-Cookie paths -------------------------------------------


def site_at(prefix: str, upstream: str = "http://10.0.0.5:3000") -> Site:
    config = SiteConfig(name="s", upstream_url=upstream, type="adguard", path_prefix=prefix)
    return Site(config=config, adapter=None)  # type: ignore[arg-type]


def browser_request() -> web.Request:
    return make_mocked_request("GET", "/agh/", headers={"Host": "proxy.example"})


@pytest.mark.parametrize(("prefix", "upstream", "location", "expected"), [
    ("/", "http://10.0.0.5:3000", "/login.html", "/login.html"),
    ("/agh/", "http://10.0.0.5:3000", "/login.html?x=1#f", "/agh/login.html?x=1#f"),
    ("/agh", "http://10.0.0.5:3000", "http://10.0.0.5:3000/login.html", "http://proxy.example/agh/login.html"),
    ("/agh/", "http://10.0.0.5:3000", "http://10.0.0.5:3000", "http://proxy.example/agh/"),
    ("/tr/", "http://10.0.0.5:3000/sub", "/sub/web/", "/tr/web/"),
    ("/tr/", "http://10.0.0.5:3000/sub", "/elsewhere", "/elsewhere"),
    ("/agh/", "http://10.0.0.5:3000", "login.html", "login.html"),
    ("/agh/", "http://10.0.0.5:3000", "//evil.example/x", "//evil.example/x"),
    ("/agh/", "http://10.0.0.5:3000", "https://other.example/x", "https://other.example/x"),
])
def test_location_headers_point_at_the_public_address(prefix: str, upstream: str, location: str,
                                                       expected: str) -> None:
    headers = CIMultiDict({"Location": location})
    _rewrite_location(headers, site_at(prefix, upstream), browser_request())
    assert headers["Location"] == expected


def test_passed_through_cookies_get_public_paths_and_lose_the_upstream_domain() -> None:
    headers = CIMultiDict(
        [
            ("Set-Cookie", "lang=en; Path=/; HttpOnly"),
            ("Set-Cookie", "a=1; path=/ui/x; Domain=10.0.0.5"),
            ("Set-Cookie", "b=2; Domain=.example.com"),
        ]
    )
    _rewrite_set_cookie_paths(headers, site_at("/agh/"))
    assert headers.getall("Set-Cookie") == ["lang=en; Path=/agh; HttpOnly", "a=1; path=/agh/ui/x",
                                            "b=2; Domain=.example.com"]
    same = CIMultiDict([("Set-Cookie", "lang=en; Path=/")])
    _rewrite_set_cookie_paths(same, site_at("/"))
    assert same.getall("Set-Cookie") == ["lang=en; Path=/"]


# ---- qBittorrent's failed-login budget ----------------------------------------------------------------


async def test_qbittorrent_budget_never_spends_the_last_attempt_before_a_ban() -> None:
    now = [1000.0]
    budget = FailureBudget(5, 3600, clock=lambda: now[0])
    for _ in range(3):
        await budget.failed()
        assert await budget.wait() is None
    await budget.failed()              # the 4th: one more would make qBittorrent ban authproxy
    assert await budget.wait() == 3600
    now[0] += 3601
    assert await budget.wait() is None  # after the ban time the app may be asked again
    await budget.succeeded()
    await budget.failed()
    assert await budget.wait() is None and await budget.count() == 1
    await budget.banned()
    assert await budget.wait() == 3600 and await budget.count() == 0
    off = FailureBudget(0, 3600, clock=lambda: now[0])
    for _ in range(10):
        await off.failed()
    assert await off.wait() is None


async def test_qbittorrent_budget_counts_attempts_in_flight_as_possible_failures() -> None:
    # Five wrong passwords at once must not all reach qBittorrent (its fifth failure bans authproxy).
    budget = FailureBudget(5, 3600)
    refusals = [await budget.begin() for _ in range(6)]
    assert refusals[:4] == [None] * 4
    assert [(r.busy, r.seconds) for r in refusals[4:] if r is not None] == [(True, 2), (True, 2)]
    await budget.abandon()                 # one never reached qBittorrent: its place is free again
    assert await budget.begin() is None
    for _ in range(4):
        await budget.failed()
    assert await budget.count() == 4 and (await budget.begin()) == Refusal(3600, busy=False)
    # A success settles its own place and clears the count; places still in flight stay held.
    fresh = FailureBudget(5, 3600)
    assert await fresh.begin() is None and await fresh.begin() is None
    await fresh.failed()
    await fresh.succeeded()
    assert await fresh.count() == 0
    assert [await fresh.begin() for _ in range(5)][-1] is not None   # 4 places: none was leaked
    off = FailureBudget(0, 3600)
    assert all([await off.begin() is None for _ in range(20)])


async def test_qbittorrent_budget_after_its_pause_lets_one_attempt_at_a_time_try() -> None:
    now = [1000.0]
    budget = FailureBudget(5, 3600, clock=lambda: now[0])
    for _ in range(4):
        assert await budget.begin() is None
        await budget.failed()
    assert await budget.begin() == Refusal(3600, busy=False)
    now[0] += 3601                       # the pause is over; qBittorrent still counts 4 (it never decays)
    assert await budget.begin() is None
    assert await budget.begin() == Refusal(2, busy=True)    # a second at once could not be told apart
    await budget.failed()                # the 5th: qBittorrent bans now and will forget the count
    assert await budget.count() == 0 and await budget.wait() == 3600
    now[0] += 3601
    assert await budget.begin() is None   # a fresh start, as qBittorrent's own
    await budget.succeeded()


async def test_qbittorrent_budget_in_the_store_is_one_count_for_every_process() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    await store.start()
    try:
        replicas = [FailureBudget(5, 3600, site="qbt"), FailureBudget(5, 3600, site="qbt")]
        for budget in replicas:
            budget.bind_store(store)
        for i in range(3):
            await replicas[i % 2].failed()
            assert await replicas[0].wait() is None and await replicas[1].wait() is None
        await replicas[1].failed()     # the 4th in all: both stop asking, whichever counted it
        assert await replicas[0].wait() == 3600 and await replicas[1].wait() == 3600
        now[0] += 3601
        assert await replicas[0].wait() is None
        await replicas[0].succeeded()  # a success anywhere clears the shared count
        await replicas[1].failed()
        assert await replicas[0].wait() is None
        other = FailureBudget(5, 3600, site="other")   # another qBittorrent site counts apart
        other.bind_store(store)
        assert await other.wait() is None
    finally:
        await store.close()
