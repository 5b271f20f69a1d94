"""The Compose files of deploy/compose, brought up for real with podman-compose from a scratch copy of
the repository's files (as a user's checkout): secrets from make-secrets.sh, the image built from the
Dockerfile, stand-ins for the official redis and caddy images (same layout, no registry here).

The app behind them is the Technitium fake, run as one more service of the stack from the authproxy
image (it has aiohttp) with tests/ mounted: a test-only Compose file adds it, as `app:5380`.

compose.yaml: sign in through Caddy (TLS from Caddy's own CA, verified against that CA's root), use
the app through forward auth, restart the authproxy container and Redis: the session survives both.
compose.single.yaml: authproxy alone over its own HTTPS with the embedded store; the session survives
a restart. Everything the project made (containers, volumes, networks) is removed afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pyotp
import pytest

from tests.integration.conftest import LOGIN
from tests.support.containers import ROOT, Podman, compose_project, free_subnet, standin_env
from tests.support.procs import free_port
from tests.support.technitium import ALICE

pytestmark = pytest.mark.deploy

SITE = "authproxy.test"
APP_PORT = 5380


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """deploy/compose and what it refers to (../../caddy/Caddyfile), copied: the test writes secrets
    and a Compose file of its own there, never into the repository."""
    compose_dir = tmp_path / "repo" / "deploy" / "compose"
    shutil.copytree(ROOT / "deploy" / "compose", compose_dir,
                    ignore=shutil.ignore_patterns("secrets", ".env"))
    (tmp_path / "repo" / "caddy").mkdir()
    shutil.copy(ROOT / "caddy" / "Caddyfile", tmp_path / "repo" / "caddy" / "Caddyfile")
    return compose_dir


def _app_service(image: str, network: str) -> dict[str, object]:
    """The fake upstream as a service of the stack (YAML is JSON's superset: podman-compose reads it)."""
    pyotp_dir = Path(pyotp.__file__).parent
    probe = f"python -c 'import socket; socket.create_connection((\"127.0.0.1\", {APP_PORT}), 2)'"
    return {"services": {"app": {
        "image": image,
        "entrypoint": ["python", "-m", "tests.deploy.fake_upstream", str(APP_PORT)],
        "working_dir": "/src",
        "environment": {"PYTHONPATH": "/src:/opt/testlibs", "PYTHONDONTWRITEBYTECODE": "1"},
        "volumes": [f"{ROOT / 'tests'}:/src/tests:ro", f"{pyotp_dir}:/opt/testlibs/pyotp:ro"],
        "networks": [network],
        "tmpfs": ["/data"],   # the image's VOLUME /data: no anonymous volume left behind
        "healthcheck": {"test": ["CMD-SHELL", probe], "interval": "5s"},
    }}}


@pytest.fixture
def project(podman: Podman) -> Iterator[str]:
    name = f"aptest{os.getpid()}x{free_port()}"
    with compose_project(podman, name):
        yield name


def _containers(podman: Podman, project: str) -> dict[str, dict[str, object]]:
    ids = podman.run("ps", "-aq", "--filter", f"label=io.podman.compose.project={project}").stdout.split()
    found = {}
    for cid in ids:
        info = podman.inspect("container", cid)
        found[info["Config"]["Labels"]["com.docker.compose.service"]] = info  # type: ignore[index]
    return found


async def _sign_in_and_use(http: aiohttp.ClientSession, base: str, **kw: object) -> str:
    async with http.post(base + LOGIN, json={"username": ALICE[0], "password": ALICE[1]}, **kw) as resp:  # type: ignore[arg-type]
        assert resp.status == 200, await resp.text()
        cookie = resp.cookies["__Host-authproxy"].value
    await _use(http, base, cookie, **kw)
    return cookie


async def _use(http: aiohttp.ClientSession, base: str, cookie: str, **kw: object) -> None:
    """The app's API with the session cookie: the app answers with the signed-in person's own token."""
    async with http.get(f"{base}/api/user/session/get", headers={"Cookie": f"__Host-authproxy={cookie}"},
                        allow_redirects=False, **kw) as resp:  # type: ignore[arg-type]
        assert resp.status == 200, (resp.status, await resp.text())
        body = await resp.json(content_type=None)
        assert body["status"] == "ok" and body["username"] == ALICE[0], body   # no `response` here


async def test_forward_auth_stack_caddy_redis_authproxy(
        podman: Podman, authproxy_image: str, standin_images: dict[str, str], checkout: Path,
        project: str) -> None:
    started = time.monotonic()
    secrets = await asyncio.to_thread(podman.run, "./make-secrets.sh", tool="sh", cwd=checkout)
    assert "wrote secrets/session_secret" in secrets.stdout
    assert oct((checkout / "secrets").stat().st_mode & 0o777) == "0o700"
    acl = (checkout / "secrets" / "redis_acl").read_text()
    password = (checkout / "secrets" / "redis_url").read_text().strip().split(":")[2].split("@")[0]
    assert len(password) >= 64 and password not in acl   # Redis holds only its SHA-256
    again = podman.run("./make-secrets.sh", tool="sh", cwd=checkout)
    assert again.stdout == "" and password in (checkout / "secrets" / "redis_url").read_text()  # kept

    (checkout / "app.json").write_text(json.dumps(_app_service(authproxy_image, "edge")))
    subnet = free_subnet(podman)
    https_port, http_port = free_port(), free_port()
    # The README's .env; what only the test needs (images, loopback ports, a free subnet) from its env.
    (checkout / ".env").write_text(f"AUTHPROXY_SITE={SITE}\nUPSTREAM_URL=http://app:{APP_PORT}\n"
                                   "UPSTREAM_TYPE=technitium\n")
    env = {**standin_env(standin_images), "AUTHPROXY_IMAGE": authproxy_image, "PUBLISH_ADDRESS": "127.0.0.1",
           "HTTPS_PORT": str(https_port), "HTTP_PORT": str(http_port), "EDGE_SUBNET": subnet}
    # podman-compose 1.0.3 ignores ipam: the edge network is made first, as the README says.
    podman.run("network", "create", "--subnet", subnet, f"{project}_edge")
    files = ("-p", project, "-f", "compose.yaml", "-f", "app.json")
    podman.compose(*files, "up", "-d", cwd=checkout, env=env)
    names = {service: str(info["Name"]) for service, info in _containers(podman, project).items()}
    assert set(names) == {"authproxy", "redis", "caddy", "app"}
    for service in ("redis", "app", "authproxy", "caddy"):
        await asyncio.to_thread(podman.wait_healthy, names[service], 90)

    # Only Caddy publishes ports, on the address asked for.
    published = {service: {port: bound for port, bound in (info["HostConfig"]["PortBindings"] or {}).items()  # type: ignore[index]
                           if bound} for service, info in _containers(podman, project).items()}
    assert published["authproxy"] == published["redis"] == {}
    assert published["caddy"]["443/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(https_port)}]

    # Caddy's own CA (local_certs: `tls internal`) issued the certificate: verify against its root.
    root = podman.run("exec", names["caddy"], "cat", "/data/caddy/pki/authorities/local/root.crt").stdout
    tls = ssl.create_default_context(cadata=root)
    base = f"https://{SITE}:{https_port}"
    resolver = _Resolve(SITE, "127.0.0.1")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls, resolver=resolver),
                                     cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(
            f"{base}/some/page", headers={"Accept": "text/html"}, allow_redirects=False
        ) as resp:
            assert resp.status == 302 and "/_authproxy/login" in resp.headers["Location"]
        async with http.get(f"{base}/_authproxy/verify/caddy", allow_redirects=False) as resp:
            assert resp.status == 404        # the check is Caddy's, from inside
        async with http.get(f"http://{SITE}:{http_port}/x", allow_redirects=False) as resp:
            assert resp.status in (301, 308) and resp.headers["Location"].startswith("https://")
        cookie = await _sign_in_and_use(http, base)

        podman.run("restart", "-t", "10", names["authproxy"])   # graceful stop, new process
        # podman restarts what a container depends on with it (Redis here): wait for both
        await asyncio.to_thread(podman.wait_healthy, names["authproxy"], 60)
        await asyncio.to_thread(podman.wait_healthy, names["redis"], 60)
        await _until_ok(http, base, cookie)

        podman.run("restart", "-t", "10", names["redis"])       # the append-only file keeps it
        await asyncio.to_thread(podman.wait_healthy, names["redis"], 60)
        await _until_ok(http, base, cookie)

    logs = podman.run("logs", names["authproxy"]).stderr
    assert cookie not in logs and ALICE[1] not in logs and password not in logs
    _tear_down(podman, project, files, checkout, env)
    print(f"\ncompose.yaml stack: {time.monotonic() - started:.0f} s", flush=True)


async def test_single_container_stack(
        podman: Podman, authproxy_image: str, checkout: Path, project: str) -> None:
    started = time.monotonic()
    (checkout / "app.json").write_text(json.dumps(_app_service(authproxy_image, "default")))
    port = free_port()
    env = {"AUTHPROXY_IMAGE": authproxy_image, "UPSTREAM_URL": f"http://app:{APP_PORT}",
           "PUBLISH_ADDRESS": "127.0.0.1", "HTTPS_PORT": str(port)}
    files = ("-p", project, "-f", "compose.single.yaml", "-f", "app.json")
    podman.compose(*files, "up", "-d", cwd=checkout, env=env)
    names = {service: str(info["Name"]) for service, info in _containers(podman, project).items()}
    assert set(names) == {"authproxy", "app"}
    for service in ("app", "authproxy"):
        await asyncio.to_thread(podman.wait_healthy, names[service], 90)
    base = f"https://127.0.0.1:{port}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False),
                                     cookie_jar=aiohttp.DummyCookieJar()) as http:
        cookie = await _sign_in_and_use(http, base)
        podman.run("restart", "-t", "10", names["authproxy"])
        await asyncio.to_thread(podman.wait_healthy, names["authproxy"], 60)
        await _until_ok(http, base, cookie)
    data = podman.run("exec", names["authproxy"], "ls", "/data").stdout.split()
    assert {"session_secret", "sessions.sqlite3", "selfsigned.crt"} <= set(data)
    _tear_down(podman, project, files, checkout, env)
    print(f"\ncompose.single.yaml stack: {time.monotonic() - started:.0f} s", flush=True)


