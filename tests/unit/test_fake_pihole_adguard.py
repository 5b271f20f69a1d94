"""The Pi-hole v6 and AdGuard Home fakes behave as the upstreams' API docs and code say.

Why: adapter tests are only as good as the fakes they run against; these pin each documented behaviour
(and each quirk found in the upstream source) so a fake cannot drift silently.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pyotp
import pytest

from tests.fakes.adguard import FakeAdGuard
from tests.fakes.pihole import FakeClock, FakePihole

PiholeFactory = Callable[..., Awaitable[FakePihole]]
AdGuardFactory = Callable[..., Awaitable[FakeAdGuard]]

SID_COOKIE = re.compile(r"^sid=([A-Za-z0-9+/]{22}=); SameSite=Lax; Path=/; Max-Age=(\d+); HttpOnly$")
PIHOLE_DELETE = "sid=deleted; SameSite=Lax; Path=/; Max-Age=-1; Expires=Thu, 01 Jan 1970 00:00:00 GMT;"
AGH_COOKIE = re.compile(
    r"^agh_session=([0-9a-f]{32}); Path=/; "
    r"Expires=\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT; HttpOnly; SameSite=Lax$"
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """No cookie jar, no redirects: every test states exactly what it sends and sees what comes back."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One request; body parsed as JSON when it is JSON."""
    kwargs.setdefault("allow_redirects", False)
    async with http.request(method, url, **kwargs) as resp:
        text = await resp.text()
        body: Any = text
        if resp.content_type == "application/json" and text:
            body = await resp.json()
        return resp.status, body, resp


def basic(fake: FakeAdGuard) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(fake.username, fake.password)}


async def pihole_login(http: aiohttp.ClientSession, fake: FakePihole, **extra: Any) -> dict[str, Any]:
    status, body, _ = await call(
        http, "POST", fake.url + "/api/auth", json={"password": fake.password, **extra}
    )
    assert status == 200, body
    session: dict[str, Any] = body["session"]
    return session


# ======================================================================================= Pi-hole


async def test_pihole_login_sets_session_cookie(pihole: FakePihole, http: aiohttp.ClientSession) -> None:
    status, body, resp = await call(
        http, "POST", pihole.url + "/api/auth", json={"password": pihole.password}
    )
    assert status == 200
    session = body["session"]
    assert session["valid"] is True and session["totp"] is False
    assert session["message"] == "password correct"
    assert session["validity"] == 1800
    assert isinstance(body["took"], float)
    match = SID_COOKIE.match(resp.headers["Set-Cookie"])
    assert match, resp.headers["Set-Cookie"]
    assert match.group(1) == session["sid"] and match.group(2) == "1800"
    assert len(session["csrf"]) == 23 and session["csrf"] != session["sid"]


async def test_pihole_wrong_password_is_401_and_deletes_cookie(
    pihole: FakePihole, http: aiohttp.ClientSession
) -> None:
    status, body, resp = await call(http, "POST", pihole.url + "/api/auth", json={"password": "nope"})
    assert status == 401
    assert body["session"] == {
        "valid": False,
        "totp": False,
        "sid": None,
        "validity": -1,
        "message": "password incorrect",
    }
    assert resp.headers["Set-Cookie"] == PIHOLE_DELETE


async def test_pihole_login_body_errors(pihole: FakePihole, http: aiohttp.ClientSession) -> None:
    status, body, _ = await call(http, "POST", pihole.url + "/api/auth")
    assert (status, body["error"]["key"], body["error"]["message"]) == (
        400,
        "bad_request",
        "No request body data",
    )
    status, body, _ = await call(http, "POST", pihole.url + "/api/auth", json={"pw": "x"})
    assert (status, body["error"]["message"]) == (400, "No password found in JSON payload")
    status, body, _ = await call(http, "POST", pihole.url + "/api/auth", data=b"{nope", headers={})
    assert status == 400 and "no valid JSON" in body["error"]["message"]


async def test_pihole_totp_rules(make_pihole: PiholeFactory, http: aiohttp.ClientSession) -> None:
    secret = pyotp.random_base32()
    clock = FakeClock(frozen=True)
    fake = await make_pihole(totp_secret=secret, clock=clock)
    url = fake.url + "/api/auth"

    status, body, _ = await call(http, "POST", url, json={"password": fake.password})
    assert (status, body["error"]["key"]) == (400, "bad_request")
    assert body["error"]["message"] == "No 2FA token found in JSON payload"

    status, body, _ = await call(http, "POST", url, json={"password": "wrong", "totp": 123456})
    assert status == 401 and body["session"]["message"] == "password incorrect"  # password checked first

    status, body, _ = await call(http, "POST", url, json={"password": fake.password, "totp": 0})
    assert (status, body["error"]["message"]) == (401, "Invalid 2FA token")

    status, body, _ = await call(http, "POST", url, json={"password": fake.password, "totp": 0})
    assert (status, body["error"]["key"]) == (429, "rate_limiting")  # one TOTP check per second

    clock.advance(1)
    code = int(pyotp.TOTP(secret).at(clock()))
    status, body, _ = await call(http, "POST", url, json={"password": fake.password, "totp": code})
    assert status == 200 and body["session"]["totp"] is True

    clock.advance(1)
    status, body, _ = await call(http, "POST", url, json={"password": fake.password, "totp": code})
    assert (status, body["error"]["message"]) == (401, "Reused 2FA token")

    status, body, _ = await call(http, "GET", url)
    assert status == 401 and body["session"]["totp"] is True  # how the login page learns 2FA is on


async def test_pihole_app_password(make_pihole: PiholeFactory, http: aiohttp.ClientSession) -> None:
    fake = await make_pihole(app_password="app-secret", totp_secret=pyotp.random_base32())
    status, body, _ = await call(http, "POST", fake.url + "/api/auth", json={"password": "app-secret"})
    assert status == 200  # app passwords skip TOTP
    assert body["session"]["message"] == "app-password correct"
    assert fake.sessions[0].app is True


async def test_pihole_credential_order(pihole: FakePihole, http: aiohttp.ClientSession) -> None:
    """body sid > header sid/X-FTL-SID > cookie sid > query ?sid= (FTL check_client_auth)."""
    a, b, c, d = (pihole.create_session() for _ in range(4))
    echo = pihole.url + "/api/echo"

    async def who(**kwargs: Any) -> tuple[str, int]:
        status, body, _ = await call(http, "POST", echo, **kwargs)
        assert status == 200, body
        return body["sid_source"], body["session_id"]

    cookie = {"Cookie": f"sid={c.sid}", "X-CSRF-TOKEN": c.csrf}
    assert await who(json={"sid": a.sid}, headers={"X-FTL-SID": b.sid, **cookie}, params={"sid": d.sid}) == (
        "payload",
        a.id,
    )
    assert await who(headers={"X-FTL-SID": b.sid, **cookie}, params={"sid": d.sid}) == ("header", b.id)
    assert await who(headers={"sid": b.sid, **cookie}, params={"sid": d.sid}) == ("header", b.id)
    assert await who(headers=cookie, params={"sid": d.sid}) == ("cookie", c.id)
    assert await who(params={"sid": d.sid}) == ("query", d.id)
    assert await who(
        data=f"sid={d.sid}".replace("+", "%2B").replace("/", "%2F"),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) == ("payload", d.id)
    # A wrong sid in a higher-priority place is not rescued by a right one lower down.
    status, _, _ = await call(
        http, "GET", pihole.url + "/api/stats/summary", headers={"X-FTL-SID": "bogus"}, params={"sid": d.sid}
    )
    assert status == 401


