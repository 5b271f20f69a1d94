"""Sign-in through the gateway against the fake Technitium: JSON API, HTML form, TOTP, bad input."""

from __future__ import annotations

from yarl import URL

from tests.fakes.technitium import FakeTechnitium
from tests.integration.conftest import BROWSER, LOGIN, ME, SESSION, Audit
from tests.support.gateway import Gateway, GatewayClient

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_login_without_totp_opens_a_session(client: GatewayClient, technitium: FakeTechnitium) -> None:
    resp = await client.login("alice", "alice-pass")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["authenticated"] is True and body["user"] == "alice" and body["site"] == "technitium"
    assert body["redirect"] == "/"
    assert body["expiresAt"] > body["idleExpiresAt"] > 0
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("__Host-authproxy=v1.")
    for attr in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/"):
        assert attr in cookie
    assert "Domain" not in cookie
    # The upstream token never reaches the browser: not in the body, not in a header.
    [token] = technitium.sessions
    assert token not in await resp.text() and token not in str(resp.headers)
    # The session works for the next request and the upstream sees alice's own token.
    echo = await client.request("GET", "/api/echo")
    assert echo.status == 200
    data = await echo.json()
    assert data["status"] == "ok" and data["response"]["session"]["username"] == "alice"
    assert technitium.requests_to("/api/echo")[-1].headers["Authorization"] == f"Bearer {token}"
    # Where the upstream echoes its token in a JSON answer, the browser sees a placeholder instead.
    assert token not in await echo.text()


async def test_login_regenerates_the_session_id(client: GatewayClient) -> None:
    await client.login("alice", "alice-pass")
    first = client.cookie
    await client.login("alice", "alice-pass")
    assert client.cookie and client.cookie != first
    # The previous ticket is dead (no fixation, no forgotten twin sessions).
    stale = await client.request("GET", SESSION, headers={"Cookie": f"{client.cookie_name}={first}"})
    assert (await stale.json())["authenticated"] is False


async def test_totp_two_steps_through_the_json_api(client: GatewayClient, technitium: FakeTechnitium) -> None:
    first = await client.login("totpuser", "totp-pass")
    body = await first.json()
    assert first.status == 401 and body["error"] == "totp_required"
    assert "Set-Cookie" not in first.headers
    # The portal's own script (X-Authproxy-Portal: 1) gets the prompt as an ordinary answer instead.
    portal = await client.request("POST", LOGIN, json={"username": "totpuser", "password": "totp-pass"},
                                  headers={"X-Authproxy-Portal": "1"})
    assert portal.status == 200 and "Set-Cookie" not in portal.headers
    assert (await portal.json())["step"] == "totp" and (await portal.json())["authenticated"] is False
    wrong = await client.login("totpuser", "totp-pass", totp="000000")
    assert wrong.status == 401 and (await wrong.json())["error"] == "invalid_credentials"
    ok = await client.login("totpuser", "totp-pass", totp=technitium.totp_now())
    assert ok.status == 200, await ok.text()
    assert (await ok.json())["user"] == "totpuser"
    me = await client.request("GET", ME)
    assert (await me.json())["user"] == "totpuser"


async def test_totp_two_steps_through_the_html_form(
    client: GatewayClient, technitium: FakeTechnitium
) -> None:
    page = await client.request("GET", "/_authproxy/login?rd=/zones", headers=BROWSER)
    html = await page.text()
    assert page.status == 200 and 'name="rd" value="/zones"' in html
    assert "Content-Security-Policy" in page.headers

    step1 = await client.request("POST", LOGIN, data="username=totpuser&password=totp-pass&rd=%2Fzones",
                                 headers={**FORM, **BROWSER})
    text = await step1.text()
    # The second step is a prompt, not a failure: 200, the notice shown and the error box hidden.
    assert step1.status == 200 and step1.content_type == "text/html"
    assert 'id="totp-field" hidden' not in text and 'id="totp-field"' in text
    assert 'class="error" role="alert" aria-live="assertive" hidden' in text
    assert 'class="notice" role="status">' in text
    assert 'name="rd" value="/zones"' in text  # the return URL survives the second step
    assert 'value="totpuser"' in text  # the person does not have to type the name again
    assert "totp-pass" not in text  # the password is never echoed back
    assert "Set-Cookie" not in step1.headers

    code = technitium.totp_now()
    step2 = await client.request(
        "POST", LOGIN, data=f"username=totpuser&password=totp-pass&totp={code}&rd=%2Fzones",
        headers={**FORM, **BROWSER})
    assert step2.status == 303, await step2.text()
    assert step2.headers["Location"] == "/zones"
    assert client.cookie
    assert (await (await client.request("GET", ME)).json())["user"] == "totpuser"


async def test_wrong_password_gets_one_uniform_answer(client: GatewayClient, audit: Audit) -> None:
    bad_pass = await client.login("alice", "nope")
    bad_user = await client.login("nobody", "nope")
    a, b = await bad_pass.json(), await bad_user.json()
    assert bad_pass.status == bad_user.status == 401
    assert a == b == {"error": "invalid_credentials", "message": "Invalid username or password."}
    assert "Set-Cookie" not in bad_pass.headers
    lines = audit.lines("login")
    assert [(x["user"], x["outcome"]) for x in lines] == [("alice", "failure"), ("nobody", "failure")]


async def test_form_post_with_wrong_password_shows_the_page_again(client: GatewayClient) -> None:
    resp = await client.request("POST", LOGIN, data="username=alice&password=nope",
                                headers={**FORM, **BROWSER})
    text = await resp.text()
    assert resp.status == 401 and "Invalid username or password." in text
    assert "nope" not in text


async def test_cross_site_form_post_is_refused(client: GatewayClient) -> None:
    resp = await client.request("POST", LOGIN, data="username=alice&password=alice-pass",
                                headers={**FORM, "Origin": "https://evil.example"})
    assert resp.status == 403
    assert client.cookie is None


async def test_bad_json_and_wrong_content_types_get_clear_4xx(client: GatewayClient,
                                                              technitium: FakeTechnitium) -> None:
    cases = [
        ({"Content-Type": "application/json"}, b"{not json", 400, "bad_json"),
        ({"Content-Type": "application/json"}, b"", 400, "bad_request"),
        ({"Content-Type": "application/json"}, b"[1,2]", 400, "bad_request"),
        ({"Content-Type": "application/json"}, b'{"username": "alice"}', 400, "bad_request"),
        ({"Content-Type": "application/json"}, b'{"username": 5, "password": []}', 400, "bad_request"),
        (
            {"Content-Type": "application/json"},
            b'{"username": "a\\u0000b", "password": "x"}',
            400,
            "bad_request",
        ),
        (
            {"Content-Type": "application/json"},
            b'{"username": "alice", "password": "x", "totp": "12ab"}',
            400,
            "bad_request",
        ),
        ({"Content-Type": "application/json"}, b"\xff\xfe", 400, "bad_json"),
        ({"Content-Type": "text/plain"}, b"username=alice", 415, "unsupported_media_type"),
        ({}, b"", 415, "unsupported_media_type"),
        (
            {"Content-Type": "application/x-www-form-urlencoded"},
            b"username=%ff&password=x",
            400,
            "bad_request",
        ),
        (
            {"Content-Type": "application/json"},
            b'{"username":"alice","password":"' + b"x" * 20000 + b'"}',
            413,
            "bad_request",
        ),
    ]
    for headers, body, status, code in cases:
        resp = await client.request("POST", LOGIN, data=body, headers=headers)
        assert resp.status == status, (body[:40], await resp.text())
        if resp.content_type == "application/json":
            assert (await resp.json())["error"] == code, body[:40]
        else:  # a form post answers with the page, carrying the message
            assert "<form" in await resp.text()
    assert technitium.requests_to("/api/user/login") == []  # nothing reached the upstream


async def test_deep_json_and_names_that_are_not_text_get_400(client: GatewayClient,
                                                             technitium: FakeTechnitium) -> None:
    """Both were 500s: json.loads raises RecursionError (not ValueError) on deep nesting, and a lone
    surrogate (`\\ud800`, valid JSON) broke the throttle key's `.encode()` after parsing."""
    def login(name: str, password: str = "x") -> bytes:
        return b'{"username": "' + name.encode() + b'", "password": "' + password.encode() + b'"}'

    cases = [
        (b"[" * 15000, "bad_json", "not valid JSON"),
        (b"[" * 8000 + b"]" * 8000, "bad_json", "not valid JSON"),
        (b'{"a":' * 1200 + b"1" + b"}" * 1200, "bad_json", "not valid JSON"),
        (
            b'{"username": "alice", "password": "x", "totp": ' + b"9" * 5000 + b"}",
            "bad_json",
            "not valid JSON",
        ),
        (login("\\ud800"), "bad_request", "username is not valid text"),
        (login("ali\\udfffce"), "bad_request", "username is not valid text"),
        (login("alice\\u0085"), "bad_request", "username contains a control character"),
        (login("alice\\u009b2J"), "bad_request", "username contains a control character"),
        (login("alice", "pa\\ud83dss"), "bad_request", "password is not valid text"),
        (
            b'{"username": "alice", "password": "x", "totp": "\\u0661\\u0662\\u0663\\u0664\\u0665\\u0666"}',
            "bad_request",
            "code must be digits",
        ),
    ]
    for body, code, message in cases:
        resp = await client.request("POST", LOGIN, data=body, headers={"Content-Type": "application/json"})
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (400, code), (body[:60], answer)
        assert message in answer["message"], answer
    assert technitium.requests_to("/api/user/login") == []  # refused before the throttle and the upstream
    ok = await client.login("alice", "alice-pass")  # and the address was not counted against
    assert ok.status == 200