def _tear_down(
    podman: Podman, project: str, files: tuple[str, ...], checkout: Path, env: dict[str, str]
) -> None:
    """`down -v` (containers and volumes), then the networks podman-compose 1.0.3 leaves; nothing remains."""
    podman.compose(*files, "down", "-v", cwd=checkout, env=env)
    for network in podman.networks():
        if network.startswith(f"{project}_"):
            podman.run("network", "rm", network)
    label = f"label=io.podman.compose.project={project}"
    assert podman.run("ps", "-aq", "--filter", label).stdout.strip() == ""
    assert podman.run("volume", "ls", "-q", "--filter", label).stdout.strip() == ""
    assert not [n for n in podman.networks() if n.startswith(f"{project}_")]


async def _until_ok(http: aiohttp.ClientSession, base: str, cookie: str, timeout: float = 60) -> None:
    """The same cookie still works once the restarted part answers again (never a new sign-in)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await _use(http, base, cookie)
            return
        except (AssertionError, aiohttp.ClientError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


class _Resolve(aiohttp.abc.AbstractResolver):
    """`SITE` -> 127.0.0.1, so the client sends the real host name (Host header and TLS SNI)."""

    def __init__(self, host: str, address: str) -> None:
        self.host, self.address = host, address

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[aiohttp.abc.ResolveResult]:
        assert host == self.host, host
        return [{"hostname": host, "host": self.address, "port": port, "family": 2, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass
