"""Placeholders for Technitium's web UI, without a browser: what the UI's own calls get through authproxy.

The UI must hold *a* token; it holds a per-session placeholder (HMAC of the session's ticket key and the
site), the real token stays in the sealed session and is injected from the cookie. Every answer any test
here receives is recorded, and the module's fixture checks at the end that no token the fake ever
minted (session, API and single-use tokens) appeared in any of them.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zipfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from authproxy import keys
from authproxy.sessions.ticket import decode_ticket
from authproxy.upstreams.substitute import derived_placeholder, rewrite_tokens, session_placeholder
from tests.fakes.technitium import FakeTechnitium
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env

HEX64 = re.compile(r"[0-9a-f]{64}")
XHR = {"X-Requested-With": "XMLHttpRequest"}
NAVIGATE = {"Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Mode": "navigate"}
UI_LOGIN = "/api/user/login"
INVALID = {"status": "invalid-token", "errorMessage": "Invalid token or session expired."}


class Answers:
    """Every answer the tests received (status, headers, body), for the no-leak check at teardown."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, list[tuple[str, str]], bytes]] = []

    async def call(self, client: GatewayClient, method: str, path: str, *, bearer: str | None = None,
                   headers: dict[str, str] | None = None, **kw: Any) -> tuple[aiohttp.ClientResponse, bytes]:
        h = dict(XHR)
        if bearer is not None:
            h["Authorization"] = f"Bearer {bearer}"
        h.update(headers or {})
        resp = await client.request(method, path, headers=h, **kw)
        body = await resp.read()
        self.seen.append((path, resp.status, list(resp.headers.items()), body))
        return resp, body

    async def json(self, client: GatewayClient, method: str, path: str, **kw: Any) -> dict[str, Any]:
        resp, body = await self.call(client, method, path, **kw)
        assert resp.status == 200, body
        assert resp.content_type == "application/json", resp.content_type
        data: dict[str, Any] = json.loads(body)
        return data


@pytest.fixture
async def answers(technitium: FakeTechnitium) -> AsyncIterator[Answers]:
    recorded = Answers()
    yield recorded
    tokens = set(technitium.issued_tokens)
    for path, _status, headers, body in recorded.seen:
        for token in tokens:
            assert token.encode() not in body, f"a real Technitium token in the answer to {path}"
            assert all(token not in v for _, v in headers), f"a real Technitium token in a header of {path}"


def placeholder_for(gw: Gateway, client: GatewayClient) -> str:
    assert client.cookie
    ticket = decode_ticket(client.cookie, gw.app[keys.SESSIONS].keyring)
    assert ticket is not None
    return session_placeholder(ticket.key, gw.config.sites[0].name)


def standard_tokens(fake: FakeTechnitium, user: str) -> list[str]:
    return [t for t, s in fake.sessions.items() if s.username == user and s.type == "Standard"]


async def ui_login(answers: Answers, client: GatewayClient, user: str, password: str,
                   totp: str = "", **kw: Any) -> dict[str, Any]:
    """The UI's own login call, exactly as its auth.js sends it (a urlencoded POST, totp always present)."""
    return await answers.json(
        client,
        "POST",
        UI_LOGIN,
        data={"user": user, "pass": password, "totp": totp, "includeInfo": "true"},
        **kw,
    )


# ---------------------------------------------------------------- the pure part


def test_placeholders_have_a_tokens_shape_and_depend_on_session_and_site() -> None:
    a, b = b"a" * 32, b"b" * 32
    p = session_placeholder(a, "dns")
    assert HEX64.fullmatch(p)
    assert p == session_placeholder(a, "dns")
    assert len({p, session_placeholder(b, "dns"), session_placeholder(a, "dns2"),
                derived_placeholder(a, "dns", "x" * 64)}) == 4


def test_rewrite_replaces_every_real_token_and_the_token_fields() -> None:
    key, real, other = b"k" * 32, "a" * 64, "b" * 64
    own = session_placeholder(key, "dns")
    body = json.dumps({"token": real, "note": f"x{real}y", "response": {"token": other}}).encode()
    out = json.loads(rewrite_tokens(body, key=key, site="dns", real=real))
    assert out == {
        "token": own,
        "note": f"x{own}y",
        "response": {"token": derived_placeholder(key, "dns", other)},
    }
    # Not JSON, or no token field: only the raw replacement, bytes otherwise untouched.
    assert (
        rewrite_tokens(b"plain " + real.encode(), key=key, site="dns", real=real) == b"plain " + own.encode()
    )
    untouched = b'{"status": "ok",  "zones": []}'
    assert rewrite_tokens(untouched, key=key, site="dns", real=real) is untouched


