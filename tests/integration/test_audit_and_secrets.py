"""The audit trail (JSON lines for every login attempt, logout and expiry) and the promise behind it:
no password, one-time code, upstream token or cookie value ever shows up in a log line or an answer."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from authproxy.app import create_app
from authproxy.config.loader import ensure_session_secrets, load_config
from authproxy.log import AccessLogger, JsonFormatter, TextFormatter
from tests.fakes.technitium import FakeTechnitium
from tests.integration.conftest import BROWSER, HEARTBEAT, LOGIN, LOGOUT, ME, SESSION, Audit
from tests.support.gateway import SECRET, Gateway, GatewayClient, MakeGateway, gateway_env

AUDIT_KEYS = {"time", "event", "user", "site", "client_ip", "outcome"}


async def test_audit_lines_for_every_login_logout_and_expiry(
        make_gateway: MakeGateway, technitium: FakeTechnitium, client_for: Callable[[Gateway], GatewayClient],
        audit: Audit) -> None:
    gw = await make_gateway(gateway_env(technitium.url, SESSION_IDLE_TIMEOUT="0.5s", LOGIN_MAX_FAILURES="2"))
    c = client_for(gw)
    ip = {"X-Forwarded-For": "198.51.100.20"}
    await c.request("POST", LOGIN, json={"username": "bob", "password": "x"}, headers=ip)
    await c.request("POST", LOGIN, json={"username": "bob", "password": "y"}, headers=ip)
    await c.request("POST", LOGIN, json={"username": "bob", "password": "z"}, headers=ip)   # throttled
    await c.request("POST", LOGIN, json={"username": "totpuser", "password": "totp-pass"})  # needs a code
    await c.login("totpuser", "totp-pass", totp=technitium.totp_now())
    await c.request("POST", LOGOUT)
    await c.login("alice", "alice-pass")
    await asyncio.sleep(0.7)
    await c.request("GET", "/api/zones/list")                                                # idle expiry
    await c.login("alice", "alice-pass")
    technitium.expire_all()
    await c.request("GET", "/api/zones/list")                                                # upstream says no

    lines = audit.lines()
    got = [(x["event"], x["outcome"], x["user"], x["client_ip"]) for x in lines]
    assert got == [
        ("login", "failure", "bob", "198.51.100.20"),
        ("login", "failure", "bob", "198.51.100.20"),
        ("login", "throttled", "bob", "198.51.100.20"),
        ("login", "totp_required", "totpuser", "127.0.0.1"),
        ("login", "success", "totpuser", "127.0.0.1"),
        ("logout", "success", "totpuser", "127.0.0.1"),
        ("login", "success", "alice", "127.0.0.1"),
        ("expiry", "idle_timeout", "alice", "127.0.0.1"),
        ("login", "success", "alice", "127.0.0.1"),
        ("expiry", "upstream_invalid", "alice", "127.0.0.1"),
    ]
    for line in lines:
        assert AUDIT_KEYS <= set(line), line
        assert line["site"] == "technitium" and line["logger"] == "authproxy.audit"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    # The session handle ties a login to its logout/expiry without being a secret.
    logins = [x for x in lines if x["event"] == "login" and x["outcome"] == "success"]
    ends = [x for x in lines if x["event"] in ("logout", "expiry")]
    assert [x["session"] for x in logins] == [x["session"] for x in ends]


# ---- secrets never leak ----------------------------------------------------------------------------------

@pytest.fixture
async def logged_gateway(tmp_path: Path) -> AsyncIterator[Callable[[dict[str, str]], Any]]:
    """A gateway served with authproxy's own access logger, as `authproxy run` serves it."""
    runners: list[web.AppRunner] = []

    async def make(env: dict[str, str]) -> Gateway:
        env = {"AUTHPROXY_DATA_DIR": str(tmp_path / "data"), **env, "ACCESS_LOG": "true"}
        config, _ = ensure_session_secrets(load_config(env))
        app = create_app(config)
        runner = web.AppRunner(app, access_log_class=AccessLogger,
                               access_log=logging.getLogger("authproxy.access"))
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        return Gateway(app=app, runner=runner, config=config, url=f"http://127.0.0.1:{port}", port=port)

    yield make
    for runner in runners:
        await runner.cleanup()


