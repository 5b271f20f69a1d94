"""The container image, built from the repository's Dockerfile on a plain Debian bookworm base (what a
python:3.11-slim build does, minus the registry), then run: it signs in against the Technitium fake on
the host's loopback (`--network host`, authproxy on 127.0.0.1 too), reports healthy through its own
HEALTHCHECK, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.technitium import FakeTechnitium
from tests.integration.conftest import LOGIN
from tests.support.containers import ROOT, Podman, run_args
from tests.support.procs import free_port
from tests.support.technitium import ALICE

pytestmark = pytest.mark.deploy

MAX_ADDED_MB = 70   # what authproxy adds to its base: the venv (~57 MB, two thirds compiled extensions)


@pytest.fixture
def container(podman: Podman) -> Iterator[str]:
    name = f"authproxy-test-{free_port()}"
    try:
        yield name
    finally:
        podman.run("rm", "-f", "-v", "-t", "0", name, check=False)   # -v: the anonymous /data volume too


def test_image_metadata_and_contents(podman: Podman, authproxy_image: str, base_image: str) -> None:
    image = podman.inspect("image", authproxy_image)
    config = image["Config"]
    assert isinstance(config, dict)
    assert config["User"] == "authproxy" and config["StopSignal"] == "SIGTERM"
    assert config["ExposedPorts"] == {"8443/tcp": {}} and config["Volumes"] == {"/data": {}}
    assert "AUTHPROXY_DATA_DIR=/data" in config["Env"] and config["Entrypoint"] == ["authproxy"]
    assert image["Healthcheck"]["Test"] == ["CMD", "authproxy", "healthcheck"]   # type: ignore[index]
    labels = config["Labels"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.title"] == "authproxy"
    assert labels["org.opencontainers.image.base.name"] == base_image

    size, base_size = (
        int(str(podman.inspect("image", name)["Size"])) / 1e6 for name in (authproxy_image, base_image)
    )
    print(f"\nimage {authproxy_image}: {size:.0f} MB, {size - base_size:.0f} MB over the base")
    assert size - base_size < MAX_ADDED_MB

    # No tests, sources, requirements, caches, pip or build tools; the wheel's files and the pinned
    # dependencies at the lock's versions.
    script = """
import importlib.metadata as md, json, os, re, sys
found = []
for top in ("/", "/opt", "/root", "/data", "/tmp", "/src"):
    if os.path.isdir(top):
        found += [os.path.join(top, n) for n in os.listdir(top)]
print(json.dumps({
    "paths": found, "python": sys.executable,
    "dists": sorted(f"{re.sub('[-_.]+', '-', d.metadata['Name']).lower()}=={d.version}"
                    for d in md.distributions()),
    "tests": [p for p, _, _ in os.walk("/opt/authproxy") if "/tests" in p or p.endswith("/.git")],
    "data_mode": oct(os.stat("/data").st_mode & 0o777),
}))
"""
    out = podman.run(
        "run", "--rm", "--user", "0", "--entrypoint", "python", authproxy_image, "-c", script
    ).stdout
    facts = json.loads(out.strip().splitlines()[-1])
    assert facts["data_mode"] == "0o700"
    assert podman.run("run", "--rm", "--entrypoint", "id", authproxy_image).stdout.startswith(
        "uid=10001(authproxy) gid=10001(authproxy)")
    assert facts["python"] == "/opt/authproxy/bin/python"
    assert facts["tests"] == []
    for absent in ("/src", "/wheels", "/build", "/root/.cache", "/opt/authproxy/requirements"):
        assert absent not in facts["paths"], absent
    locked = {
        line.split(" ")[0].lower()
        for line in (ROOT / "requirements/runtime.lock").read_text().splitlines()
        if "==" in line and not line.startswith((" ", "#"))
    }
    dists = set(facts["dists"])
    assert locked <= dists, locked - dists
    assert dists - locked == {f"authproxy=={version}"}   # no pip, no setuptools, nothing unlocked


async def test_container_signs_in_reports_healthy_and_stops_on_sigterm(
        podman: Podman, authproxy_image: str, technitium: FakeTechnitium, container: str) -> None:
    port = free_port()
    env = {"HOST": "127.0.0.1", "PORT": str(port), "HTTPS_ENABLED": "true", "UPSTREAM_URL": technitium.url,
           "UPSTREAM_TYPE": "technitium", "SHUTDOWN_TIMEOUT": "5s"}
    podman.run("run", "-d", "--name", container, "--network", "host", *run_args(env), authproxy_image)
    base = f"https://127.0.0.1:{port}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False),
                                     cookie_jar=aiohttp.DummyCookieJar()) as http:
        deadline = time.monotonic() + 60
        while True:
            try:
                async with http.get(f"{base}/_authproxy/healthz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, podman.run("logs", container, check=False).stderr
            await asyncio.sleep(0.2)
        podman.wait_healthy(container, timeout=10)   # the image's HEALTHCHECK: `authproxy healthcheck`

        async with http.post(base + LOGIN, json={"username": ALICE[0], "password": ALICE[1]}) as resp:
            assert resp.status == 200, await resp.text()
            cookie = resp.cookies["__Host-authproxy"].value
        async with http.get(
            f"{base}/api/zones/list", headers={"Cookie": f"__Host-authproxy={cookie}"}
        ) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        [login] = technitium.requests_to("/api/user/login")
        assert login.peer == "127.0.0.1"   # the container reached the fake on the host's loopback

    files = podman.run("exec", container, "ls", "-ln", "/data").stdout
    assert "10001" in files and "session_secret" in files and "sessions.sqlite3" in files

    started = time.monotonic()
    podman.run("stop", "-t", "10", container)   # SIGTERM (STOPSIGNAL), SIGKILL only after 10 s
    assert time.monotonic() - started < 6
    state = podman.inspect("container", container)["State"]
    assert state["ExitCode"] == 0, podman.run("logs", container, check=False).stderr   # type: ignore[index]
    logs = podman.run("logs", container).stderr
    assert cookie not in logs and ALICE[1] not in logs


def test_dockerignore_keeps_the_context_to_what_the_image_needs(podman: Podman, tmp_path: Path) -> None:
    """What `docker build .` sends, by the same rules: build a throw-away image that lists it."""
    probe = tmp_path / "Containerfile"
    probe.write_text("FROM scratch\nCOPY . /context/\n")
    podman.run(
        "build",
        "--format",
        "docker",
        "-f",
        str(probe),
        "-t",
        "localhost/authproxy-test-context:latest",
        str(ROOT),
    )
    try:
        mount = podman.run("image", "mount", "localhost/authproxy-test-context:latest").stdout.strip()
        try:
            sent = sorted(
                str(p.relative_to(Path(mount) / "context"))
                for p in (Path(mount) / "context").rglob("*")
                if p.is_file()
            )
        finally:
            podman.run("image", "unmount", "localhost/authproxy-test-context:latest", check=False)
    finally:
        podman.run("rmi", "-f", "localhost/authproxy-test-context:latest", check=False)
    assert "Dockerfile" in sent and "requirements/runtime.lock" in sent and "authproxy/__main__.py" in sent
    for path in sent:
        assert not path.startswith(("tests/", ".venv/", "data/", ".git", "deploy/", "bench/")), path
        assert "__pycache__" not in path and not path.endswith(".pyc"), path
