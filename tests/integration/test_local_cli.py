"""`authproxy users` and `authproxy keys` as processes on the embedded SQLite store: a generated
password printed once on stdout (and never in the audit), reset-password, disable/enable, delete, the
last admin protected, keys deleted by name; every change reaches a running gateway on the same file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.fakes.echo import EchoUpstream
from tests.integration.local_support import API, body, local_env
from tests.integration.test_cli import ROOT, base_env
from tests.support.gateway import SECRET, Gateway, GatewayClient, MakeGateway


def run(env: dict[str, str], *args: str, stdin: str = "",
        ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "authproxy", *args], env=env, cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode == 0) == ok, (done.returncode, done.stdout, done.stderr)
    return done


async def test_cli_account_lifecycle_on_sqlite(tmp_path: Path, make_gateway: MakeGateway,
                                               client_for: Callable[[Gateway], GatewayClient],
                                               echo_upstream: EchoUpstream) -> None:
    data = tmp_path / "data"
    gw = await make_gateway({**local_env(echo_upstream.url), "AUTHPROXY_DATA_DIR": str(data)})
    env = base_env(UPSTREAM_URL=echo_upstream.url, UPSTREAM_TYPE="technitium", AUTH_MODE="local",
                   TRUST_PROXY="true", SESSION_SECRET=SECRET, AUTHPROXY_DATA_DIR=str(data))
    made = run(env, "users", "add", "gina", "--role", "editor", "--email", "gina@example.com")
    password = made.stdout.strip()
    assert len(password) >= 20 and password not in made.stderr and "shown once" in made.stderr
    gina = client_for(gw)
    assert (await gina.login("gina", password)).status == 200
    resp = await gina.request("GET", "/x")
    assert resp.status == 403 and (await body(resp))["error"] == "password_change_required"
    listed = run(env, "users", "list").stdout
    assert "gina" in listed and "editor" in listed and "admin" in listed and password not in listed

    run(env, "users", "disable", "gina")
    assert (await body(await gina.request("GET", f"{API}/session")))["authenticated"] is False
    assert (await client_for(gw).login("gina", password)).status == 401
    run(env, "users", "enable", "gina")
    reset = run(env, "users", "reset-password", "gina").stdout.strip()
    assert reset and reset != password
    assert (await client_for(gw).login("gina", password)).status == 401
    assert (await client_for(gw).login("gina", reset)).status == 200
    run(env, "users", "reset-password", "gina", "--password-stdin", stdin="short\n", ok=False)

    # The last admin cannot be demoted, disabled or deleted.
    for args in (("set-role", "admin", "viewer"), ("disable", "admin"), ("delete", "admin")):
        done = run(env, "users", *args, ok=False)
        assert "last admin" in done.stderr
    run(env, "users", "delete", "gina")
    assert (await client_for(gw).login("gina", reset)).status == 401
    assert "gina" not in run(env, "users", "list").stdout

    key_id = run(env, "keys", "add", "api-one", "--site", "technitium", stdin="c2VjcmV0\n").stdout.strip()
    assert key_id in run(env, "keys", "list").stdout
    # Sealed in the store: neither the secret, nor a key's or a person's name, is in the file.
    dump = b"".join(p.read_bytes() for p in data.glob("sessions.sqlite3*"))
    assert b"c2VjcmV0" not in dump and b"api-one" not in dump and b"gina" not in dump and len(dump) > 0
    run(env, "keys", "add", "api-two", "--site", "nowhere", stdin="x\n", ok=False)
    run(env, "keys", "delete", "api-one")
    assert "api-one" not in run(env, "keys", "list").stdout