async def test_open_redirect_rd_values_fall_back_to_root(client: GatewayClient) -> None:
    evil = ["https://evil.example/", "//evil.example", "/\\evil.example", "http://evil.example",
            "javascript:alert(1)", "/%2F%2Fevil.example", "/ok\r\nSet-Cookie: x=1", "https:evil.example",
            "/%0d%0aLocation:%20https://evil.example", "\\\\evil.example", " /x", "/a/../..//evil.example"]
    for rd in evil:
        resp = await client.login("alice", "alice-pass", rd=rd)
        assert resp.status == 200
        assert (await resp.json())["redirect"] == "/", rd
        form = await client.request(
            "POST", LOGIN, data={"username": "alice", "password": "alice-pass", "rd": rd}, headers=BROWSER
        )
        assert form.status == 303 and form.headers["Location"] == "/", rd
    good = await client.login("alice", "alice-pass", rd="/zones?x=1#top")
    assert (await good.json())["redirect"] == "/zones?x=1#top"


async def test_login_page_escapes_rd(client: GatewayClient) -> None:
    resp = await client.request("GET", '/_authproxy/login?rd="><script>alert(1)</script>', headers=BROWSER)
    text = await resp.text()
    assert resp.status == 200 and "<script>alert(1)" not in text and "&lt;script&gt;" in text


async def test_session_and_me_endpoints(client: GatewayClient) -> None:
    anon = await (await client.request("GET", SESSION)).json()
    assert anon == {"authenticated": False}
    me = await (await client.request("GET", ME)).json()
    assert me["authenticated"] is False and me["httpsDetected"] is True and me["admin"] is False
    assert "trustProxy" not in me and "sites" not in me   # for administrators only
    assert me["sessionAuthEnabled"] is True and me["loginUrl"] == "/_authproxy/login"
    await client.login("alice", "alice-pass")
    info = await (await client.request("GET", SESSION)).json()
    assert info["authenticated"] is True and info["user"] == "alice" and info["sites"] == ["technitium"]
    assert info["displayName"] == "Alice Example" and info["permissions"]["Zones"]["canModify"] is True
    assert "token" not in str(info).lower()
    me = await (await client.request("GET", ME)).json()
    assert me["authenticated"] is True and me["user"] == "alice"
    assert me["admin"] is True and me["trustProxy"] is True   # alice administers Technitium


async def test_unauthenticated_browser_goes_to_login_and_api_gets_401(client: GatewayClient) -> None:
    page = await client.request("GET", "/zones.html?x=1", headers=BROWSER)
    assert page.status == 302
    location = URL(page.headers["Location"])
    assert location.path == "/_authproxy/login" and location.query["rd"] == "/zones.html?x=1"
    api = await client.request("GET", "/api/zones/list")
    assert api.status == 401 and (await api.json())["error"] == "unauthenticated"


async def test_upstream_x_real_ip_is_the_client(client: GatewayClient, technitium: FakeTechnitium) -> None:
    await client.login("alice", "alice-pass", )
    [login] = technitium.requests_to("/api/user/login")
    assert login.x_real_ip == "127.0.0.1"
    assert "alice-pass" not in login.raw_query  # the password goes in the POST body, never the URL


async def test_login_works_for_a_v14_upstream(make_gateway: object, technitium_v14: FakeTechnitium,
                                              client_for: object) -> None:
    from tests.support.gateway import gateway_env

    gw: Gateway = await make_gateway(gateway_env(technitium_v14.url))  # type: ignore[operator]
    c: GatewayClient = client_for(gw)  # type: ignore[operator]
    resp = await c.login("totpuser", "totp-pass", totp=technitium_v14.totp_now())
    assert resp.status == 200, await resp.text()


# ---- HTTPS enforcement ---------------------------------------------------------------------------------

async def test_login_over_plain_http_is_refused_behind_a_trusted_proxy(client: GatewayClient,
                                                                       technitium: FakeTechnitium) -> None:
    client.headers = {}  # no X-Forwarded-Proto: the proxy in front spoke plain http
    resp = await client.login("alice", "alice-pass")
    body = await resp.json()
    assert resp.status == 400 and body["error"] == "https_required" and "https://" in body["message"]
    assert "Set-Cookie" not in resp.headers
    form = await client.request("POST", LOGIN, data={"username": "alice", "password": "alice-pass"},
                                headers=BROWSER)
    assert form.status == 400 and "HTTPS" in await form.text()
    assert technitium.requests_to("/api/user/login") == []  # the password never went anywhere


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
        make_gateway: object, technitium: FakeTechnitium, client_for: object, audit: Audit) -> None:
    from tests.support.gateway import gateway_env

    gw: Gateway = await make_gateway(  # type: ignore[operator]
        gateway_env(technitium.url, TRUSTED_PROXIES="10.0.0.0/8"))
    c: GatewayClient = client_for(gw)  # type: ignore[operator]
    resp = await c.request("POST", LOGIN, json={"username": "alice", "password": "alice-pass"},
                           headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.1",
                                    "X-Forwarded-Host": "evil.example"})
    assert resp.status == 400 and (await resp.json())["error"] == "https_required"
    me = await (await c.request("GET", ME, headers={"X-Forwarded-Proto": "https"})).json()
    assert me["httpsDetected"] is False
    assert technitium.requests_to("/api/user/login") == []