# ---------------------------------------------------------------- the UI's login, session and logout


async def test_ui_login_answers_in_technitiums_envelope_with_the_placeholder(
        gw: Gateway, client: GatewayClient, technitium: FakeTechnitium, answers: Answers) -> None:
    body = await ui_login(answers, client, "alice", "alice-pass")
    assert body["status"] == "ok" and body["username"] == "alice" and body["displayName"] == "Alice Example"
    assert body["info"]["version"] == "15.2" and body["info"]["permissions"]["Zones"]["canView"] is True
    assert client.cookie, "the UI login must sign in at authproxy too"
    assert body["token"] == placeholder_for(gw, client)
    (real,) = standard_tokens(technitium, "alice")
    assert body["token"] != real

    # The UI sends the placeholder back; the upstream gets the real token instead.
    zones = await answers.json(client, "POST", "/api/zones/list", bearer=body["token"])
    assert zones["status"] == "ok"
    assert technitium.requests_to("/api/zones/list")[-1].headers["Authorization"] == f"Bearer {real}"

    # session/get, as the UI calls it on every page load: forwarded, token rewritten.
    again = await answers.json(client, "POST", "/api/user/session/get", bearer=body["token"])
    assert again["status"] == "ok" and again["token"] == body["token"]
    assert technitium.requests_to("/api/user/session/get")[-1].headers["Authorization"] == f"Bearer {real}"


async def test_ui_login_with_totp_takes_two_steps(
        gw: Gateway, client: GatewayClient, technitium: FakeTechnitium, answers: Answers) -> None:
    first = await ui_login(answers, client, "totpuser", "totp-pass")
    assert first["status"] == "2fa-required" and first["errorMessage"]
    assert client.cookie is None
    wrong = await ui_login(answers, client, "totpuser", "totp-pass", totp="000000")
    assert wrong["status"] == "error" and client.cookie is None
    ok = await ui_login(answers, client, "totpuser", "totp-pass", totp=technitium.totp_now())
    assert ok["status"] == "ok" and ok["totpEnabled"] is True
    assert ok["token"] == placeholder_for(gw, client)


async def test_wrong_password_is_an_error_envelope_and_admin_admin_is_not_counted(
        gw: Gateway, client: GatewayClient, technitium: FakeTechnitium, answers: Answers) -> None:
    # The UI tries admin/admin by itself on every load without a token: never a throttled failure.
    for _ in range(gw.config.throttle.max_failures + 2):
        body = await ui_login(answers, client, "admin", "admin")
        assert body["status"] == "error" and "Too many" not in body["errorMessage"]
    assert technitium.failed_attempts == {}
    assert (await ui_login(answers, client, "alice", "alice-pass"))["status"] == "ok"

    # Real failures are counted (authproxy's own throttle answers before the upstream is asked).
    other = GatewayClient(base=client.base, http=client.http, cookie_name=client.cookie_name)
    for _ in range(gw.config.throttle.max_failures):
        body = await ui_login(answers, other, "alice", "wrong")
        assert body == {"status": "error", "errorMessage": "Invalid username or password."}
    throttled = await ui_login(answers, other, "alice", "alice-pass")
    assert throttled["status"] == "error" and "Too many" in throttled["errorMessage"]
    assert other.cookie is None


async def test_without_a_session_the_ui_calls_say_invalid_token(
        client: GatewayClient, answers: Answers, technitium: FakeTechnitium) -> None:
    for path in ("/api/user/session/get", "/api/user/logout"):
        body = await answers.json(client, "POST", path, bearer="f" * 64)
        assert body == INVALID
    # Any API call with a token (header or query, as v15 and v14 UIs send it) gets Technitium's own
    # answer for a dead token, so the UI shows its login form rather than "Unable to connect".
    assert await answers.json(client, "POST", "/api/zones/list", bearer="f" * 64) == INVALID
    assert await answers.json(client, "GET", "/api/dashboard/stats/get?token=" + "f" * 64) == INVALID
    # Without a token it is not the UI: the gateway's own 401 for an API client, the login page for a page.
    resp, body = await answers.call(client, "POST", "/api/zones/list")
    assert resp.status == 401 and json.loads(body)["error"] == "unauthenticated"
    resp = await client.request("GET", "/index.html?token=" + "f" * 64, headers={"Accept": "text/html"},
                                allow_redirects=False)
    assert resp.status == 302 and "/_authproxy/login" in resp.headers["Location"]
    assert technitium.requests_to("/api/zones/list") == []