async def test_pihole_cookie_auth_needs_csrf_on_api(pihole: FakePihole, http: aiohttp.ClientSession) -> None:
    s = pihole.create_session()
    url = pihole.url + "/api/stats/summary"
    unauthorized = {"error": {"key": "unauthorized", "message": "Unauthorized", "hint": None}}

    status, body, resp = await call(http, "GET", url, headers={"Cookie": f"sid={s.sid}"})
    assert status == 401 and {k: body[k] for k in ("error",)} == unauthorized
    assert "Set-Cookie" not in resp.headers  # data endpoints do not touch the cookie
    status, _, _ = await call(http, "GET", url, headers={"Cookie": f"sid={s.sid}", "X-CSRF-TOKEN": "wrong"})
    assert status == 401
    status, body, _ = await call(http, "GET", url, headers={"Cookie": f"sid={s.sid}", "X-CSRF-TOKEN": s.csrf})
    assert status == 200 and body["queries"]["total"] > 0
    status, _, _ = await call(http, "GET", url, headers={"X-FTL-SID": s.sid})
    assert status == 200  # header auth needs no CSRF
    # /api/auth itself is checked without CSRF (is_api=false in FTL).
    status, body, _ = await call(http, "GET", pihole.url + "/api/auth", headers={"Cookie": f"sid={s.sid}"})
    assert status == 200 and body["session"]["valid"] is True


async def test_pihole_sliding_expiry_and_cookie_refresh(
    pihole: FakePihole, http: aiohttp.ClientSession
) -> None:
    session = await pihole_login(http, pihole)
    hdr = {"X-FTL-SID": session["sid"]}
    url = pihole.url + "/api/info/version"
    for _ in range(3):
        pihole.clock.advance(1000)  # 3000 s in total, more than one timeout: each call slides it
        status, body, resp = await call(http, "GET", url, headers=hdr)
        assert status == 200 and body["version"]["ftl"]["local"]["version"].startswith("v6")
        assert (
            resp.headers["Set-Cookie"]
            == f"sid={session['sid']}; SameSite=Lax; Path=/; Max-Age=1800; HttpOnly"
        )

    pihole.clock.advance(1801)
    status, body, resp = await call(http, "GET", url, headers=hdr)
    assert status == 401 and body["error"]["key"] == "unauthorized"
    assert "Set-Cookie" not in resp.headers
    status, body, resp = await call(http, "GET", pihole.url + "/api/auth", headers=hdr)
    assert status == 401
    assert body["session"] == {
        "valid": False,
        "totp": False,
        "sid": None,
        "validity": -1,
        "message": "session expired",
    }
    assert resp.headers["Set-Cookie"] == PIHOLE_DELETE


async def test_pihole_configured_timeout(make_pihole: PiholeFactory, http: aiohttp.ClientSession) -> None:
    fake = await make_pihole(timeout=300)
    session = await pihole_login(http, fake)
    assert session["validity"] == 300
    _, _, resp = await call(http, "GET", fake.url + "/api/echo", headers={"sid": session["sid"]})
    assert "Max-Age=300;" in resp.headers["Set-Cookie"]
    fake.clock.advance(301)
    status, _, _ = await call(http, "GET", fake.url + "/api/echo", headers={"sid": session["sid"]})
    assert status == 401


async def test_pihole_real_expiry_quirk(make_pihole: PiholeFactory, http: aiohttp.ClientSession) -> None:
    """FTL v6.0-6.4 accepts (and revives) an expired sid until a login reclaims its seat."""
    fake = await make_pihole(accept_expired_sessions=True)
    session = await pihole_login(http, fake)
    fake.clock.advance(5000)
    status, _, _ = await call(http, "GET", fake.url + "/api/stats/summary", headers={"sid": session["sid"]})
    assert status == 200
    fake.clock.advance(5000)
    await pihole_login(http, fake)  # reclaims the expired seat 0
    status, body, _ = await call(http, "GET", fake.url + "/api/auth", headers={"sid": session["sid"]})
    assert status == 401 and body["session"]["message"] == "session unknown"


async def test_pihole_logout(pihole: FakePihole, http: aiohttp.ClientSession) -> None:
    session = await pihole_login(http, pihole)
    hdr = {"X-FTL-SID": session["sid"]}
    status, body, resp = await call(http, "DELETE", pihole.url + "/api/auth", headers=hdr)
    assert status == 204 and body == ""
    assert resp.headers["Set-Cookie"] == PIHOLE_DELETE
    assert pihole.sessions == []
    # Without a session FTL's code answers 401 with the session object (its OpenAPI spec says 404).
    status, body, _ = await call(http, "DELETE", pihole.url + "/api/auth", headers=hdr)
    assert status == 401 and body["session"]["message"] == "session unknown"
    status, body, _ = await call(http, "GET", pihole.url + "/api/auth")
    assert status == 401 and body["session"]["message"] == "no SID provided"


async def test_pihole_delete_session_by_id(pihole: FakePihole, http: aiohttp.ClientSession) -> None:
    me, other = pihole.create_session(), pihole.create_session()
    hdr = {"sid": me.sid}
    status, body, _ = await call(http, "GET", pihole.url + "/api/auth/sessions", headers=hdr)
    assert status == 200 and [s["current_session"] for s in body["sessions"]] == [True, False]
    status, _, _ = await call(http, "DELETE", pihole.url + f"/api/auth/session/{other.id}", headers=hdr)
    assert status == 204
    status, body, _ = await call(http, "DELETE", pihole.url + f"/api/auth/session/{other.id}", headers=hdr)
    assert (status, body["error"]["message"]) == (400, "Session ID not in use")


async def test_pihole_seats_and_reclaim(make_pihole: PiholeFactory, http: aiohttp.ClientSession) -> None:
    fake = await make_pihole(max_sessions=2, clock=FakeClock(frozen=True))
    await pihole_login(http, fake)
    await pihole_login(http, fake)
    fake.clock.advance(1)  # stay under the per-second password limit
    status, body, _ = await call(http, "POST", fake.url + "/api/auth", json={"password": fake.password})
    assert status == 429
    assert body["error"] == {
        "key": "api_seats_exceeded",
        "message": "API seats exceeded",
        "hint": "increase webserver.api.max_sessions",
    }
    fake.clock.advance(1801)
    fresh = await pihole_login(http, fake)  # the first expired seat is reclaimed at login
    assert fake.sessions[0].sid == fresh["sid"]
    assert fake.sessions[1].valid_until < fake.clock()  # FTL stops at the first free seat


async def test_pihole_password_rate_limit(make_pihole: PiholeFactory, http: aiohttp.ClientSession) -> None:
    fake = await make_pihole(clock=FakeClock(frozen=True))
    url = fake.url + "/api/auth"
    statuses = [(await call(http, "POST", url, json={"password": "x"}))[0] for _ in range(3)]
    assert statuses == [401, 401, 401]
    status, body, _ = await call(http, "POST", url, json={"password": fake.password})
    assert (status, body["error"]["key"]) == (429, "rate_limiting")  # a 4th check in the same second
    fake.clock.advance(1)
    assert (await call(http, "POST", url, json={"password": fake.password}))[0] == 200


async def test_pihole_wrong_password_with_valid_sid_still_reports_session(
    pihole: FakePihole, http: aiohttp.ClientSession
) -> None:
    """FTL quirk: a failed login carrying a valid sid answers 200 with that (valid) session."""
    s = pihole.create_session()
    status, body, _ = await call(
        http, "POST", pihole.url + "/api/auth", json={"password": "wrong"}, headers={"X-FTL-SID": s.sid}
    )
    assert (
        status == 200
        and body["session"]["sid"] == s.sid
        and body["session"]["message"] == "password incorrect"
    )


async def test_pihole_admin_pages(pihole: FakePihole, http: aiohttp.ClientSession) -> None:
    status, _, resp = await call(http, "GET", pihole.url + "/admin/")
    assert (status, resp.headers["Location"]) == (302, "/admin/login")
    status, _, resp = await call(http, "GET", pihole.url + "/admin/groups")
    assert (status, resp.headers["Location"]) == (302, "/admin/login")
    status, text, _ = await call(http, "GET", pihole.url + "/admin/login")
    assert status == 200 and "loginform" in text
    status, _, _ = await call(http, "GET", pihole.url + "/admin/style/pi-hole.css")
    assert status == 200  # files are public

    s = pihole.create_session()
    status, text, resp = await call(http, "GET", pihole.url + "/admin/", headers={"Cookie": f"sid={s.sid}"})
    assert status == 200
    assert f'<meta name="csrf-token" content="{s.csrf}">' in text
    assert resp.headers["Set-Cookie"].startswith(f"sid={s.sid};")
    status, _, resp = await call(http, "GET", pihole.url + "/admin/login", headers={"Cookie": f"sid={s.sid}"})
    assert (status, resp.headers["Location"]) == (302, "/admin/")
    pihole.clock.advance(1801)
    status, _, _ = await call(http, "GET", pihole.url + "/admin/", headers={"Cookie": f"sid={s.sid}"})
    assert status == 302


async def test_pihole_unknown_route_and_request_log(pihole: FakePihole, http: aiohttp.ClientSession) -> None:
    status, body, _ = await call(http, "GET", pihole.url + "/api/nope", headers={"X-FTL-SID": "x"})
    assert (status, body["error"]["key"], body["error"]["hint"]) == (404, "not_found", "/api/nope")
    s = pihole.create_session()
    await call(
        http,
        "POST",
        pihole.url + "/api/dns/blocking",
        json={"blocking": False},
        headers={"X-FTL-SID": s.sid, "X-Extra": "1"},
    )
    rec = pihole.requests_to("/api/dns/blocking")[-1]
    assert (rec.method, rec.status, rec.sid_source, rec.session_id) == ("POST", 200, "header", s.id)
    assert rec.headers["X-Extra"] == "1" and rec.json() == {"blocking": False}
    assert pihole.blocking is False


# ======================================================================================= AdGuard Home


async def test_adguard_login_sets_cookie(adguard: FakeAdGuard, http: aiohttp.ClientSession) -> None:
    status, text, resp = await call(
        http,
        "POST",
        adguard.url + "/control/login",
        json={"name": adguard.username, "password": adguard.password},
    )
    assert (status, text) == (200, "OK\n")
    match = AGH_COOKIE.match(resp.headers["Set-Cookie"])
    assert match, resp.headers["Set-Cookie"]
    assert match.group(1) in adguard.sessions
    assert resp.headers["Cache-Control"].startswith("no-store")


async def test_adguard_bad_login_is_403_then_blocked(
    adguard: FakeAdGuard, http: aiohttp.ClientSession
) -> None:
    url = adguard.url + "/control/login"
    for _ in range(5):
        status, text, _ = await call(
            http,
            "POST",
            url,
            json={"name": adguard.username, "password": "bad"},
            headers={"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"},
        )
        assert (status, text) == (403, "invalid username or password\n")
    # Blocked by TCP peer: right credentials and another X-Real-IP do not help.
    status, text, resp = await call(
        http,
        "POST",
        url,
        json={"name": adguard.username, "password": adguard.password},
        headers={"X-Real-IP": "198.51.100.1"},
    )
    assert status == 429 and text.startswith("auth: blocked for")
    assert 890 <= int(resp.headers["Retry-After"]) <= 900
    status, _, _ = await call(http, "GET", adguard.url + "/control/status", headers=basic(adguard))
    assert status == 401  # Basic auth shares the limiter
    adguard.clock.advance(15 * 60 + 1)
    status, _, _ = await call(
        http, "POST", url, json={"name": adguard.username, "password": adguard.password}
    )
    assert status == 200
    assert adguard.failed_auths == {}


async def test_adguard_failures_are_forgotten_after_a_minute(
    adguard: FakeAdGuard, http: aiohttp.ClientSession
) -> None:
    url = adguard.url + "/control/login"
    for _ in range(4):
        await call(http, "POST", url, json={"name": "x", "password": "y"})
    adguard.clock.advance(61)
    for _ in range(4):
        assert (await call(http, "POST", url, json={"name": "x", "password": "y"}))[0] == 403
    assert adguard.blocked_for() == 0


