"""Two `authproxy run` processes on one real redis-server, and the `authproxy users|keys` CLI on the same
store: they agree on accounts, roles, keys and revocations (a role change or an admin ending a session
on one is in effect on the other before the next request). Also the import of a users.json with bcrypt
hashes (12 rounds), and the export, which carries no key secret.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt

from tests.fakes.echo import EchoUpstream
from tests.integration.local_support import ADMIN, API, FIRST, body, start_local
from tests.integration.test_cli import ROOT, base_env
from tests.support.gateway import Gateway, GatewayClient, MakeGateway
from tests.support.procs import ManagedProcess, free_port
from tests.support.redis_server import RedisServer

HEADERS = {"X-Forwarded-Proto": "https"}
COOKIE = "__Host-authproxy"


class Node:
    """One authproxy process, spoken to as a browser behind a TLS proxy would."""

    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{port}"

    async def call(self, method: str, path: str, cookie: str | None = None, **kw: Any
                   ) -> tuple[int, dict[str, Any], str | None]:
        headers = {**HEADERS, **kw.pop("headers", {})}
        if cookie:
            headers["Cookie"] = f"{COOKIE}={cookie}"
        async with self.http.request(method, self.base + path, headers=headers, allow_redirects=False,
                                     **kw) as resp:
            text = await resp.text()
            got = resp.cookies.get(COOKIE)
            try:
                data = json.loads(text)
            except ValueError:
                data = {"text": text}
            return resp.status, data if isinstance(data, dict) else {"list": data}, got.value if got else None

    async def login(self, username: str, password: str) -> str:
        status, data, cookie = await self.call("POST", f"{API}/login",
                                               json={"username": username, "password": password})
        assert status == 200 and cookie, data
        return cookie


def cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "authproxy", *args], env=env, cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done


async def _healthy(http: aiohttp.ClientSession, node: Node, proc: ManagedProcess) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert proc.running, proc.log_tail()
        try:
            async with http.get(node.base + "/_authproxy/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, proc.log_tail()
        await asyncio.sleep(0.05)


async def test_two_processes_and_the_cli_on_one_redis_agree(
        tmp_path: Path, redis_url: str, echo_upstream: EchoUpstream,
        process_factory: Callable[..., ManagedProcess]) -> None:
    env = base_env(UPSTREAM_URL=echo_upstream.url, UPSTREAM_TYPE="technitium", AUTH_MODE="local",
                   TRUST_PROXY="true", REDIS_URL=redis_url, SESSION_SECRET="replica-secret-" + "y" * 40,
                   AUTHPROXY_ADMIN_PASSWORD=FIRST, AUTHPROXY_DATA_DIR=str(tmp_path / "data"),
                   LOCAL_KEY_HEADER="x-dns-key-name",
                   LOCAL_KEY_INJECT="x-dns-key-name=name,x-dns-key-value=secret", ACCESS_LOG="false")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        nodes, procs = [], []
        for name in ("a", "b"):
            port = free_port()
            procs.append(process_factory([sys.executable, "-m", "authproxy", "run"],
                                         env={**env, "PORT": str(port)}, inherit_env=False, cwd=ROOT,
                                         name=f"authproxy-{name}"))
            nodes.append(Node(http, port))
        for node, proc in zip(nodes, procs, strict=True):
            await _healthy(http, node, proc)
        a, b = nodes
        admin = await a.login("admin", FIRST)
        status, _, _ = await a.call("POST", f"{API}/change-password", admin,
                                    json={"currentPassword": FIRST, "newPassword": ADMIN})
        assert status == 200
        # One admin, made by exactly one of the two.
        status, data, _ = await b.call("GET", f"{API}/users", admin)
        assert status == 200 and [u["username"] for u in data["users"]] == ["admin"]

        # The CLI adds alice (a viewer) on the same store; she signs in at b and is a viewer at a.
        cli(env, "users", "add", "alice", "--role", "viewer", "--password-stdin", stdin="alice-password-1\n")
        alice = await b.login("alice", "alice-password-1")
        assert (await a.call("GET", "/zones", alice))[0] == 200
        status, data, _ = await a.call("POST", "/zones", alice, data=b"x=1",
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 403 and data["requiredRole"] == "editor"
        # A role change on the command line ends her sessions on both processes at once.
        cli(env, "users", "set-role", "alice", "editor")
        for node in (a, b):
            assert (await node.call("GET", f"{API}/session", alice))[1] == {"authenticated": False}
        alice = await a.login("alice", "alice-password-1")
        status, _, _ = await b.call("POST", "/zones", alice, data=b"x=1",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200

        # A key added by the CLI, granted through the API at b, injected by a.
        key_id = cli(env, "keys", "add", "tsig-a", "--algorithm", "hmac-sha256",
                     stdin="dG9wLXNlY3JldC1h\n").stdout.strip()
        status, data, _ = await b.call("GET", f"{API}/users", admin)
        alice_id = next(u["id"] for u in data["users"] if u["username"] == "alice")
        granted = await b.call("PATCH", f"{API}/users/{alice_id}", admin, json={"allowedKeyIds": [key_id]})
        assert granted[0] == 200
        alice = await b.login("alice", "alice-password-1")
        status, data, _ = await a.call("GET", "/update", alice, headers={"x-dns-key-name": "tsig-a",
                                                                         "x-dns-key-value": "forged"})
        assert status == 200
        sent = [v for k, v in data["headers"] if k.lower() == "x-dns-key-value"]
        assert sent == ["dG9wLXNlY3JldC1h"]
        listed = cli(env, "keys", "list").stdout
        assert "tsig-a" in listed and "dG9wLXNlY3JldC1h" not in listed

        # The admin at a ends alice's session; b refuses it on the very next request.
        status, data, _ = await a.call("GET", f"{API}/sessions", admin)
        mine = [s for s in data["sessions"] if s["user"] == "alice"]
        assert len(mine) == 1 and mine[0]["clientIp"] == "127.0.0.1" and mine[0]["lastSeenAt"]
        assert (await a.call("DELETE", f"{API}/sessions/{mine[0]['id']}", admin))[0] == 200
        assert (await b.call("GET", "/zones", alice))[0] in (302, 401)

        # users.json from another tool: bcrypt, 12 rounds; accepted at b, then argon2id.
        hashed = bcrypt.hashpw(b"dave-old-password", bcrypt.gensalt(12)).decode()
        legacy = tmp_path / "users.json"
        legacy.write_text(json.dumps([{"id": "1", "username": "dave", "password": hashed, "role": "editor",
                                       "email": "dave@example.com", "allowedResources": [key_id],
                                       "createdAt": "2024-05-01T10:00:00Z"},
                                      {"username": "eve", "password": "plain-text"}]))
        done = cli(env, "users", "import", str(legacy))
        assert "imported 1" in done.stderr and "'eve'" in done.stderr
        dave = await b.login("dave", "dave-old-password")
        status, data, _ = await a.call("GET", f"{API}/session", dave)
        assert data["user"]["allowedKeyIds"] == [key_id] and data["user"]["role"] == "editor"
        exported = json.loads(cli(env, "users", "export").stdout)
        row = next(u for u in exported["users"] if u["username"] == "dave")
        assert row["passwordHash"].startswith("$argon2id$")
        assert "dG9wLXNlY3JldC1h" not in json.dumps(exported)
        for proc in procs:
            assert "dG9wLXNlY3JldC1h" not in proc.log_tail(1_000_000)
            assert "alice-password-1" not in proc.log_tail(1_000_000)


async def test_local_accounts_fail_closed_when_redis_is_down(
        make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream, redis_server_factory: Callable[..., RedisServer]) -> None:
    redis = redis_server_factory(appendonly=True)
    local = await start_local(make_gateway, client_for, echo_upstream, REDIS_URL=redis.url,
                              SESSION_CACHE_TTL="0")
    _, ivy = await local.user("ivy", "editor")
    before = len(echo_upstream.requests)
    redis.stop()
    for client, method, path in ((ivy, "GET", "/x"), (local.admin, "GET", f"{API}/users"),
                                 (local.admin, "GET", f"{API}/sessions")):
        resp = await client.request(method, path)
        assert resp.status == 503 and (await body(resp))["error"] == "store_unavailable", path
    resp = await client_for(local.gw).login("ivy", "ivy-password-123")
    assert resp.status == 503
    assert len(echo_upstream.requests) == before
    redis.start()
    for _ in range(50):
        resp = await ivy.request("GET", "/x")
        if resp.status != 503:
            break
        await asyncio.sleep(0.1)
    assert resp.status == 200