async def test_a_token_the_upstream_calls_dead_signs_the_ui_out_in_its_own_words(
        client: GatewayClient, answers: Answers, technitium: FakeTechnitium) -> None:
    assert (await client.login("alice", "alice-pass")).status == 200
    technitium.sessions.clear()                     # Technitium restarted: every token is gone
    assert await answers.json(client, "POST", "/api/zones/list", bearer="f" * 64) == INVALID
    resp = await client.request("GET", "/_authproxy/api/auth/session")
    assert (await resp.json())["authenticated"] is False


async def test_ui_login_refuses_cross_site_posts_and_plain_http(
        client: GatewayClient, technitium: FakeTechnitium, answers: Answers) -> None:
    body = await ui_login(answers, client, "alice", "alice-pass", headers={"Origin": "https://evil.example"})
    assert body["status"] == "error" and client.cookie is None
    plain = GatewayClient(base=client.base, http=client.http, cookie_name=client.cookie_name, headers={})
    body = await ui_login(answers, plain, "alice", "alice-pass")
    assert body["status"] == "error" and "HTTPS" in body["errorMessage"] and plain.cookie is None
    assert technitium.requests_to(UI_LOGIN) == []


async def test_ui_logout_ends_the_authproxy_session_and_the_placeholder_with_it(
        gw: Gateway, client: GatewayClient, technitium: FakeTechnitium, answers: Answers) -> None:
    placeholder = (await ui_login(answers, client, "alice", "alice-pass"))["token"]
    cookie = client.cookie
    (real,) = standard_tokens(technitium, "alice")

    body = await answers.json(client, "POST", "/api/user/logout", bearer=placeholder)
    assert body == {"status": "ok"}
    assert client.cookie in (None, '""')  # cleared
    assert real not in technitium.sessions  # the upstream session ended too

    # The old cookie and the placeholder are worth nothing now.
    client.cookie = cookie
    assert await answers.json(client, "POST", "/api/user/session/get", bearer=placeholder) == INVALID
    before = len(technitium.requests_to("/api/zones/list"))
    assert await answers.json(client, "POST", "/api/zones/list", bearer=placeholder) == INVALID
    assert await answers.json(client, "GET", f"/api/zones/list?token={placeholder}") == INVALID
    assert len(technitium.requests_to("/api/zones/list")) == before      # never reached the upstream


async def test_a_placeholder_from_another_session_is_worthless(
        gw: Gateway, client_for: Callable[[Gateway], GatewayClient], technitium: FakeTechnitium,
        answers: Answers) -> None:
    a, b = client_for(gw), client_for(gw)
    pa = (await ui_login(answers, a, "alice", "alice-pass"))["token"]
    pb = (await ui_login(answers, b, "totpuser", "totp-pass", totp=technitium.totp_now()))["token"]
    assert pa != pb

    # Alice's placeholder with Bob's cookie acts as Bob: the credential comes from the cookie only.
    echo = await answers.json(b, "POST", "/api/echo", bearer=pa)
    assert echo["response"]["session"]["username"] == "totpuser"
    (real_b,) = standard_tokens(technitium, "totpuser")
    assert technitium.requests_to("/api/echo")[-1].headers["Authorization"] == f"Bearer {real_b}"

    # Alice's placeholder without any cookie: nothing (header or query alike).
    nobody = client_for(gw)
    before = len(technitium.requests_to("/api/echo"))
    assert await answers.json(nobody, "POST", "/api/echo", bearer=pa) == INVALID
    assert await answers.json(nobody, "GET", f"/api/echo?token={pa}") == INVALID
    assert await answers.json(nobody, "POST", "/api/user/session/get", bearer=pa) == INVALID
    assert len(technitium.requests_to("/api/echo")) == before


