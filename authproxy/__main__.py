"""Command line: `authproxy run`, `authproxy check-config`."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import ipaddress
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from authproxy.config.loader import ensure_session_secrets, load_config
from authproxy.config.schema import FORWARD_AUTH_SECRET_HEADER, Config
from authproxy.errors import ConfigError
from authproxy.log import AccessLogger, log, setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="authproxy", description="Authentication gateway for self-hosted admin UIs"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "check the configuration, then serve"),
                        ("check-config", "print every configuration problem and exit")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", type=Path, help="TOML file with [server], [session] and [[sites]]")
        if name == "run":
            p.add_argument("--workers", type=int, help="processes sharing the port (SO_REUSEPORT)")
    key = sub.add_parser("service-key", help="make an API key for a service client (AUTH_MODE=hybrid)")
    key.add_argument("name", help="the service's name, as audit lines will show it")
    tech = sub.add_parser("technitium", help="Technitium helpers")
    tech_sub = tech.add_subparsers(dest="technitium_command", required=True)
    migrate = tech_sub.add_parser("migrate", help="replace TECHNITIUM_CLUSTER_TOKEN by a least-privileged "
                                                  "TECHNITIUM_BACKGROUND_TOKEN")
    migrate.add_argument("--config", type=Path, help="TOML file with [server], [session] and [[sites]]")
    migrate.add_argument("--site", help="the Technitium site (default: the one with a cluster token)")
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
    return 0


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


def _serve(config: Config, ssl_paths: tuple[Path, Path] | None, reuse_port: bool) -> None:
    from aiohttp import web

    from authproxy.app import create_app, handler_options
    from authproxy.tls import server_context

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # optional: the `fast` extra
        pass
    from authproxy.app import listen_problem, ready
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
    try:
        web.run_app(
            app,
            host=config.server.host,
            port=config.server.port,
            ssl_context=ssl_ctx,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("authproxy.access") if config.server.access_log else None,
            reuse_port=reuse_port,
            # run_app "prints" once every listener is open: that, and only that, is "ready".
            print=lambda *_: ready(app, "https" if ssl_paths else "http"),
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
    workers = config.server.workers
    if workers == 1:
        _serve(config, ssl_paths, reuse_port=False)
        return 0
    return _supervise(workers, lambda: _serve(config, ssl_paths, reuse_port=True))


def _worker(serve: Callable[[], None]) -> None:
    """One worker process. An exception that escapes would be printed by multiprocessing itself, a raw
    traceback on stderr (its message may quote a URL with credentials): log it, redacted, and exit 1."""
    try:
        serve()
    except Exception:  # noqa: BLE001 - the last place to catch it before multiprocessing prints it
        log.critical("worker stopped on an unexpected error", exc_info=True)
        sys.exit(1)


def _supervise(workers: int, serve: Callable[[], None]) -> int:
    """Run `workers` processes sharing the port; SIGTERM/SIGINT to this one stops them all (systemd,
    docker stop), and one that dies takes the others down so the service manager sees the failure."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(serve,), name=f"authproxy-worker-{i}") for i in range(workers)]
    for p in procs:
        p.start()

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    code = 0
    try:
        while all(p.is_alive() for p in procs):
            procs[0].join(0.5)
        code = next((p.exitcode or 1 for p in procs if not p.is_alive()), 0)
        log.error("a worker exited; stopping the others", extra={"fields": {"exitcode": code}})
    except KeyboardInterrupt:
        code = 0
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: aiohttp's run_app shuts down gracefully
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return code


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
    return run(args)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
