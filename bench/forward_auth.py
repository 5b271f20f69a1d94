"""Issue #3: forward-auth chains through nginx, Caddy and Traefik: free auth (the floor) vs authproxy.

For each proxy, the same static upstream (an nginx `return 200 "ok"` location, its own process) sits
behind the proxy's forward-auth feature, configured from the SHIPPED files (nginx/authproxy.conf and its
snippets, caddy/Caddyfile, deploy/traefik/traefik.yml + dynamic.yml) with only addresses substituted, via
the e2e harness (tests/support/proxies.py: `_render` for nginx, `launch_caddy`, `launch_traefik`). Only the
nginx main config is the bench's own (worker_processes 1, access_log off, like the other two, which log
no requests by default). The chain is run twice per proxy:

    (a) auth = an nginx `return 200` location (separate nginx process): the floor of the chain
    (b) auth = authproxy (`python -m authproxy run`, 1 worker unless --workers, hot cache on, access log
        off unless --access-log, real redis-server), every request carrying a signed-in session cookie
        created through authproxy's login API against FakeTechnitium; the checks go to its forward-auth
        listener (FORWARD_AUTH_PORT), the portal to its public one, as the shipped configs say

wrk (separate process, loopback, 50 connections) requests `GET /` through the proxy. Printed per proxy:
req/s, p50/p99 (wrk --latency), ratio b/a, and each process's CPU share (so it shows which part of the
chain fills the 2 cores).

Targets on 2 cores, 50 connections: b/a >= 0.4 for nginx, >= 0.7 for Caddy and Traefik; p99 <= 10 ms for
nginx + authproxy.

    python bench/forward_auth.py [--proxies nginx,caddy,traefik] [--workers 1] [--access-log] [--quick]
"""

from __future__ import annotations

import asyncio
import functools
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    Authproxy,
    Bench,
    BenchError,
    Load,
    Target,
    descendants,
    finish_args,
    fmt_int,
    fmt_ms,
    main_wrapper,
    parser,
    print_machine,
    print_targets,
    probe,
    sign_in,
    table,
    wrk,
)
from tests.support.procs import ManagedProcess, free_port
from tests.support.proxies import (
    NGINX_DIR,
    Check,
    RunningProxy,
    _render,
    launch_caddy,
    launch_traefik,
    wait_ready,
)

TARGETS = {"nginx": 0.4, "caddy": 0.7, "traefik": 0.7}
NGINX_P99_MS = 10.0


def upstream_conf(port: int) -> str:
    return (f"server {{\n    listen 127.0.0.1:{port};\n    default_type text/plain;\n"
            f"    location / {{ return 200 \"ok\\n\"; }}\n}}\n")


def floor_auth_conf(port: int) -> str:
    return f"server {{\n    listen 127.0.0.1:{port};\n    location / {{ return 200; }}\n}}\n"


def start_front_nginx(bench: Bench, auth: str, verify: str, upstream: str, tag: str,
                      keepalive: int | None = None) -> tuple[int, ManagedProcess]:
    """nginx/authproxy.conf + every snippet in nginx/, placeholders filled as the e2e harness does
    (`keepalive`: override the upstream blocks' idle keepalive connection count, to test the config)."""
    port = free_port()
    values = {"LISTEN": f"127.0.0.1:{port}", "SERVER_NAME": "127.0.0.1", "AUTHPROXY": auth,
              "AUTHPROXY_VERIFY": verify, "UPSTREAM": upstream}
    files = {f"snippets/{p.name}": _render(p, values) for p in sorted(NGINX_DIR.glob("*.conf"))
             if p.name != "authproxy.conf"}
    conf = _render(NGINX_DIR / "authproxy.conf", values)
    if keepalive is not None:
        conf, n = re.subn(r"keepalive\s+\d+;", f"keepalive {keepalive};", conf)
        if not n:
            raise BenchError(
                "--nginx-keepalive: nginx/authproxy.conf has no upstream keepalive line to change"
            )
    proc = bench.nginx(f"front-nginx-{tag}", conf, files=files)
    return port, proc


def start_go_proxy(bench: Bench, kind: str, auth_url: str, verify_url: str, upstream_url: str,
                   tag: str) -> RunningProxy:
    launch = {"caddy": launch_caddy, "traefik": launch_traefik}[kind]
    workdir = bench.tmp / f"{kind}-{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    proxy = launch(workdir, auth_url, upstream_url, check=Check(url=verify_url))
    bench.procs.append(proxy.process)  # stopped with everything else, also on errors/Ctrl-C
    asyncio.run(wait_ready(proxy))
    return proxy