async def test_single_use_tokens_are_placeholders_and_downloads_still_work(
        gw: Gateway, client: GatewayClient, technitium: FakeTechnitium, answers: Answers) -> None:
    placeholder = (await ui_login(answers, client, "alice", "alice-pass"))["token"]
    (real,) = standard_tokens(technitium, "alice")
    minted = len(technitium.issued_tokens)

    body = await answers.json(client, "POST", "/api/user/createSingleUseToken", bearer=placeholder)
    single = body["response"]["token"]
    (real_single,) = technitium.issued_tokens[minted:]
    assert HEX64.fullmatch(single) and single not in (real_single, placeholder)
    assert body["response"]["username"] == "alice"

    resp, data = await answers.call(client, "GET", f"/api/settings/backup?zones=true&token={single}")
    assert resp.status == 200 and resp.content_type == "application/zip"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert "dns.config" in zf.namelist()
    backup = technitium.requests_to("/api/settings/backup")[-1]
    assert backup.headers["Authorization"] == f"Bearer {real}" and "token" not in backup.query


async def test_create_token_answers_a_placeholder(
        gw: Gateway, client: GatewayClient, technitium: FakeTechnitium, answers: Answers) -> None:
    placeholder = (await ui_login(answers, client, "alice", "alice-pass"))["token"]
    body = await answers.json(client, "POST", "/api/user/createToken",
                              data={"user": "alice", "pass": "alice-pass", "tokenName": "script"},
                              bearer=placeholder)
    assert body["status"] == "ok" and body["tokenName"] == "script"
    (api_token,) = [t for t, s in technitium.sessions.items() if s.type == "ApiToken"]
    assert HEX64.fullmatch(body["token"]) and body["token"] not in (api_token, placeholder)


async def test_case_variants_and_compressed_answers_are_rewritten(
        gw: Gateway, client: GatewayClient, technitium: FakeTechnitium, answers: Answers) -> None:
    technitium.compress = True  # what Technitium's UseResponseCompression does for a gzip-capable client
    placeholder = (await ui_login(answers, client, "alice", "alice-pass"))["token"]
    gzip_ok = {"Accept-Encoding": "gzip, deflate, br"}
    for path in ("/api/user/session/get", "/API/User/Session/Get", "/api/user/session/get/",
                 "/api/user/%73ession/get"):
        resp, raw = await answers.call(client, "POST", path, bearer=placeholder, headers=gzip_ok,
                                       auto_decompress=False)
        assert resp.status == 200 and "Content-Encoding" not in resp.headers, path
        body = json.loads(raw)
        assert body["status"] == "ok", (path, body)
        assert (body.get("response") or body)["token"] == placeholder, path
    # The upstream was asked without Accept-Encoding, so it could not compress what the proxy reads.
    assert "Accept-Encoding" not in technitium.requests_to("/api/user/session/get")[-1].headers
    # Outside /api/ the browser's Accept-Encoding still goes through.
    await answers.call(client, "GET", "/", headers=gzip_ok)
    assert technitium.requests_to("/")[-1].headers.get("Accept-Encoding") == "gzip, deflate, br"
    # And a compressed answer is seen as such by a client (the fake really compresses).
    async with client.http.get(technitium.url + "/api/user/session/get", headers={
            "Authorization": f"Bearer {standard_tokens(technitium, 'alice')[0]}", **gzip_ok},
            auto_decompress=False) as direct:
        assert direct.headers["Content-Encoding"] == "gzip"
        assert json.loads(gzip.decompress(await direct.read()))["status"] == "ok"


async def test_answers_too_large_to_rewrite_whole_still_never_show_the_token(
        gw: Gateway, client: GatewayClient, technitium: FakeTechnitium, answers: Answers) -> None:
    # Over 1 MiB an answer is streamed, not rewritten whole: the session's token is still replaced as
    # it passes, across the upstream's write boundaries, by its placeholder (same length: the
    # Content-Length stays true).
    placeholder = (await ui_login(answers, client, "alice", "alice-pass"))["token"]
    (real,) = standard_tokens(technitium, "alice")
    technitium.echo_padding = (1 << 20) + 5000
    for chunk in (0, 1000, 4093, 65536):
        technitium.chunk_answers = chunk
        resp, raw = await answers.call(client, "GET", "/api/echo", bearer=placeholder)
        assert resp.status == 200, chunk
        assert ("Content-Length" in resp.headers) == (chunk == 0)
        got = json.loads(raw)
        assert got["status"] == "ok" and len(got["response"]["padding"]) == technitium.echo_padding
        assert got["response"]["headers"]["authorization"] == f"Bearer {placeholder}", chunk
        assert real.encode() not in raw
    assert technitium.requests_to("/api/echo")[-1].headers["Authorization"] == f"Bearer {real}"


