"""`authproxy sessions list|revoke` and `authproxy version` as processes, on the store a running server
uses: SQLite under a real `authproxy run` with WORKERS=2, and Redis (a real redis-server) under the
in-process gateway. A revocation is in effect on every worker the moment the command returns, and what
the listing shows can never be used as a ticket."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp

from authproxy.metrics import version
from tests.fakes.technitium import FakeTechnitium
from tests.integration.test_cli import ROOT, _wait_healthy, base_env
from tests.support.gateway import MakeGateway, gateway_env
from tests.support.procs import ManagedProcess, free_port
from tests.support.technitium import ALICE

BOB = ("bob", "bob-pass")
SECRET = "s" * 40
SESSION = "/_authproxy/api/auth/session"


async def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The command as a process, without blocking this loop (the fakes and the gateway answer on it)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "authproxy", *args, env=env, cwd=ROOT,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())


async def sign_in(base: str, user: tuple[str, str]) -> str:
    async with (aiohttp.ClientSession() as http,
                http.post(base + "/_authproxy/api/auth/login",
                          json={"username": user[0], "password": user[1]},
                          headers={"X-Forwarded-Proto": "https"}) as resp):
        assert resp.status == 200, await resp.text()
        return resp.cookies["__Host-authproxy"].value


async def signed_in(base: str, cookie: str, times: int = 6) -> set[bool]:
    """What `times` session checks say, each on a connection of its own (so every worker answers)."""
    found = set()
    for _ in range(times):
        async with (aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
                    http.get(base + SESSION, headers={"X-Forwarded-Proto": "https",
                                                      "Cookie": f"__Host-authproxy={cookie}"}) as resp):
            assert resp.status == 200
            found.add((await resp.json())["authenticated"])
    return found


def ids_of(listing: str) -> list[str]:
    return [row["id"] for row in json.loads(listing)]


async def test_list_and_revoke_on_sqlite_under_two_workers(
        tmp_path: Path, technitium: FakeTechnitium, process_factory: Callable[..., ManagedProcess]) -> None:
    technitium.add_user(*BOB)
    port = free_port()
    env = base_env(UPSTREAM_URL=technitium.url, UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                   AUTHPROXY_DATA_DIR=str(tmp_path / "data"), PORT=str(port), HOST="127.0.0.1",
                   WORKERS="2", ACCESS_LOG="false")   # no SESSION_SECRET: the generated one is read
    proc = process_factory([sys.executable, "-m", "authproxy", "run"], env=env, inherit_env=False, cwd=ROOT,
                           name="authproxy")
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        await _wait_healthy(http, base + "/_authproxy/healthz", proc)
    alice1, alice2, bob = await sign_in(base, ALICE), await sign_in(base, ALICE), await sign_in(base, BOB)
    for cookie in (alice1, alice2, bob):
        assert await signed_in(base, cookie) == {True}

    table = await cli(env, "sessions", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "USER", "SITE"] and lines[-1] == "3 session(s)"
    assert sorted(line.split()[1] for line in lines[1:-1]) == ["alice", "alice", "bob"]
    listed = await cli(env, "sessions", "list", "--json")
    rows = json.loads(listed.stdout)
    assert {(r["user"], r["site"], r["auth_method"], r["client_ip"]) for r in rows} == {
        ("alice", "technitium", "passthrough", "127.0.0.1"),
        ("bob", "technitium", "passthrough", "127.0.0.1")}
    for row in rows:
        assert row["created_at"] <= row["idle_expires_at"] <= row["expires_at"]
    # Nothing shown is (part of) a ticket: not the id, not the key, not the signature.
    for cookie in (alice1, alice2, bob):
        for part in cookie.split(".")[1:]:
            assert part not in table.stdout and part not in listed.stdout
    alices = ids_of((await cli(env, "sessions", "list", "--user", "alice", "--json")).stdout)
    assert len(alices) == 2 and all(len(i) == 12 for i in alices)

    # One session by a unique prefix of its ID: signed out on both workers when the command returns.
    [first] = [r["id"] for r in rows if r["user"] == "alice" and r["created_at"] == min(
        x["created_at"] for x in rows if x["user"] == "alice")]
    revoked = await cli(env, "sessions", "revoke", first[:6])
    assert revoked.returncode == 0 and "revoked 1 session(s)" in revoked.stdout, revoked
    assert (await signed_in(base, alice1), await signed_in(base, alice2)) == ({False}, {True}), (rows, first)
    assert await signed_in(base, bob) == {True}
    # --user: every session of that user; --all: the rest.
    assert "revoked 1 session(s)" in (await cli(env, "sessions", "revoke", "--user", "bob")).stdout
    assert await signed_in(base, bob) == {False} and await signed_in(base, alice2) == {True}
    assert "revoked 1 session(s)" in (await cli(env, "sessions", "revoke", "--all")).stdout
    assert await signed_in(base, alice2) == {False}
    assert (await cli(env, "sessions", "list")).stdout == "no live sessions\n"
    # What is refused, plainly.
    for bad in (["sessions", "revoke", "zz"], ["sessions", "revoke", "abc"]):
        result = await cli(env, *bad)
        assert result.returncode == 2 and "at least 4 hex digits" in result.stderr
    gone = await cli(env, "sessions", "revoke", first)
    assert gone.returncode == 1 and "no live session" in gone.stderr
    assert (await cli(env, "sessions", "revoke")).returncode == 2


async def test_revoke_on_redis_reaches_the_running_gateway(
        make_gateway: MakeGateway, technitium: FakeTechnitium, redis_url: str, tmp_path: Path) -> None:
    technitium.add_user(*BOB)
    gw = await make_gateway(gateway_env(technitium.url, REDIS_URL=redis_url))
    alice, bob = await sign_in(gw.url, ALICE), await sign_in(gw.url, BOB)
    assert await signed_in(gw.url, alice, 3) == {True}   # cached now: the revocation must reach the cache
    env = base_env(UPSTREAM_URL=technitium.url, UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                   REDIS_URL=redis_url, SESSION_SECRET=gw.config.session.secrets[0].reveal(),
                   AUTHPROXY_DATA_DIR=str(tmp_path / "cli-data"))
    listed = json.loads((await cli(env, "sessions", "list", "--json")).stdout)
    assert sorted(r["user"] for r in listed) == ["alice", "bob"]
    result = await cli(env, "sessions", "revoke", "--user", "alice")
    assert result.returncode == 0 and "revoked 1 session(s)" in result.stdout, result
    assert await signed_in(gw.url, alice, 3) == {False}
    assert await signed_in(gw.url, bob, 3) == {True}
    assert not (tmp_path / "cli-data").exists()   # the command wrote nothing of its own


async def test_a_data_directory_without_a_store_is_said_and_left_alone(tmp_path: Path) -> None:
    env = base_env(UPSTREAM_URL="http://127.0.0.1:5380", UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                   AUTHPROXY_DATA_DIR=str(tmp_path / "nowhere"))
    for args in (("sessions", "list"), ("sessions", "revoke", "--all")):
        result = await cli(env, *args)
        assert result.returncode == 1 and "no session store at" in result.stderr, result
    assert not (tmp_path / "nowhere").exists()


async def test_version() -> None:
    result = await cli(base_env(), "version")
    assert result.returncode == 0 and result.stdout.startswith(f"authproxy {version()} (Python 3.")
    assert "aiohttp" in result.stdout


async def test_user_finds_a_later_session_that_holds_their_account(
        make_gateway: MakeGateway, technitium: FakeTechnitium, tmp_path: Path) -> None:
    """alice signs in at dns, then bob at nas in the same browser: the new session is bob's and carries
    alice's dns account, so `--user alice` lists it and revoking alice's sessions ends it."""
    technitium.add_user(*BOB)
    config = tmp_path / "authproxy.toml"
    config.write_text(f"""