def run() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--proxies", default="nginx,caddy,traefik", help="comma-separated subset")
    p.add_argument("--workers", type=int, default=1, help="authproxy worker processes (default 1)")
    p.add_argument("--access-log", action="store_true", help="run authproxy with ACCESS_LOG=true")
    p.add_argument(
        "--nginx-keepalive",
        type=int,
        default=None,
        help="replace the shipped `keepalive N;` of nginx/authproxy.conf's upstreams (default: as shipped)",
    )
    args = finish_args(p.parse_args())
    kinds = [k.strip() for k in args.proxies.split(",") if k.strip()]
    if any(k not in TARGETS for k in kinds):
        raise SystemExit(f"--proxies: choose from {', '.join(TARGETS)}")
    print("bench/forward_auth.py — issue #3: forward-auth chains")
    print_machine(
        {
            "load": f"wrk -t{args.threads} -c{args.connections}, {args.duration:g} s x {args.runs} run(s) "
            "(median), "
            f"{args.warmup:g} s warm-up per case",
            "chain": f"proxy -> auth (floor nginx | authproxy x{args.workers} worker(s), access log "
            f"{'on' if args.access_log else 'off'}) -> upstream nginx; proxies from the shipped configs"
            + (
                f", nginx upstream keepalive {args.nginx_keepalive} (shipped: 64)"
                if args.nginx_keepalive is not None
                else ""
            ),
        }
    )
    results: dict[tuple[str, str], Load] = {}
    with Bench(args, "forward-auth") as bench:
        redis = bench.redis()
        signed = sign_in(redis, bench.tmp / "data")
        up_port, auth_port = free_port(), free_port()
        upstream_proc = bench.nginx("upstream", upstream_conf(up_port))
        floor_proc = bench.nginx("floor-auth", floor_auth_conf(auth_port))
        upstream = f"127.0.0.1:{up_port}"
        ap: Authproxy = bench.authproxy(upstream_url=f"http://{upstream}", redis_url=redis.url,
                                        workers=args.workers, access_log=args.access_log)
        # (portal address, check address, process): the floor answers both; authproxy has a listener each.
        auths = {"floor": (f"127.0.0.1:{auth_port}", f"127.0.0.1:{auth_port}", floor_proc),
                 "authproxy": (f"127.0.0.1:{ap.port}", f"127.0.0.1:{ap.forward_auth_port}", ap.proc)}
        headers = [signed.header, "Accept: application/json"]

        for kind in kinds:
            for auth_name, (auth_addr, verify_addr, auth_proc) in auths.items():
                label = f"{kind} + {'nginx 200 (floor)' if auth_name == 'floor' else 'authproxy'}"
                print(f"-- {label}", flush=True)
                if kind == "nginx":
                    port, front = start_front_nginx(bench, auth_addr, verify_addr, upstream, auth_name,
                                                    args.nginx_keepalive)
                    url, proxy = f"http://127.0.0.1:{port}/", None
                else:
                    proxy = start_go_proxy(bench, kind, f"http://{auth_addr}", f"http://{verify_addr}",
                                           f"http://{upstream}", auth_name)
                    url, front = proxy.url + "/", proxy.process
                _, body = probe(url, headers, what=label)
                if body.strip() != b"ok":
                    raise BenchError(f"{label}: the answer did not come from the upstream: {body[:200]!r}")
                results[(kind, auth_name)] = wrk(args, url, headers, meters={
                    "proxy": functools.partial(descendants, front.pid),
                    "auth": functools.partial(descendants, auth_proc.pid),
                    "upstream": functools.partial(descendants, upstream_proc.pid),
                    "redis": lambda: [redis.pid] if redis.pid else [],
                })
                bench.stop(front, timeout=1.0)
                if proxy is not None:
                    proxy.stop()

    rows = []
    targets = []
    for kind in kinds:
        floor, ap_load = results[(kind, "floor")], results[(kind, "authproxy")]
        for auth_name, load in (("floor", floor), ("authproxy", ap_load)):
            c = load.cpu
            rows.append(
                [
                    f"{kind} + {'nginx 200 (floor)' if auth_name == 'floor' else 'authproxy'}",
                    fmt_int(load.rps),
                    fmt_ms(load.p50_ms),
                    fmt_ms(load.p99_ms),
                    f"{load.rps / floor.rps:.2f}x" if auth_name == "authproxy" else "",
                    (f"{c['proxy']:.0f} / {c['auth']:.0f} / {c['upstream']:.0f} / {c['redis']:.0f} / "
                     f"{c['wrk']:.0f}"),
                    load.errors.replace("Socket errors: ", ""),
                ]
            )
        targets.append(Target(f"{kind}: authproxy / floor", ap_load.rps / floor.rps, ">=", TARGETS[kind]))
        if kind == "nginx":
            targets.append(Target("nginx + authproxy p99", ap_load.p99_ms, "<=", NGINX_P99_MS, " ms"))
    print()
    table(
        ["chain", "req/s", "p50 ms", "p99 ms", "b/a", "CPU% proxy/auth/upstream/redis/wrk", "socket errors"],
        rows,
        title=f"Results (wrk -c{args.connections}, median of {args.runs} x {args.duration:g} s)",
    )
    print("CPU% = share of one core over the measured runs (2 cores = 200%).\n")
    print_targets(targets)


if __name__ == "__main__":
    main_wrapper(run)
