"""What every bench script shares: processes that always stop, wrk runs, a signed-in session, tables.

- `Bench` (a context manager) owns a temp dir and every process a script starts (redis-server, nginx,
  Caddy, Traefik, authproxy and baseline servers). They run in their own sessions and are stopped by
  process group on exit, on errors, on Ctrl-C and on SIGTERM (tests/support/procs.ManagedProcess).
- `wrk()` runs /usr/bin/wrk --latency in a separate process on loopback: an optional warm-up run, then
  `runs` measured runs; the median of each figure is reported. Any non-2xx/3xx answer is an error (the
  figure would measure error pages), socket errors are reported.
- `sign_in()` creates a real session: authproxy's own login API (in-process app, real Redis store)
  against the faithful FakeTechnitium; benchmarked authproxy processes share the Redis and the
  SESSION_SECRET, so the cookie works there (the session is the same whatever the site's upstream URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import math
import os
import platform
import pwd
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Imported once ROOT is on sys.path (a bench script runs as a file, not as a package): E402 on purpose.
from tests.support.procs import ManagedProcess, free_port, wait_for_port  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

SECRET = "bench-session-secret-" + "x" * 40
USER, PASSWORD = "alice", "alice-pass"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ORIGINAL_HOST = "app.example.com"


class BenchError(Exception):
    """A benchmark could not measure what it claims to (a process did not start, answers were errors)."""


# ---- command line ----------------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured wrk run (default 5)")
    p.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of warm-up before each case (default 1)"
    )
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: wrk shares the 2 cores)")
    p.add_argument("--runs", type=int, default=1, help="measured runs per case; the median is reported")
    p.add_argument("--quick", action="store_true", help="smoke run: 1.5 s runs, 0.5 s warm-up, 1 run")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    return p


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.quick:
        args.duration, args.warmup, args.runs = 1.5, 0.5, 1
    if args.runs < 1 or args.duration <= 0 or args.connections < 1 or args.threads < 1:
        raise SystemExit("--runs, --duration, --connections and --threads must be positive")
    args.threads = min(args.threads, args.connections)
    return args


# ---- the machine -----------------------------------------------------------------------------------


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001
        return "not installed"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def print_machine(extra: Mapping[str, str] | None = None) -> None:
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(os.cpu_count())
    wrk_v = subprocess.run(
        [WRK, "--version"], check=False, capture_output=True, text=True
    ).stdout.splitlines()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    print(f"machine: nproc={nproc}, CPU {cpu_model()!r}, {platform.system()} {platform.release()}")
    print(
        f"python {platform.python_version()}, aiohttp {_version('aiohttp')}, redis-py {_version('redis')}, "
        f"hiredis {_version('hiredis')}, uvloop {_version('uvloop')}, cryptography {_version('cryptography')}"
    )
    print(f"load generator: {wrk_v[0].split(' Copyright')[0] if wrk_v else WRK}; "
          f"load average before start: {' '.join(load)}")
    for k, v in (extra or {}).items():
        print(f"{k}: {v}")
    if load and load[0] != "?" and float(load[0]) > 0.5:
        print("note: the machine was not idle when this started; other work on the same cores skews absolute "
              "figures (ratios measured back to back are less affected)")
    print()


# ---- processes -------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class Bench:
    """Owns the temp dir and every started process; `with Bench(args) as b:` stops them all at the end."""

    def __init__(self, args: argparse.Namespace, name: str) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix=f"authproxy-bench-{name}-"))
        self.tmp.chmod(0o755)  # nginx workers run as nobody and must read files served from here
        self.procs: list[ManagedProcess] = []

    def __enter__(self) -> Self:
        # Also SIGINT: a shell starting us in the background leaves it ignored, and Ctrl-C must still work.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_interrupt)
        signal.signal(signal.SIGHUP, _raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        if self.args.keep:
            print(f"(kept {self.tmp})")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def spawn(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        proc = ManagedProcess(argv, name=name, env=env, cwd=cwd or ROOT,
                              log_path=self.tmp / f"{name}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc.start()

    def stop(self, proc: ManagedProcess, timeout: float = 3.0) -> None:
        proc.stop(timeout=timeout)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(timeout=3.0)
        self.procs.clear()

    # ---- redis ---------------------------------------------------------------------------------------

    def redis(self) -> RedisServer:
        """An in-memory redis-server (--save '' --appendonly no), stopped with everything else."""
        server = RedisServer(self.tmp / "redis")
        server.start()
        assert server.process is not None
        self.procs.append(server.process)
        return server

    # ---- nginx ---------------------------------------------------------------------------------------

    def nginx(self, name: str, servers: str, *, workers: int = 1, extra_http: str = "",
              files: Mapping[str, str] | None = None) -> ManagedProcess:
        """nginx (daemon off, access log off, worker_processes `workers`) with `servers` (http-level
        text: server blocks, upstreams, maps) in its http {}; `files` are written next to nginx.conf
        first (e.g. snippets/x.conf for includes). Waits for every `listen 127.0.0.1:PORT` in it."""
        workdir = self.tmp / name
        for rel, text in (files or {}).items():
            (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
            (workdir / rel).write_text(text, encoding="utf-8")
        temp = workdir / "temp"
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (temp / sub).mkdir(parents=True, exist_ok=True)
        user = ""
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            user = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};\n"
            for path in [workdir, temp, *temp.iterdir()]:
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        conf = workdir / "nginx.conf"
        conf.write_text(
            f"{user}worker_processes {workers};\ndaemon off;\npid {workdir / 'nginx.pid'};\n"
            "error_log stderr warn;\n"
            "events { worker_connections 4096; multi_accept on; }\n"
            "http {\n"
            "    access_log off;\n    sendfile on;\n    tcp_nopush on;\n    tcp_nodelay on;\n"
            "    keepalive_requests 1000000;\n    keepalive_timeout 60s;\n"
            f"    client_body_temp_path {temp / 'client_body'};\n    proxy_temp_path {temp / 'proxy'};\n"
            f"    fastcgi_temp_path {temp / 'fastcgi'};\n    uwsgi_temp_path {temp / 'uwsgi'};\n"
            f"    scgi_temp_path {temp / 'scgi'};\n"
            f"{extra_http}\n{servers}\n}}\n",
            encoding="utf-8")
        proc = self.spawn([NGINX, "-p", f"{workdir}/", "-c", conf, "-e", "stderr"], name=name)
        ports = [int(p) for p in re.findall(r"listen\s+127\.0\.0\.1:(\d+)", servers)]
        for port in ports:
            wait_for_port("127.0.0.1", port, 10, process=proc)
        return proc

    # ---- authproxy -----------------------------------------------------------------------------------

    def authproxy(
        self,
        *,
        upstream_url: str,
        redis_url: str | None,
        workers: int = 1,
        access_log: bool = False,
        cache_ttl: float | None = None,
        name: str = "authproxy",
        extra_env: Mapping[str, str] | None = None,
    ) -> Authproxy:
        """`python -m authproxy run --workers N` (real processes, SO_REUSEPORT when N > 1), with its
        forward-auth listener (FORWARD_AUTH_PORT) on a port of its own: where the proxies send checks."""
        port, forward_auth_port = free_port(), free_port()
        env = authproxy_env(upstream_url, redis_url, port=port, access_log=access_log, cache_ttl=cache_ttl,
                            data_dir=self.tmp / "data")
        env["FORWARD_AUTH_PORT"] = str(forward_auth_port)
        env.update(extra_env or {})
        proc = self.spawn([sys.executable, "-m", "authproxy", "run", "--workers", str(workers)], name=name,
                          env=env)
        wait_for_port("127.0.0.1", port, 20, process=proc)
        wait_for_port("127.0.0.1", forward_auth_port, 20, process=proc)
        ap = Authproxy(proc=proc, port=port, workers=workers, forward_auth_port=forward_auth_port)
        deadline = time.monotonic() + 20
        while ap.log().count("authproxy ready") < workers or len(ap.worker_pids()) < workers:
            if not proc.running:
                raise BenchError(f"authproxy exited early\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"authproxy workers not ready after 20 s\n{proc.log_tail()}")
            time.sleep(0.05)
        return ap


@dataclass
class Authproxy:
    proc: ManagedProcess
    port: int
    workers: int
    forward_auth_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def verify_url(self) -> str:
        """The forward-auth listener: the only one that answers /_authproxy/verify*."""
        return f"http://127.0.0.1:{self.forward_auth_port}"

    def log(self) -> str:
        try:
            return self.proc.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """The processes that serve: the main one (1 worker) or its forked children (N workers)."""
        pid = self.proc.pid
        if pid is None:
            return []
        if self.workers == 1:
            return [pid]
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def peak_rss_mb(self) -> list[float]:
        """VmHWM (peak resident set) of every worker, in MB."""
        return [status_kb(p, "VmHWM") / 1024 for p in self.worker_pids()]

    def rss_mb(self) -> list[float]:
        return [status_kb(p, "VmRSS") / 1024 for p in self.worker_pids()]


def status_kb(pid: int, field_name: str) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    return float("nan")


def authproxy_env(upstream_url: str, redis_url: str | None, *, port: int = 0, access_log: bool = False,
                  cache_ttl: float | None = None, data_dir: Path | None = None) -> dict[str, str]:
    """`redis_url` None: the embedded SQLite store in `data_dir`."""
    env = {"UPSTREAM_URL": upstream_url, "UPSTREAM_TYPE": "technitium", "TRUST_PROXY": "true",
           "SESSION_SECRET": SECRET, "HOST": "127.0.0.1", "PORT": str(port),
           "ACCESS_LOG": "true" if access_log else "false", "LOG_LEVEL": "INFO", "LOG_FORMAT": "json",
           "AUTHPROXY_DATA_DIR": str(data_dir or Path(tempfile.gettempdir()) / "authproxy-bench-data")}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    if cache_ttl is not None:
        env["SESSION_CACHE_TTL"] = str(cache_ttl)
    return env


def python_server(bench: Bench, kind: str, *args: str, name: str | None = None) -> tuple[int, ManagedProcess]:
    """A baseline server from bench/_servers.py in its own process; returns its port and process."""
    port = free_port()
    proc = bench.spawn([sys.executable, "-m", "bench._servers", kind, "--port", str(port), *args],
                       name=name or f"baseline-{kind}")
    wait_for_port("127.0.0.1", port, 15, process=proc)
    return port, proc


# ---- a signed-in session ---------------------------------------------------------------------------


@dataclass
class SignedIn:
    cookie_name: str
    cookie_value: str
    store_key: str
    blob_bytes: int

    @property
    def header(self) -> str:
        return f"Cookie: {self.cookie_name}={self.cookie_value}"


def sign_in(redis: RedisServer | None, data_dir: Path) -> SignedIn:
    """Log alice in through authproxy's own API (real Redis store, or with None the SQLite file in
    `data_dir`) against FakeTechnitium."""
    return asyncio.run(_sign_in(redis, data_dir))


async def _sign_in(redis: RedisServer | None, data_dir: Path) -> SignedIn:
    import aiohttp
    from aiohttp import web

    from authproxy import keys
    from authproxy.app import create_app
    from authproxy.config.loader import ensure_session_secrets, load_config
    from authproxy.crypto import Keyring
    from authproxy.sessions.ticket import decode_ticket
    from tests.fakes.technitium import FakeTechnitium

    fake = FakeTechnitium(api_version=15)
    fake.add_user(USER, PASSWORD, display_name="Alice Example")
    await fake.start()
    runner: web.AppRunner | None = None
    try:
        config, _ = ensure_session_secrets(load_config(authproxy_env(fake.url, redis.url if redis else None,
                                                                     data_dir=data_dir)))
        app = create_app(config)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        cookie_name = app[keys.SESSIONS].cookie_name
        login = f"{base}{config.server.prefix}/api/auth/login"
        async with (aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
                    http.post(login, json={"username": USER, "password": PASSWORD},
                              headers={"X-Forwarded-Proto": "https"}) as resp):
            body = await resp.text()
            if resp.status != 200:
                raise BenchError(f"login through authproxy failed: HTTP {resp.status} {body[:300]}")
            value = None
            for header in resp.headers.getall("Set-Cookie", ()):
                m = re.match(rf"\s*{re.escape(cookie_name)}=([^;]+)", header)
                if m:
                    value = m.group(1)
            if not value:
                raise BenchError("login answered 200 without a session cookie")
        ticket = decode_ticket(value, Keyring(config.session.secrets))
        assert ticket is not None
        if redis is None:
            with contextlib.closing(sqlite3.connect(data_dir / "sessions.sqlite3")) as db:
                (size,) = db.execute(
                    "SELECT length(value) FROM kv WHERE key = ?", (ticket.store_key,)
                ).fetchone()
            return SignedIn(cookie_name, value, ticket.store_key, int(size))
        key = config.session.redis_prefix + ticket.store_key
        reply = redis.command("STRLEN", key)
        return SignedIn(cookie_name, value, key, int(reply.lstrip(b":")))
    finally:
        if runner is not None:
            await runner.cleanup()
        await fake.close()


# ---- HTTP probe ------------------------------------------------------------------------------------


def probe(
    url: str, headers: Sequence[str], *, expect: int = 200, what: str = ""
) -> tuple[dict[str, str], bytes]:
    """One request before the load: the answer must be `expect`, else the benchmark is meaningless.
    Returns the answer's headers and body."""
    hdrs = dict(h.split(": ", 1) for h in headers)
    req = urllib.request.Request(url, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, body, got = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        status, body, got = exc.code, exc.read(), dict(exc.headers)
    except OSError as exc:
        raise BenchError(f"{what or url}: no answer ({exc})") from None
    if status != expect:
        raise BenchError(f"{what or url}: expected HTTP {expect}, got {status}: {body[:300]!r}")
    return got, body


# ---- wrk -------------------------------------------------------------------------------------------


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    mb_s: float
    requests: int
    errors: str = ""
    samples: list[float] = field(default_factory=list)
    warmup_requests: int = 0
    cpu: dict[str, float] = field(default_factory=dict)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_SIZE = {"B": 1 / 1e6, "KB": 1024 / 1e6, "MB": 1024**2 / 1e6, "GB": 1024**3 / 1e6}


def _latency(text: str, pct: str) -> float:
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    return float(m.group(1)) * _UNITS_MS[m.group(2)] if m else float("nan")


def _run_wrk(url: str, headers: Sequence[str], duration: float, connections: int, threads: int) -> Load:
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
            "--timeout", "5s"]
    for h in headers:
        argv += ["-H", h]
    argv.append(url)
    out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=duration + 30)
    text = out.stdout
    if out.returncode != 0 or "Requests/sec" not in text:
        raise BenchError(f"wrk failed ({out.returncode}) on {url}:\n{text}\n{out.stderr}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non2xx:
        raise BenchError(
            f"{url}: {non2xx.group(1)} answers were not 2xx/3xx; the figures would measure errors\n{text}"
        )
    errors = re.search(r"Socket errors:.*", text)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    reqs = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    tr = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", text)
    mb_s = float(tr.group(1)) * _SIZE[tr.group(2)] if tr else float("nan")
    return Load(rps=rps, p50_ms=_latency(text, "50"), p99_ms=_latency(text, "99"), mb_s=mb_s, requests=reqs,
                errors=errors.group(0) if errors else "")


def wrk(args: argparse.Namespace, url: str, headers: Sequence[str] = (), *,
        connections: int | None = None, meters: Mapping[str, Callable[[], list[int]]] | None = None) -> Load:
    """Warm-up (not counted), then `args.runs` runs; medians of req/s, p50, p99, MB/s.

    `meters`: name -> a function giving the pids whose CPU time to account over the measured runs
    (descendants included); the result's `cpu` maps each name (and "wrk") to % of one core."""
    conns = connections or args.connections
    threads = min(args.threads, conns)
    warm = _run_wrk(url, headers, args.warmup, conns, threads).requests if args.warmup > 0 else 0
    pids = {name: fn() for name, fn in (meters or {}).items()}
    before = {name: cpu_seconds(p) for name, p in pids.items()}
    wrk_before = _children_cpu()
    t0 = time.monotonic()
    loads = [_run_wrk(url, headers, args.duration, conns, threads) for _ in range(args.runs)]
    wall = time.monotonic() - t0
    cpu = {name: 100 * (cpu_seconds(p) - before[name]) / wall for name, p in pids.items()}
    cpu["wrk"] = 100 * (_children_cpu() - wrk_before) / wall
    med = statistics.median
    return Load(rps=med(x.rps for x in loads), p50_ms=med(x.p50_ms for x in loads),
                p99_ms=med(x.p99_ms for x in loads), mb_s=med(x.mb_s for x in loads),
                requests=sum(x.requests for x in loads),
                errors="; ".join(sorted({x.errors for x in loads if x.errors})),
                samples=[x.rps for x in loads], warmup_requests=warm, cpu=cpu)


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def descendants(pid: int | None) -> list[int]:
    """`pid` and every process below it (nginx workers, forked authproxy workers)."""
    if pid is None:
        return []
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of live processes (a process that exited meanwhile counts 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


# ---- output ----------------------------------------------------------------------------------------


def fmt_int(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:,.0f}"


def fmt_ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str = "") -> None:
    if title:
        print(title)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    align = ["<"] + [">"] * (len(headers) - 1)
    line = "  ".join(f"{h:{a}{w}}" for h, a, w in zip(headers, align, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(f"{c!s:{a}{w}}" for c, a, w in zip(r, align, widths, strict=True)))
    print()


@dataclass
class Target:
    what: str
    value: float
    op: str  # ">=", "<=" or "<"
    limit: float
    unit: str = "x"

    @property
    def ok(self) -> bool:
        if math.isnan(self.value):
            return False
        return {">=": self.value >= self.limit, "<=": self.value <= self.limit,
                "<": self.value < self.limit}[self.op]

    def row(self) -> list[str]:
        v = "n/a" if math.isnan(self.value) else f"{self.value:.2f}{self.unit}"
        return [self.what, v, f"{self.op} {self.limit:g}{self.unit}", "PASS" if self.ok else "MISS"]


def print_targets(targets: Sequence[Target]) -> None:
    table(["target", "measured", "wanted", "result"], [t.row() for t in targets], title="Targets")
    missed = sum(not t.ok for t in targets)
    print(f"{len(targets) - missed} PASS, {missed} MISS (missed targets do not change the exit code)")


def main_wrapper(run: Callable[[], None]) -> None:
    """Exit 0 after a full run (targets may MISS), 1 on errors, 130 on Ctrl-C/SIGTERM."""
    try:
        run()
    except KeyboardInterrupt:
        print("\ninterrupted; every started process was stopped", file=sys.stderr)
        sys.exit(130)
    except BenchError as exc:
        print(f"\nbenchmark error: {exc}", file=sys.stderr)
        sys.exit(1)


def redis_commands(url: str) -> int:
    """Commands Redis has processed so far (to print Redis calls per request)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()