async def test_adguard_control_needs_session(adguard: FakeAdGuard, http: aiohttp.ClientSession) -> None:
    status, text, _ = await call(http, "GET", adguard.url + "/control/status")
    assert (status, text) == (401, "")
    s = adguard.create_session()
    status, body, _ = await call(
        http, "GET", adguard.url + "/control/status", headers={"Cookie": f"agh_session={s.token}"}
    )
    assert status == 200 and body["running"] is True and body["http_port"] == adguard.port
    status, body, _ = await call(http, "GET", adguard.url + "/control/profile", headers=basic(adguard))
    assert (status, body) == (200, {"name": "admin", "language": "en", "theme": "auto"})
    # A cookie, even a dead one, is judged alone: Basic auth does not rescue it.
    status, _, _ = await call(
        http,
        "GET",
        adguard.url + "/control/profile",
        headers={"Cookie": "agh_session=" + "00" * 16, **basic(adguard)},
    )
    assert status == 401
    status, _, _ = await call(
        http, "GET", adguard.url + "/control/profile", headers={"Cookie": "agh_session=zz"}
    )
    assert status == 401


async def test_adguard_pages_redirect_to_login(adguard: FakeAdGuard, http: aiohttp.ClientSession) -> None:
    for path in ("/", "/index.html"):
        status, _, resp = await call(http, "GET", adguard.url + path)
        assert (status, resp.headers["Location"]) == (302, "/login.html")
    status, _, _ = await call(http, "GET", adguard.url + "/login.html")
    assert status == 200
    status, _, _ = await call(http, "GET", adguard.url + "/assets/app.css")
    assert status == 200
    status, _, _ = await call(http, "GET", adguard.url + "/somewhere")
    assert status == 401
    s = adguard.create_session()
    cookie = {"Cookie": f"agh_session={s.token}"}
    status, text, _ = await call(http, "GET", adguard.url + "/", headers=cookie)
    assert status == 200 and "AdGuard Home" in text
    status, _, resp = await call(http, "GET", adguard.url + "/login.html", headers=cookie)
    assert (status, resp.headers["Location"]) == (302, "/")


async def test_adguard_session_ttl_is_absolute(adguard: FakeAdGuard, http: aiohttp.ClientSession) -> None:
    s = adguard.create_session()
    cookie = {"Cookie": f"agh_session={s.token}"}
    for _ in range(7):
        adguard.clock.advance(100 * 3600)  # 700 h, used all along: no sliding
        assert (await call(http, "GET", adguard.url + "/control/status", headers=cookie))[0] == 200
    adguard.clock.advance(20 * 3600 + 1)
    assert (await call(http, "GET", adguard.url + "/control/status", headers=cookie))[0] == 401
    assert s.token not in adguard.sessions


async def test_adguard_logout(adguard: FakeAdGuard, http: aiohttp.ClientSession) -> None:
    s = adguard.create_session()
    cookie = {"Cookie": f"agh_session={s.token}"}
    status, _, resp = await call(http, "GET", adguard.url + "/control/logout", headers=cookie)
    assert (status, resp.headers["Location"]) == (302, "/login.html")
    assert resp.headers["Set-Cookie"] == (
        "agh_session=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax"
    )
    assert adguard.sessions == {}
    status, _, _ = await call(http, "GET", adguard.url + "/control/logout", headers=cookie)
    assert status == 401  # logout sits behind the auth middleware


async def test_adguard_echo_and_request_log(adguard: FakeAdGuard, http: aiohttp.ClientSession) -> None:
    s = adguard.create_session()
    status, body, _ = await call(
        http,
        "PUT",
        adguard.url + "/control/echo?x=1",
        data=b"hello",
        headers={"Cookie": f"agh_session={s.token}", "X-Test": "t"},
    )
    assert status == 200
    assert (body["method"], body["body"], body["query"], body["user"]) == (
        "PUT",
        "hello",
        {"x": ["1"]},
        "admin",
    )
    assert body["headers"]["X-Test"] == "t" and body["auth_source"] == "cookie"
    rec = adguard.requests[-1]
    assert (rec.path, rec.status, rec.user, rec.cookies) == (
        "/control/echo",
        200,
        "admin",
        {"agh_session": s.token},
    )


async def test_adguard_bad_login_json(adguard: FakeAdGuard, http: aiohttp.ClientSession) -> None:
    status, text, _ = await call(http, "POST", adguard.url + "/control/login", data=b"name=admin")
    assert status == 400 and text.startswith("json decode:")
