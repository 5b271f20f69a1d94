"""The audit trail (JSON lines for every login attempt, logout and expiry) and the promise behind it:
no password, one-time code, upstream token or cookie value ever shows up in a log line or an answer."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import socket
import subprocess
import sys
import time
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
from tests.integration.test_cli import ROOT, base_env
from tests.integration.test_cli import _wait_healthy as wait_healthy
from tests.support.gateway import SECRET, Gateway, GatewayClient, MakeGateway, gateway_env
from tests.support.procs import ManagedProcess, free_port

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
    await c.request("GET", "/api/zones/list")  # upstream says no

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

    secrets: dict[str, str] = {
        "password": "totp-pass",
        "wrong password": "wrong-pass",
        "session secret": SECRET,
    }
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


# ---- malformed requests to a real `authproxy run`: aiohttp's own error log ---------------------------

def _malformed(cookie: str, bearer: str, query: str) -> dict[str, bytes]:
    """Requests aiohttp's parser refuses, each carrying the session cookie, a Bearer token and secrets
    in the query string where the refused part would be quoted (aiohttp's message quotes the line)."""
    creds = f"Cookie: {cookie}\r\nAuthorization: Bearer {bearer}\r\n".encode()
    return {
        "bad request line": f"GET /api/zones/list?{query} HTTP/1.1 junk\r\nHost: x\r\n".encode()
        + creds
        + b"\r\n",
        "oversized header": b"GET /api/zones/list?"
        + query.encode()
        + b" HTTP/1.1\r\nHost: x\r\n"
        + f"Cookie: {cookie}; pad={'a' * 9000}\r\n".encode()
        + creds
        + b"\r\n",
        "bad chunked encoding": f"POST /api/zones/list?{query} HTTP/1.1\r\nHost: x\r\n".encode()
        + creds
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + bearer.encode()
        + b"\r\nabc\r\n0\r\n\r\n",
        "invalid header bytes": f"GET /api/zones/list?{query} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\x01\r\n"
        f"Authorization: Bearer {bearer}\x7f\r\n\r\n".encode(),
        "invalid URL byte": f"GET /api/zones/list?{query}\xff HTTP/1.1\r\nHost: x\r\n".encode()
        + creds
        + b"\r\n",
    }


async def _send_raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(("workers", "fmt"), [(1, "json"), (2, "text")])
async def test_malformed_requests_leave_no_secret_in_the_log_of_authproxy_run(
        workers: int, fmt: str, tmp_path: Path, technitium: FakeTechnitium,
        process_factory: Callable[..., ManagedProcess]) -> None:
    """aiohttp logs a request its parser refuses with a traceback whose message quotes the raw line
    (cookie, Bearer token, query string). That record went to Python's fallback handler, unredacted, at
    LOG_LEVEL=INFO. Every logger now ends in authproxy's handler, which logs exceptions as type and place."""
    port = free_port()
    env = base_env(UPSTREAM_URL=technitium.url, UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                   AUTHPROXY_DATA_DIR=str(tmp_path / "data"), PORT=str(port), HOST="127.0.0.1",
                   SESSION_SECRET="s" * 40, LOG_LEVEL="INFO", LOG_FORMAT=fmt, WORKERS=str(workers))
    proc = process_factory([sys.executable, "-m", "authproxy", "run"], env=env, inherit_env=False, cwd=ROOT,
                           name="authproxy-malformed")
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        await wait_healthy(http, f"{base}/_authproxy/healthz", proc)
        async with http.post(base + LOGIN, json={"username": "alice", "password": "alice-pass"},
                             headers={"X-Forwarded-Proto": "https"}) as resp:
            assert resp.status == 200, await resp.text()
            ticket = resp.cookies["__Host-authproxy"].value
    bearer = secrets.token_hex(32)
    query = f"token={secrets.token_hex(16)}&key={secrets.token_urlsafe(18)}&next=%2F{secrets.token_hex(12)}"
    cases = _malformed(f"__Host-authproxy={ticket}", bearer, query)
    for data in cases.values():
        answer = await _send_raw(port, data)
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer[:20], answer[:200]

    deadline = time.monotonic() + 10
    while proc.log_tail(1_000_000).count("Error handling request") < len(cases):  # each refusal was logged
        assert time.monotonic() < deadline, proc.log_tail(5000)
        await asyncio.sleep(0.05)
    proc.stop()
    log_text = proc.log_tail(1_000_000)
    assert "Error handling request" in log_text
    assert "Traceback" not in log_text and 'File "' not in log_text, log_text[-3000:]
    values = {"cookie": ticket, "bearer": bearer, **{f"query {v[:4]}": v for v in
                                                     (p.split("=", 1)[1] for p in query.split("&"))}}
    values.update({f"cookie part {i}": part for i, part in enumerate(ticket.split("."))
                   if len(part) >= 8})
    for what, value in values.items():
        assert value not in log_text, f"{what} found in the log:\n{log_text[-3000:]}"
        assert value[:16] not in log_text, f"part of {what} found in the log"
    if fmt == "json":
        lines = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
        refused = [x for x in lines if x["logger"] == "aiohttp.server"]
        assert sorted(x["exception"] for x in refused) == sorted(  # the type says what was wrong
            ["BadStatusLine", "LineTooLong", "BadHttpMessage", "BadHttpMessage", "InvalidURLError"]), refused


def test_a_worker_that_fails_is_logged_through_the_handler_too(tmp_path: Path) -> None:
    """With WORKERS>1 an exception that ends a worker was printed by multiprocessing itself: a raw
    traceback (its text may quote a URL with a password). Here the certificate files hold no certificate,
    so each worker fails making its TLS context. A port already taken is no unexpected error: each worker
    says so in one line naming the address."""
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    env = base_env(UPSTREAM_URL="http://127.0.0.1:9", UPSTREAM_TYPE="technitium", HTTPS_ENABLED="true",
                   HTTPS_CERT_FILE=str(tmp_path / "cert.pem"), HTTPS_KEY_FILE=str(tmp_path / "key.pem"),
                   AUTHPROXY_DATA_DIR=str(tmp_path / "data"), PORT=str(free_port()), HOST="127.0.0.1",
                   SESSION_SECRET="s" * 40, LOG_FORMAT="json", WORKERS="2")
    result = subprocess.run([sys.executable, "-m", "authproxy", "run"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # nothing but JSON lines
    failed = [x for x in lines if x["message"] == "worker stopped on an unexpected error"]
    assert failed and all(x["exception"] == "SSLError" for x in failed), result.stderr
    assert "Traceback" not in result.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = base_env(UPSTREAM_URL="http://127.0.0.1:9", UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                       AUTHPROXY_DATA_DIR=str(tmp_path / "data"), PORT=str(port), HOST="127.0.0.1",
                       SESSION_SECRET="s" * 40, LOG_FORMAT="json", WORKERS="2")
        result = subprocess.run([sys.executable, "-m", "authproxy", "run"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    busy = [x for x in lines if f"cannot listen on 127.0.0.1:{port}" in x["message"]]
    assert busy and "Traceback" not in result.stderr, result.stderr
    assert not [x for x in lines if "authproxy ready" in x["message"]]