# ---------------------------------------------------------------- the handoff after a portal sign-in


async def test_after_a_portal_sign_in_the_first_page_load_hands_over_the_placeholder_once(
        gw: Gateway, client: GatewayClient, technitium: FakeTechnitium, answers: Answers) -> None:
    await client.login("alice", "alice-pass")
    resp, _ = await answers.call(client, "GET", "/", headers=NAVIGATE)
    assert resp.status == 302 and resp.headers["Location"] == "/"
    (set_cookie,) = [v for v in resp.headers.getall("Set-Cookie") if v.startswith("token=")]
    attrs = [a.strip().lower() for a in set_cookie.split(";")]
    assert set_cookie.split(";")[0] == f"token={placeholder_for(gw, client)}"
    assert "max-age=120" in attrs and "secure" in attrs and "httponly" not in attrs and "path=/" in attrs
    # Once per credential: the next load is the UI itself (a browser that refused the cookie cannot loop).
    resp, page = await answers.call(client, "GET", "/", headers=NAVIGATE)
    assert resp.status == 200 and b"fake-technitium" in page
    # XHR and sub-resource loads never get it.
    await client.login("alice", "alice-pass")
    resp, _ = await answers.call(client, "GET", "/index.html", headers={"Sec-Fetch-Mode": "cors"})
    assert resp.status == 200
    # A UI that signed in through its own form already has the placeholder: no handoff for it.
    ui = GatewayClient(base=client.base, http=client.http, cookie_name=client.cookie_name)
    await ui_login(answers, ui, "alice", "alice-pass")
    resp, _ = await answers.call(ui, "GET", "/", headers=NAVIGATE)
    assert resp.status == 200


async def test_a_request_loads_its_session_once(
        gw: Gateway, client: GatewayClient, technitium: FakeTechnitium, answers: Answers) -> None:
    """The UI's calls that authproxy looks at before forwarding (its start page, session/get) and the
    forwarding itself read the one session kept on the request: one load (and idle slide) each."""
    await client.login("alice", "alice-pass")
    await answers.call(client, "GET", "/", headers=NAVIGATE)       # the handoff: the UI has its placeholder
    manager = gw.app[keys.SESSIONS]
    loads: list[bool] = []
    real_load = manager.load

    async def counting_load(cookie_value: str | None, **kw: Any) -> Any:
        loads.append(cookie_value == client.cookie)
        return await real_load(cookie_value, **kw)

    manager.load = counting_load  # type: ignore[method-assign]
    for path, headers in (("/", NAVIGATE), ("/api/user/session/get", XHR), ("/api/zones/list", XHR)):
        loads.clear()
        resp, _ = await answers.call(client, "GET", path, headers=headers)
        assert resp.status == 200, path
        assert loads == [True], path


# ---------------------------------------------------------------- v14 (token in the query)


@pytest.fixture
async def gw14(make_gateway: MakeGateway, technitium_v14: FakeTechnitium) -> Gateway:
    return await make_gateway(gateway_env(technitium_v14.url))


async def test_v14_ui_sends_the_placeholder_in_the_query(
        gw14: Gateway, client_for: Callable[[Gateway], GatewayClient], technitium_v14: FakeTechnitium,
        answers: Answers) -> None:
    client = client_for(gw14)
    body = await ui_login(answers, client, "alice", "alice-pass")
    placeholder = body["token"]
    assert placeholder == placeholder_for(gw14, client)
    (real,) = standard_tokens(technitium_v14, "alice")
    got = await answers.json(client, "POST", f"/api/user/session/get?token={placeholder}")
    assert got["token"] == placeholder
    await answers.json(client, "POST", f"/api/zones/list?token={placeholder}")
    seen = technitium_v14.requests_to("/api/zones/list")[-1]
    assert seen.query.getall("token") == [real]
    for _path, _status, _headers, raw in answers.seen:
        assert all(t.encode() not in raw for t in technitium_v14.issued_tokens)


