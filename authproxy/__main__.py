"""Command line: `authproxy run`, `check-config`, `healthcheck`, `version`, `sessions`, `probe`, ..."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import errno
import gc
import ipaddress
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authproxy.config import passwordless
from authproxy.config.loader import ensure_session_secrets, load_config
from authproxy.config.schema import FORWARD_AUTH_SECRET_HEADER, Config
from authproxy.errors import ConfigError
from authproxy.log import AccessLogger, log, setup_logging
from authproxy.notify import sd_notify


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="authproxy", description="Authentication gateway for self-hosted admin UIs"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "check the configuration, then serve"),
                        ("check-config", "print every configuration problem and exit"),
                        ("healthcheck", "exit 0 if the running server answers its liveness check, else 1")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, help="TOML file with [server], [session] and [[sites]]")
        if name == "run":
            p.add_argument("--workers", type=int, help="processes sharing the port (SO_REUSEPORT)")
        if name == "healthcheck":
            p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    from authproxy.cli_ops import add_parsers

    add_parsers(sub, "TOML file with [server], [session] and [[sites]]")
    probe = sub.add_parser("probe", help="recognise the upstream at URL; print a configuration to start from")
    probe.add_argument("url", help="the upstream's own address, e.g. http://192.168.1.5:8080")
    probe.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer")
    key = sub.add_parser("service-key", help="make an API key for a service client (AUTH_MODE=hybrid)")
    key.add_argument("name", help="the service's name, as audit lines will show it")
    tech = sub.add_parser("technitium", help="Technitium helpers")
    tech_sub = tech.add_subparsers(dest="technitium_command", required=True)
    migrate = tech_sub.add_parser("migrate", help="replace TECHNITIUM_CLUSTER_TOKEN by a least-privileged "
                                                  "TECHNITIUM_BACKGROUND_TOKEN")
    migrate.add_argument("--config", type=Path, help="TOML file with [server], [session] and [[sites]]")
    migrate.add_argument("--site", help="the Technitium site (default: the one with a cluster token)")
    from authproxy import cli_accounts

    config_help = "TOML file with [server], [session] and [[sites]]"
    cli_accounts.add_parsers(sub, lambda p: p.add_argument("--config", type=Path, help=config_help))
    return parser


def _load(args: argparse.Namespace, headline: str) -> Config | None:
    """The validated config, or None after printing every problem under `headline`."""
    env = dict(os.environ)
    if getattr(args, "workers", None):
        env["WORKERS"] = str(args.workers)
    try:
        return load_config(env, args.config)
    except ConfigError as exc:
        print(f"authproxy: {headline}{len(exc.problems)} configuration problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return None


def check_config(args: argparse.Namespace) -> int:
    config = _load(args, "")
    if config is None:
        return 2
    store = "redis" if config.session.redis_url else f"sqlite ({config.server.data_dir / 'sessions.sqlite3'})"
    print(f"configuration OK: AUTH_MODE={config.auth_mode}, store={store}, "
          f"sites={', '.join(f'{s.name}={s.type}@{s.upstream_url}' for s in config.sites)}")
    for line in forward_auth_summary(config):
        print(line)
    for line in passwordless.summary(config):   # one-time codes and JWTs, when configured
        print(line)
    return 0


def healthcheck(args: argparse.Namespace) -> int:
    """For HEALTHCHECK: 0 when {prefix}/healthz on the configured HOST/PORT answers 200 (over TLS with
    HTTPS_ENABLED), else 1 (Docker's "unhealthy"; 2 is reserved there, so not even a bad config gives 2)."""
    from authproxy.healthcheck import probe

    config = _load(args, "healthcheck: ")
    if config is None:
        return 1
    healthy, detail = probe(config.server, timeout=args.timeout)
    print(f"authproxy healthcheck: {'ok' if healthy else 'FAILED'}: {detail}",
          file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


def forward_auth_summary(config: Config) -> list[str]:
    """How /verify* (whose 200 answer carries the upstream credential) is protected, and what to set."""
    s = config.server
    verify = f"{s.prefix}/verify*"
    peers = ", ".join(str(n) for n in s.trusted_proxies) or "none"
    header = f"the {FORWARD_AUTH_SECRET_HEADER} header carrying FORWARD_AUTH_SECRET"
    if s.forward_auth_listener:
        lines = [
            (
                f"forward auth: {verify} is served only on its own listener "
                f"http://{s.forward_auth_address()} "
                f"(FORWARD_AUTH_HOST/FORWARD_AUTH_PORT), to TRUSTED_PROXIES ({peers})"
                + (f" sending {header}" if s.forward_auth_secret is not None else "")
                + f"; the public listener {s.host}:{s.port} answers it 404. Point the proxy's check (Caddy "
                "forward_auth, nginx auth_request, Traefik ForwardAuth) at that listener."
            )
        ]
        if not _loopback(s.forward_auth_host):
            lines.append(
                f"  note: FORWARD_AUTH_HOST={s.forward_auth_host} is not a loopback address: keep port "
                f"{s.forward_auth_port} on an internal network, never published"
                + (", or add FORWARD_AUTH_SECRET as well." if s.forward_auth_secret is None else ".")
            )
        return lines
    if s.forward_auth_secret is not None:
        return [(f"forward auth: {verify} is served on the public listener {s.host}:{s.port} only to "
                 f"TRUSTED_PROXIES ({peers}) sending {header}; anyone else gets 403 and never a credential. "
                 "The proxy adds the header to its check only (Caddy: header_up in forward_auth; nginx: "
                 "proxy_set_header in the verify location). Traefik's ForwardAuth cannot add a header: use "
                 "FORWARD_AUTH_PORT for it.")]
    return [
        (
            f"forward auth: off. {verify} answers 404, so nothing that reaches authproxy (a browser "
            "through a TLS-terminating proxy included) can get an upstream credential from it. To use "
            "Caddy forward_auth, nginx auth_request or Traefik ForwardAuth, set FORWARD_AUTH_PORT (e.g. "
            "9001: a listener of its own "
            "on FORWARD_AUTH_HOST, default 127.0.0.1, for the proxy's checks only) or FORWARD_AUTH_SECRET "
            f"({FORWARD_AUTH_SECRET_HEADER}, a header the proxy adds to each check)."
        )
    ]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _serve(config: Config, ssl_paths: tuple[Path, Path] | None, ready: Callable[[], object], *,
           worker: bool) -> None:
    """Serve until SIGTERM/SIGINT, then stop gracefully within SHUTDOWN_TIMEOUT: no new connections,
    every WebSocket bridge gets 1001 "server shutting down", in-flight requests may finish, and what is
    still running after SHUTDOWN_TIMEOUT is cancelled. `ready()` runs once every listener accepts.
    A `worker` (WORKERS > 1) shares the port and leaves SIGINT to the supervisor: Ctrl-C reaches the
    whole process group, and the supervisor answers it with one SIGTERM to each worker."""
    from aiohttp import web

    from authproxy.app import create_app, handler_options
    from authproxy.tls import server_context

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # optional: the `fast` extra
        pass
    from authproxy.app import listen_problem, log_ready
    from authproxy.errors import ListenError

    ssl_ctx = server_context(*ssl_paths) if ssl_paths else None
    # Everything loaded so far lives as long as the process: keep the cyclic GC from walking it again
    # and again (full collections over it show up as tail-latency spikes under load).
    gc.collect()
    gc.freeze()
    # A request allocates a few hundred objects that nearly all die by reference counting; with the
    # default gen-0 threshold (700) the collector still runs every few requests. 20,000: small responses
    # +3-5% req/s on the bench machine (A/B, same load, alternating runs), p99 unchanged.
    gc.set_threshold(20_000, 20, 20)
    app = create_app(config)
    app.on_shutdown.insert(0, _draining)
    if worker:
        app.on_startup.append(_ignore_sigint)

    def listening(_banner: str) -> None:  # run_app's `print`: called once every listener accepts
        log_ready(app, "https" if ssl_paths else "http")   # "authproxy ready" is said then, never before
        ready()

    try:
        web.run_app(
            app,
            host=config.server.host,
            port=config.server.port,
            ssl_context=ssl_ctx,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("authproxy.access") if config.server.access_log else None,
            reuse_port=worker,
            shutdown_timeout=config.server.drain_timeout,
            print=listening,
            # Passed through AppRunner to each RequestHandler. (Not `handler_args=`: run_app forwards that
            # name as a RequestHandler kwarg, which raises TypeError, and aiohttp then silently drops
            # access_log, keepalive_timeout and these limits, logging a warning on every new connection.)
            **handler_options(config),
        )
    except ListenError as exc:
        log.error(str(exc))
        raise SystemExit(1) from None
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL) and "bind" not in str(exc):
            raise
        host = config.server.host
        address = f"{f'[{host}]' if ':' in host else host}:{config.server.port}"
        log.error(f"HOST/PORT: cannot listen on {address}: {listen_problem(exc)}")
        raise SystemExit(1) from None


async def _draining(app: object) -> None:
    """First step of a graceful stop: a second SIGTERM (systemd's KillMode=control-group signals every
    process, and the supervisor forwards its own) would abort aiohttp's drain half-way, so it is ignored
    from now on; a second Ctrl-C (SIGINT) still stops at once, as someone pressing it twice expects."""
    loop = asyncio.get_running_loop()
    loop.remove_signal_handler(signal.SIGINT)   # back to KeyboardInterrupt (a worker: stays ignored)
    loop.remove_signal_handler(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sd_notify("STOPPING=1")


async def _ignore_sigint(app: object) -> None:
    """on_startup of a worker: runs after run_app installed its signal handlers, and removes SIGINT's."""
    asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run(args: argparse.Namespace) -> int:
    config = _load(args, "refusing to start, ")
    if config is None:
        return 2
    setup_logging(level=config.server.log_level, fmt=config.server.log_format,
                  audit_file=config.server.audit_log_file)
    config, created = ensure_session_secrets(config)
    if created:
        log.warning("generated a session signing secret into the data directory; set SESSION_SECRET "
                    "(the same on every replica) to manage it yourself",
                    extra={"fields": {"path": str(config.server.data_dir / "session_secret")}})
    ssl_paths: tuple[Path, Path] | None = None
    if config.server.https_enabled:
        if config.server.https_cert_file and config.server.https_key_file:
            ssl_paths = (config.server.https_cert_file, config.server.https_key_file)
        else:
            from authproxy.tls import self_signed

            cert, key, new = self_signed(config.server.data_dir, config.server.host)
            ssl_paths = (cert, key)
            log.warning(
                "serving HTTPS with a SELF-SIGNED certificate (quick start only); browsers will warn. "
                "Set HTTPS_CERT_FILE and HTTPS_KEY_FILE for real use",
                extra={"fields": {"cert": str(cert), "created": new}},
            )
    elif config.session_mode:
        log.info("TLS is terminated by a trusted proxy: sign-in requires X-Forwarded-Proto: https from "
                 "TRUSTED_PROXIES")
    if config.auth_mode == "none":
        log.warning("AUTH_MODE=none: NOBODY SIGNS IN. Every request that reaches authproxy is sent to "
                    "the upstream with the shared service credential, whoever sends it. Use it only on a "
                    "network where everyone may have that power; AUTH_MODE=hybrid signs people in and keeps "
                    "the service credential for background work and service clients")
    log.info(" ".join(forward_auth_summary(config)))
    for line in passwordless.summary(config):   # one-time codes and JWTs, when configured
        log.info(line)
    workers = config.server.workers
    if workers == 1:
        _serve(config, ssl_paths, lambda: sd_notify("READY=1"), worker=False)
        return 0
    addresses = [(config.server.host, config.server.port)]
    if config.server.forward_auth_port is not None:
        addresses.append((config.server.forward_auth_host, config.server.forward_auth_port))
    # Each run's metrics in a directory of its own, where every worker writes its values and a scrape
    # adds them up (README "Metrics"). prometheus-client reads it when first imported: in each worker.
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the workers' metrics directory was set")
    metrics_dir = tempfile.mkdtemp(prefix="authproxy-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return _supervise(workers, lambda ready: _serve(config, ssl_paths, ready, worker=True),
                          config.server.shutdown_timeout, addresses)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(workers: int, serve: Callable[[Callable[[], object]], None], shutdown_timeout: float,
               addresses: list[tuple[str, int]] | None = None) -> int:
    """Run `workers` processes sharing the port; SIGTERM/SIGINT to this one stops them all (systemd,
    docker stop) within `shutdown_timeout` (SIGKILL for one still there 2 s later). READY=1 once all of
    them listen. A worker that fails before it ever listened stops the others (a bad certificate, a
    taken port: restarting would fail the same way), so the service manager sees the failure; one that
    dies later is restarted after a bounded back-off while the others keep serving. Workers die with the
    supervisor (PR_SET_PDEATHSIG), and the supervisor refuses to start beside a live instance that
    holds one of `addresses` (SO_REUSEPORT would otherwise let old and new serve on one port)."""
    for host, port in addresses or ():
        problem = _port_taken(host, port)
        if problem:
            log.error(problem)
            return 1
    ctx = multiprocessing.get_context("fork")
    listening = ctx.Semaphore(0)
    supervisor = os.getpid()

    def spawn(i: int) -> Any:
        p = ctx.Process(target=_worker, args=(serve, listening, supervisor), name=f"authproxy-worker-{i}")
        p.start()
        return p

    procs = [spawn(i) for i in range(workers)]

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        code = _watch(procs, listening, spawn)
        log.error("a worker failed while starting; stopping the others", extra={"fields": {"exitcode": code}})
    except KeyboardInterrupt:
        code = 0
    finally:
        _stop_workers(procs, shutdown_timeout)
    return code


RESTART_BACKOFF_FIRST = 0.5
RESTART_BACKOFF_MAX = 30.0
RESTART_STABLE_AFTER = 60.0  # a worker that lived this long resets the back-off


def _watch(procs: list[Any], listening: Any, spawn: Callable[[int], Any]) -> int:
    """Say READY=1 once every worker listens; restart a worker that dies after that (back-off 0.5 s
    doubling to 30 s, reset by a minute of good health); return the exit code of a worker that ended
    while the service was still starting."""
    starting = len(procs)
    started_at = [time.monotonic()] * len(procs)
    backoff = RESTART_BACKOFF_FIRST
    restart_at: dict[int, float] = {}
    while True:
        if starting:
            dead = [p for p in procs if not p.is_alive()]
            if dead:
                return dead[0].exitcode or 1
            if listening.acquire(timeout=0.5):
                starting -= 1
                if not starting:
                    sd_notify("READY=1")
            continue
        time.sleep(0.2)
        while listening.acquire(block=False):  # a restarted worker listens
            pass
        now = time.monotonic()
        for i, p in enumerate(procs):
            if i in restart_at:
                if now >= restart_at[i]:
                    del restart_at[i]
                    procs[i] = spawn(i)
                    started_at[i] = now
                continue
            if p.is_alive():
                continue
            if now - started_at[i] >= RESTART_STABLE_AFTER:
                backoff = RESTART_BACKOFF_FIRST
            log.error("a worker died; restarting it, the others keep serving",
                      extra={"fields": {"worker": i, "exitcode": p.exitcode, "restart_in_s": backoff}})
            _forget_metrics_of(p.pid)
            restart_at[i] = now + backoff
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)


def _forget_metrics_of(pid: int | None) -> None:
    """A dead worker's live gauges (open WebSockets) leave the sums (prometheus-client's own
    mark_process_dead); its counters stay, so totals still count what it did. The supervisor imports
    prometheus-client only now, long after PROMETHEUS_MULTIPROC_DIR was set."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if pid is None or not directory:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _port_taken(host: str, port: int) -> str | None:
    """A problem sentence when something (an earlier authproxy's workers, bound with SO_REUSEPORT) still
    listens on host:port. A socket without SO_REUSEPORT cannot bind beside any listener there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return None  # e.g. an address not on this host: the workers will say it in their words
            address = f"{f'[{host}]' if ':' in host else host}:{port}"
            return (f"HOST/PORT: cannot listen on {address}: it is in use (by another authproxy, or workers "
                    "left behind by one?); refusing to start beside it")
    return None


def _stop_workers(procs: list[Any], shutdown_timeout: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not orphan the workers
        signal.signal(sig, signal.SIG_IGN)
    sd_notify("STOPPING=1")
    for p in procs:
        if p.is_alive():
            p.terminate()  # SIGTERM: each worker stops gracefully (_serve)
    deadline = time.monotonic() + shutdown_timeout + 2.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()


PR_SET_PDEATHSIG = 1


def _die_with(supervisor: int) -> None:
    """Ask the kernel for SIGTERM (a graceful stop) when the supervisor dies, even by SIGKILL, so no worker
    is left serving an old configuration; and stop now if it is already gone (it died before prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the check below still covers the common case
        pass
    if os.getppid() != supervisor:
        raise SystemExit(0)


def _worker(serve: Callable[[Callable[[], object]], None], listening: Any, supervisor: int) -> None:
    """One worker process: serves, and tells the supervisor (not systemd, which listens to the main
    process only) when it accepts connections. An exception that escapes would be printed by
    multiprocessing itself, a raw traceback on stderr (its message may quote a URL with credentials):
    it is logged, redacted, and the worker exits 1."""
    os.environ.pop("NOTIFY_SOCKET", None)
    _die_with(supervisor)
    try:
        serve(listening.release)
    except Exception:  # noqa: BLE001 - the last place to catch it before multiprocessing prints it
        log.critical("worker stopped on an unexpected error", exc_info=True)
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args)
    if args.command == "service-key":
        from authproxy.cli_hybrid import service_key

        return service_key(args.name)
    if args.command == "technitium":
        from authproxy.cli_hybrid import technitium_migrate

        config = _load(args, "")
        return 2 if config is None else asyncio.run(technitium_migrate(config, args.site))
    if args.command in ("users", "keys"):
        from authproxy import cli_accounts

        config = _load(args, "")
        if config is None:
            return 2
        config, _ = ensure_session_secrets(config)   # the same secret the server seals accounts with
        return (cli_accounts.users if args.command == "users" else cli_accounts.keys)(config, args)
    if args.command == "healthcheck":
        return healthcheck(args)
    if args.command in ("version", "sessions", "probe"):
        return operator_command(args)
    return run(args)


def operator_command(args: argparse.Namespace) -> int:
    """`authproxy version`, `authproxy probe URL` and `authproxy sessions ...` (cli_ops.py, probe.py)."""
    if args.command == "version":
        from authproxy.cli_ops import version_text

        print(version_text())
        return 0
    if args.command == "probe":
        from authproxy.probe import probe_command

        return asyncio.run(probe_command(args.url, timeout=args.timeout))
    from authproxy.cli_ops import sessions

    config = _load(args, "")
    if config is None:
        return 2
    if not config.session.secrets and (config.server.data_dir / "session_secret").exists():
        config, _ = ensure_session_secrets(config)   # the one `authproxy run` generated (read, not made)
    return asyncio.run(sessions(config, args))


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