auth_mode = "session"
[server]
trust_proxy = true
[session]
cookie_domain = ".example.com"
[[sites]]
name = "dns"
type = "technitium"
upstream_url = "{technitium.url}"
hosts = ["dns.example.com"]
[[sites]]
name = "nas"
type = "technitium"
upstream_url = "{technitium.url}"
hosts = ["nas.example.com"]
""", encoding="utf-8")
    data = tmp_path / "data"
    gw = await make_gateway({"SESSION_SECRET": SECRET, "ACCESS_LOG": "false",
                             "AUTHPROXY_DATA_DIR": str(data)}, config_file=config)
    https = {"X-Forwarded-Proto": "https"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.post(gw.url + "/_authproxy/api/auth/login", headers=https,
                             json={"site": "dns", "username": ALICE[0], "password": ALICE[1]}) as resp:
            assert resp.status == 200, await resp.text()
            first = resp.cookies["authproxy"].value
        async with http.post(gw.url + "/_authproxy/api/auth/login",
                             headers={**https, "Cookie": f"authproxy={first}"},
                             json={"site": "nas", "username": BOB[0], "password": BOB[1]}) as resp:
            assert resp.status == 200, await resp.text()
            second = resp.cookies["authproxy"].value
    env = base_env(SESSION_SECRET=SECRET, AUTHPROXY_DATA_DIR=str(data))
    rows = json.loads((await cli(env, "sessions", "list", "--config", str(config), "--json")).stdout)
    assert [(r["user"], r["site"]) for r in rows] == [("bob", "nas")]   # the first one ended on adoption
    held = json.loads((await cli(env, "sessions", "list", "--user", "alice", "--config", str(config),
                                 "--json")).stdout)
    assert [r["id"] for r in held] == [rows[0]["id"]]
    result = await cli(env, "sessions", "revoke", "--user", "alice", "--config", str(config))
    assert "revoked 1 session(s)" in result.stdout, result
    async with (aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
                http.get(gw.url + SESSION, headers={**https, "Cookie": f"authproxy={second}"}) as resp):
        assert (await resp.json())["authenticated"] is False