class Recorder:
    """Every answer the browser side saw: status line, headers, body."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client
        self.seen: list[str] = []

    async def __call__(self, method: str, path: str, **kw: Any) -> aiohttp.ClientResponse:
        resp = await self.client.request(method, path, **kw)
        body = await resp.read()
        headers = [(k, v) for k, v in resp.headers.items()
                   if not (k.lower() == "set-cookie" and v.startswith(self.client.cookie_name + "="))]
        self.seen.append(f"{resp.status} {headers!r}\n{body.decode('utf-8', 'replace')}")
        return resp


@pytest.mark.parametrize("version", [15, 14])
async def test_no_secret_in_any_log_line_or_answer(  # noqa: C901 - one scenario, then one sweep of it
        version: int, technitium: FakeTechnitium, technitium_v14: FakeTechnitium,
        logged_gateway: Callable[[dict[str, str]], Any], http_client: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    fake = technitium if version == 15 else technitium_v14
    caplog.set_level(logging.DEBUG)  # the root: authproxy.*, aiohttp.*, everything
    for name in ("authproxy", "authproxy.access", "authproxy.audit", "aiohttp", "aiohttp.access",
                 "aiohttp.server", "aiohttp.web", "aiohttp.client", "redis"):
        caplog.set_level(logging.DEBUG, logger=name)
    gw: Gateway = await logged_gateway(gateway_env(fake.url))
    from authproxy import keys

    c = GatewayClient(base=gw.url, http=http_client, cookie_name=gw.app[keys.SESSIONS].cookie_name)
    do = Recorder(c)
    tokens: set[str] = set()
    codes: list[str] = []

    # Sign in with a second factor: first without the code, then a wrong one, then the right one.
    await do("POST", LOGIN, json={"username": "totpuser", "password": "totp-pass"})
    await do("POST", LOGIN, json={"username": "totpuser", "password": "totp-pass", "totp": "123456"})
    await do("POST", LOGIN, data={"username": "totpuser", "password": "totp-pass"}, headers=BROWSER)
    codes.append(fake.totp_now())
    resp = await do("POST", LOGIN, json={"username": "totpuser", "password": "totp-pass", "totp": codes[-1]})
    assert resp.status == 200
    tokens |= set(fake.sessions)
    cookie = c.cookie
    assert cookie
    # Use it: pages, APIs (also ones that answer with the token), forms, downloads, errors.
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/", {"headers": BROWSER}),
        ("GET", "/index.html", {}),
        ("GET", "/api/user/session/get", {}),
        ("GET", "/api/user/profile/get", {}),
        ("GET", "/api/zones/list?token=forged", {}),
        ("POST", "/api/zones/create", {"data": {"zone": "example.com", "token": "forged"}}),
        ("GET", "/api/settings/backup", {}),
        ("GET", "/api/echo?x=1", {"headers": {"Authorization": "Bearer forged"}}),
        ("POST", "/api/echo", {"data": {"a": "b"}}),
        ("GET", "/api/nope", {}),
        ("GET", "/missing.js", {}),
        ("GET", SESSION, {}),
        ("GET", ME, {}),
        ("POST", HEARTBEAT, {}),
        ("GET", "/_authproxy/readyz", {}),
        ("POST", LOGIN, {"data": b"{bad", "headers": {"Content-Type": "application/json"}}),
    ]
    for method, path, kw in steps:
        await do(method, path, **kw)
        tokens |= set(fake.sessions)
    # A second login (keeps other sites, new id), then the upstream kills the token, then log in and out.
    fake.advance(30)  # a new code: a used one is refused (without asking the upstream)
    codes.append(fake.totp_now())
    await do("POST", LOGIN, json={"username": "totpuser", "password": "totp-pass", "totp": codes[-1]})
    tokens |= set(fake.sessions)
    cookies = {cookie, c.cookie}
    fake.expire_all()
    await do("GET", "/api/zones/list")
    await do("GET", "/api/zones/list", headers=BROWSER)
    fake.advance(30)
    await do("POST", LOGIN, json={"username": "totpuser", "password": "wrong-pass", "totp": fake.totp_now()})
    codes.append(fake.totp_now())
    await do("POST", LOGIN, json={"username": "totpuser", "password": "totp-pass", "totp": codes[-1]})
    tokens |= set(fake.sessions)
    cookies.add(c.cookie)
    await do("GET", "/api/dashboard/stats/get")
    await do("POST", LOGOUT)
    await do("GET", "/api/zones/list")
    assert len(tokens) >= 3

    json_fmt, text_fmt = JsonFormatter(), TextFormatter()
    logs = []
    for record in caplog.records:
        logs.append(json_fmt.format(record))
        logs.append(text_fmt.format(record))
        logs.append(record.getMessage())
        logs.append(repr(getattr(record, "fields", None)))
    haystacks = {"logs": "\n".join(logs), "answers": "\n".join(do.seen)}
    assert "audit" in haystacks["logs"] and "authproxy.access" in haystacks["logs"]

    secrets: dict[str, str] = {"password": "totp-pass", "wrong password": "wrong-pass", "session secret": SECRET}
    secrets.update({f"token {t[:6]}": t for t in tokens})
    for value in cookies:
        assert value is not None
        secrets[f"cookie {value[:8]}"] = value
        for i, part in enumerate(value.split(".")[1:]):
            secrets[f"cookie part {i}"] = part
    for where, text in haystacks.items():
        for what, value in secrets.items():
            assert value not in text, f"{what} found in {where}"
        for code in codes:
            assert not re.search(rf"(?<!\d){code}(?!\d)", text), f"TOTP code found in {where}"
        for token in tokens:  # not even a good part of one (Technitium itself shows 16-character stubs)
            for i in range(len(token) - 20):
                assert token[i:i + 20] not in text, f"part of token {token[:6]} found in {where}"
    # Neither may a copy of the store (the SQLite file and its WAL) yield a token, a cookie or a password.
    store = b"".join(p.read_bytes() for p in gw.config.server.data_dir.glob("sessions.sqlite3*"))
    for what, value in secrets.items():
        if what != "session secret":
            assert value.encode() not in store, f"{what} found in the store"
    assert b"totpuser" not in store