# ---------------------------------------------------------------- AUTH_MODE=none


async def test_auth_mode_none_gives_the_ui_a_placeholder_for_the_service_token(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        technitium: FakeTechnitium, answers: Answers) -> None:
    service = technitium.create_session("alice", type="ApiToken", token_name="authproxy")
    gw = await make_gateway(gateway_env(technitium.url, AUTH_MODE="none", TECHNITIUM_TOKEN=service))
    client = client_for(gw)
    login = await ui_login(answers, client, "anyone", "anything")
    assert login["status"] == "ok" and HEX64.fullmatch(login["token"]) and login["token"] != service
    assert client.cookie is None
    got = await answers.json(client, "POST", "/api/user/session/get", bearer=login["token"])
    assert got["token"] == login["token"] and got["username"] == "alice"
    assert (await answers.json(client, "POST", "/api/zones/list", bearer=login["token"]))["status"] == "ok"
    # A forwarded answer that echoes the injected service token must show only its placeholder.
    echoed = await answers.json(client, "GET", "/api/echo", bearer=login["token"])
    assert echoed["status"] == "ok" and service not in json.dumps(echoed)
    assert await answers.json(client, "POST", "/api/user/logout") == {"status": "ok"}
    assert service in technitium.sessions


# ---------------------------------------------------------------- `//` in the path

@pytest.fixture
async def merging() -> AsyncIterator[tuple[FakeTechnitium, list[str]]]:
    """Technitium behind a server that reads `//api/x` as `/api/x` (nginx's merge_slashes, and many
    routers do); the list holds every request target as it arrived, before the merge."""
    fake = FakeTechnitium()
    fake.add_user("alice", "alice-pass", display_name="Alice Example")
    arrived: list[str] = []

    @web.middleware
    async def merge(request: web.Request, handler: Handler) -> web.StreamResponse:
        arrived.append(request.raw_path)
        rel = request.rel_url
        if "//" in rel.raw_path:
            request = request.clone(rel_url=URL.build(path=re.sub("/{2,}", "/", rel.raw_path),
                                                      query_string=rel.raw_query_string, encoded=True))
        return await handler(request)

    fake.app.middlewares.append(merge)
    await fake.start()
    try:
        yield fake, arrived
    finally:
        await fake.close()


async def test_doubled_slashes_are_the_api_too(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        merging: tuple[FakeTechnitium, list[str]]) -> None:
    """`//api/...` is Technitium's API to an upstream that merges slashes: the placeholder rewrite, the
    UI-login interception and the cross-site rule all apply, and the upstream gets the merged path."""
    fake, arrived = merging
    gw = await make_gateway(gateway_env(fake.url))
    client = client_for(gw)
    assert (await client.login("alice", "alice-pass")).status == 200
    (real,) = standard_tokens(fake, "alice")
    for path in ("//api/user/session/get", "///api//user/session/get", "/api//user/session//get"):
        resp = await client.request("POST", path, headers=XHR)
        body = await resp.read()
        assert resp.status == 200 and real.encode() not in body, path
        assert json.loads(body)["token"] == placeholder_for(gw, client), path
    assert [p for p in arrived if "//" in p] == []
    # The UI's login under another spelling is still authproxy's own sign-in (throttled, audited).
    before = len(fake.requests_to("/api/user/login"))
    resp = await client.request("POST", "//api/user//login", headers=XHR,
                                data={"user": "alice", "pass": "alice-pass", "totp": ""})
    answer = json.loads(await resp.read())
    assert answer["token"] == placeholder_for(gw, client) and real not in json.dumps(answer)
    logins = fake.requests_to("/api/user/login")[before:]   # authproxy's own call, not the browser's form
    assert [r.body for r in logins] == [b"user=alice&pass=alice-pass&includeInfo=true"]
    assert [p for p in arrived if "//" in p] == []
    # Another site's link into the API, however many slashes it has, acts with nobody's sign-in.
    nav = {**NAVIGATE, "Sec-Fetch-Site": "cross-site"}
    for path in ("//api/zones/delete?zone=example.com", "///API/zones/delete?zone=example.com"):
        resp = await client.request("GET", path, headers=nav)
        assert resp.status == 403, path
    assert fake.requests_to("/api/zones/delete") == []
