"""Issue #4: authproxy as a reverse proxy vs nginx `proxy_pass`, in one run, in front of the same upstream.

Set-up (every server its own process, loopback only): a static upstream nginx (`return 200 "ok"` for small
answers, a 100 MiB file for big ones; worker_processes 1, access log off); in front of it, nginx
`proxy_pass` (worker_processes 1, upstream keepalive, proxy_max_temp_file_size 0 so nothing is spooled to
disk) and authproxy (`python -m authproxy run --workers 1` and `--workers 2`, SO_REUSEPORT; access log off,
hot cache on, real redis-server). Every request carries the cookie of a session signed in through
authproxy's login API against FakeTechnitium (nginx ignores it), and X-Forwarded-Proto: https.

    small   wrk GET / (50 connections): req/s, p50, p99 through nginx, authproxy x1, authproxy x2, and for
            reference a minimal aiohttp pass-through proxy (bench/_servers.py proxy: no session, no
            header policy; the floor any aiohttp proxy starts from, 1 process)
    100 MiB curl downloads, one after another (1 warm-up + N, N = 3, --quick 1): MB/s (10^6 bytes/s,
            total bytes / total time) through nginx, authproxy x1, authproxy x2, the minimal aiohttp
            proxy and straight from the upstream; authproxy's peak RSS = VmHWM of every worker
            from /proc/<pid>/status
    WebSocket  round trips of a 64-byte text message (send, wait for the echo), --ws-messages in total
            (default 20000), from a lean load generator in this process (bench/_wsload.py: raw
            protocol, pre-masked frame, every echo compared byte for byte; an aiohttp client would
            cost as much CPU as the echo server): straight to an aiohttp echo upstream, through
            nginx as a plain WebSocket proxy (reference: what relaying costs a C proxy), and through
            authproxy (x1, signed-in session). Twice: on --ws-connections (default 4: strict round
            trips, bound by latency: each relay adds two hops and wake-ups) and on
            --ws-busy-connections (default 32: enough in flight to keep the CPUs busy). The three
            paths alternate, --ws-runs times each (default 3); the median run is reported. What bounds
            the ratio: every message costs the echo one read and one write and a relay two of each, on
            the same 2 cores as the load generator, so about 0.5x is where any relay lands here

    JSON-RPC   (--part rpc) TrueNAS's protocol: `core.ping` round trips (--rpc-calls, default 30000) from
            the same lean load generator (one call in flight per socket, answers compared byte for
            byte) on sockets signed in as alice, through authproxy's in-band bridge (/api/current: authproxy
            answers auth.* itself and relays the rest message by message) and through its generic
            byte relay (the same fake's endpoint under /api/relay), alternating, same authproxy process,
            same upstream (tests/fakes/truenas.py in its own process, its sign-in rate limit lifted)

Targets: small >= 0.15x nginx (1 worker) and >= 0.22x (2 workers); 100 MiB >= 0.5x nginx MB/s (1 worker)
with peak RSS < 100 MB for every worker; WebSocket messages/s through authproxy >= 0.5x direct (shown for
both connection counts, with authproxy / nginx beside it); JSON-RPC calls/s through the in-band bridge
>= 0.8x the byte relay's.

    python bench/proxy.py [--duration 5] [--connections 50] [--runs 1] [--downloads 3] [--ws-runs 3]
                          [--part all|http|ws|rpc] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    Authproxy,
    Bench,
    BenchError,
    Load,
    Target,
    cpu_seconds,
    descendants,
    finish_args,
    fmt_int,
    fmt_ms,
    main_wrapper,
    parser,
    print_machine,
    print_targets,
    probe,
    python_server,
    sign_in,
    table,
    wrk,
)
from bench._wsload import round_trips, server_frame, text_frame
from tests.support.procs import free_port
from tests.support.redis_server import RedisServer

BIG = 100 * 1024 * 1024
REF = "aiohttp minimal proxy (ref)"


def upstream_conf(port: int, root: Path) -> str:
    return (f"server {{\n    listen 127.0.0.1:{port};\n    default_type text/plain;\n    root {root};\n"
            f"    location = /big.bin {{ }}\n"
            f"    location / {{ return 200 \"ok\\n\"; }}\n}}\n")


def front_conf(port: int, upstream_port: int) -> str:
    return (f"upstream bench_up {{\n    server 127.0.0.1:{upstream_port};\n    keepalive 64;\n}}\n"
            f"server {{\n    listen 127.0.0.1:{port};\n"
            f"    location / {{\n        proxy_pass http://bench_up;\n        proxy_http_version 1.1;\n"
            f"        proxy_set_header Connection \"\";\n        proxy_max_temp_file_size 0;\n    }}\n}}\n")


def ws_relay_conf(port: int, echo_port: int) -> str:
    """nginx as a plain WebSocket reverse proxy: the reference for what relaying costs."""
    return (
        f"server {{\n    listen 127.0.0.1:{port};\n"
        f"    location / {{\n        proxy_pass http://127.0.0.1:{echo_port};\n"
        f"        proxy_http_version 1.1;\n"
        f'        proxy_set_header Upgrade $http_upgrade;\n        proxy_set_header Connection "upgrade";\n'
        f"        proxy_read_timeout 1h;\n    }}\n}}\n"
    )


def make_big_file(path: Path) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        fh.writelines(block for _ in range(BIG // len(block)))
    path.chmod(0o644)


def cpu_us(load: Load) -> float:
    """The front's CPU time per request, in microseconds."""
    return load.cpu["front"] / 100 / load.rps * 1e6 if load.rps else float("nan")


# ---- downloads --------------------------------------------------------------------------------------


@dataclass
class Download:
    mb_s: float
    seconds: list[float]


def download(url: str, headers: list[str], count: int) -> Download:
    """1 warm-up + `count` sequential curl downloads to /dev/null; MB/s over the measured ones."""
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"]
    for h in headers:
        argv += ["-H", h]
    times = []
    for i in range(count + 1):
        out = subprocess.run([*argv, url], check=False, capture_output=True, text=True, timeout=300)
        try:
            code, size, total = out.stdout.split()
        except ValueError:
            raise BenchError(f"curl {url}: {out.stdout} {out.stderr}") from None
        if code != "200" or int(size) != BIG:
            raise BenchError(f"curl {url}: HTTP {code}, {size} bytes (wanted 200 and {BIG})")
        if i:
            times.append(float(total))
    return Download(mb_s=count * BIG / sum(times) / 1e6, seconds=times)


# ---- WebSocket --------------------------------------------------------------------------------------


@dataclass
class WsResult:
    msgs_s: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    cpu: dict[str, float] | None = None
    error: str = ""


def ws_bench(url: str, headers: dict[str, str], total: int, conns: int,
             meters: dict[str, list[int]]) -> WsResult:
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    before = {k: cpu_seconds(v) for k, v in meters.items()}
    me = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            rate, lat = runner.run(round_trips(url, headers, total, conns))
    except BenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        return WsResult(error=f"{type(exc).__name__}: {exc}")
    wall = time.monotonic() - t0
    me2 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {k: 100 * (cpu_seconds(v) - before[k]) / wall for k, v in meters.items()}
    cpu["client"] = 100 * ((me2.ru_utime + me2.ru_stime) - (me.ru_utime + me.ru_stime)) / wall
    lat.sort()
    return WsResult(msgs_s=rate, p50_ms=statistics.median(lat) * 1000,
                    p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, cpu=cpu)


def _median_ws(results: list[WsResult]) -> WsResult:
    """The run with the median rate (errors only when every run failed)."""
    ok = sorted((r for r in results if not r.error), key=lambda r: r.msgs_s)
    return ok[(len(ok) - 1) // 2] if ok else results[0]


# ---- the run ----------------------------------------------------------------------------------------


def run() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--downloads", type=int, default=3, help="measured 100 MiB downloads per path (default 3)")
    p.add_argument("--ws-messages", type=int, default=20_000, help="WebSocket round trips in total")
    p.add_argument("--ws-connections", type=int, default=4,
                   help="WebSocket connections for strict round trips (default 4)")
    p.add_argument("--ws-busy-connections", type=int, default=32,
                   help="WebSocket connections for the busy run (default 32; 0 skips it)")
    p.add_argument("--ws-runs", type=int, default=3, help="runs per WebSocket path (median reported)")
    p.add_argument("--rpc-calls", type=int, default=30_000, help="JSON-RPC round trips (TrueNAS case)")
    p.add_argument("--part", choices=["all", "http", "ws", "rpc"], default="all",
                   help="http: small responses and 100 MiB only; ws: WebSocket only (default all)")
    args = finish_args(p.parse_args())
    if args.quick:
        args.downloads, args.ws_messages, args.ws_runs = 1, 4000, 1
    ws_conns = list(dict.fromkeys(c for c in (args.ws_connections, args.ws_busy_connections) if c > 0))
    print("bench/proxy.py — issue #4: reverse proxy, 100 MiB bodies, WebSocket")
    print_machine(
        {
            "load": f"wrk -t{args.threads} -c{args.connections}, {args.duration:g} s x {args.runs} run(s) "
            "(median), "
            f"{args.warmup:g} s warm-up per case; {args.downloads} x 100 MiB per path; "
            f"{args.ws_messages} WebSocket round trips on {args.ws_connections} and on "
            f"{args.ws_busy_connections} connection(s), median of {args.ws_runs} run(s)",
        }
    )
    http = args.part in ("all", "http")
    with Bench(args, "proxy") as bench:
        redis = bench.redis()
        signed = sign_in(redis, bench.tmp / "data")
        headers = [signed.header, "X-Forwarded-Proto: https", "Accept: */*"]
        small, big, rss = http_part(args, bench, redis, headers) if http else ({}, {}, {})
        ws = ws_part(args, bench, redis, headers, ws_conns) if args.part in ("all", "ws") else {}
        rpc = rpc_part(args, bench, redis, ws_conns) if args.part in ("all", "rpc") else {}

    targets: list[Target] = []
    if http:
        targets += report_http(args, small, big, rss)
    if ws:
        targets += report_ws(args, ws, ws_conns)
    if rpc:
        targets += report_rpc(args, rpc, ws_conns)
    print_targets(targets)


def http_part(args: argparse.Namespace, bench: Bench, redis: RedisServer, headers: list[str]) -> tuple[
        dict[str, Load], dict[str, Download], dict[str, tuple[list[float], list[float]]]]:
    small: dict[str, Load] = {}
    big: dict[str, Download] = {}
    rss: dict[str, tuple[list[float], list[float]]] = {}
    www = bench.tmp / "www"
    www.mkdir(mode=0o755)
    make_big_file(www / "big.bin")
    up_port, front_port = free_port(), free_port()
    upstream_proc = bench.nginx("upstream", upstream_conf(up_port, www))
    front_proc = bench.nginx("front-nginx", front_conf(front_port, up_port))
    upstream_url = f"http://127.0.0.1:{up_port}"
    ap1: Authproxy = bench.authproxy(upstream_url=upstream_url, redis_url=redis.url, workers=1,
                                     name="authproxy-w1")
    ap2: Authproxy = bench.authproxy(upstream_url=upstream_url, redis_url=redis.url, workers=2,
                                     name="authproxy-w2")
    ref_port, ref_proc = python_server(bench, "proxy", "--upstream", upstream_url, name="aiohttp-proxy")
    fronts = {"nginx": (f"http://127.0.0.1:{front_port}", front_proc),
              "authproxy x1": (ap1.url, ap1.proc), "authproxy x2": (ap2.url, ap2.proc),
              REF: (f"http://127.0.0.1:{ref_port}", ref_proc)}

    for name, (base, _proc) in fronts.items():
        _, body = probe(base + "/", headers, what=name)
        if body.strip() != b"ok":
            raise BenchError(f"{name}: the answer did not come from the upstream: {body[:200]!r}")
    for name, (base, proc) in fronts.items():
        print(f"-- small responses through {name}", flush=True)
        small[name] = wrk(args, base + "/", headers, meters={
            "front": functools.partial(descendants, proc.pid),
            "upstream": functools.partial(descendants, upstream_proc.pid)})

    for name, ap in (("authproxy x1", ap1), ("authproxy x2", ap2)):
        rss[name] = (ap.peak_rss_mb(), [])
    for name, base in (("upstream direct", upstream_url), *((n, b) for n, (b, _) in fronts.items())):
        print(f"-- 100 MiB downloads through {name}", flush=True)
        big[name] = download(base + "/big.bin", headers, args.downloads)
    for name, ap in (("authproxy x1", ap1), ("authproxy x2", ap2)):
        rss[name] = (rss[name][0], ap.peak_rss_mb())
    for proc in (ap1.proc, ap2.proc, ref_proc, front_proc, upstream_proc):
        bench.stop(proc)
    return small, big, rss


def ws_part(args: argparse.Namespace, bench: Bench, redis: RedisServer, headers: list[str],
            ws_conns: list[int]) -> dict[tuple[str, int], WsResult]:
    ws: dict[tuple[str, int], WsResult] = {}
    echo_port, echo_proc = python_server(bench, "echo", name="ws-echo")
    relay_port = free_port()
    relay_proc = bench.nginx("ws-nginx", ws_relay_conf(relay_port, echo_port))
    ap_ws = bench.authproxy(upstream_url=f"http://127.0.0.1:{echo_port}", redis_url=redis.url, workers=1,
                            name="authproxy-ws")
    ws_headers = dict(h.split(": ", 1) for h in headers)
    echo = descendants(echo_proc.pid)
    ws_paths = {"direct": (f"ws://127.0.0.1:{echo_port}/ws", {}, {"echo": echo}),
                "nginx (ref)": (f"ws://127.0.0.1:{relay_port}/ws", {},
                                {"echo": echo, "nginx": descendants(relay_proc.pid)}),
                "authproxy": (f"ws://127.0.0.1:{ap_ws.port}/ws", ws_headers,
                              {"echo": echo, "authproxy": descendants(ap_ws.proc.pid)})}
    for conns in ws_conns:
        runs: dict[str, list[WsResult]] = {name: [] for name in ws_paths}
        for i in range(args.ws_runs):
            for name, (url, hdrs, meters) in ws_paths.items():
                print(f"-- WebSocket round trips on {conns} connection(s), {name}, run {i + 1}", flush=True)
                runs[name].append(ws_bench(url, hdrs, args.ws_messages, conns, meters))
        for name, results in runs.items():
            ws[name, conns] = _median_ws(results)
    for (name, _), r in ws.items():
        if name == "authproxy" and r.error:
            r.error += f"\n{ap_ws.proc.log_tail(1500)}"
    return ws


def report_http(args: argparse.Namespace, small: dict[str, Load], big: dict[str, Download],
                rss: dict[str, tuple[list[float], list[float]]]) -> list[Target]:
    print()
    ng = small["nginx"]
    rows = [[name, fmt_int(r.rps), fmt_ms(r.p50_ms), fmt_ms(r.p99_ms),
             f"{r.rps / ng.rps:.2f}x" if name != "nginx" else "",
             f"{r.cpu['front']:.0f} / {r.cpu['upstream']:.0f} / {r.cpu['wrk']:.0f}",
             r.errors.replace("Socket errors: ", "")] for name, r in small.items()]
    table(["small responses via", "req/s", "p50 ms", "p99 ms", "vs nginx", "CPU% front/upstream/wrk",
           "socket errors"], rows,
          title=f"Small responses (wrk -c{args.connections}, median of {args.runs} x {args.duration:g} s)")
    ref = small[REF]
    print(
        f"authproxy x1 / minimal aiohttp proxy: {small['authproxy x1'].rps / ref.rps:.2f}x req/s; "
        "server CPU per "
        f"request: authproxy x1 {cpu_us(small['authproxy x1']):.0f} us, minimal proxy {cpu_us(ref):.0f} us, "
        f"nginx {cpu_us(ng):.0f} us\n"
    )

    rows = []
    for name, d in big.items():
        peak = rss.get(name)
        rows.append([name, f"{d.mb_s:,.0f}", f"{d.mb_s / big['nginx'].mb_s:.2f}x" if name != "nginx" else "",
                     " ".join(f"{s:.3f}" for s in d.seconds),
                     ", ".join(f"{x:.0f}" for x in peak[0]) if peak else "",
                     ", ".join(f"{x:.0f}" for x in peak[1]) if peak else ""])
    table(
        [
            "100 MiB download via",
            "MB/s",
            "vs nginx",
            "seconds each",
            "peak RSS MB before (per worker)",
            "peak RSS MB after",
        ],
        rows,
        title=f"100 MiB bodies (curl, 1 warm-up + {args.downloads} sequential)",
    )
    peak_all = max([x for _, after in rss.values() for x in after] or [float("nan")])
    return [
        Target("small: authproxy x1 / nginx", small["authproxy x1"].rps / ng.rps, ">=", 0.15),
        Target("small: authproxy x2 / nginx", small["authproxy x2"].rps / ng.rps, ">=", 0.22),
        Target("100 MiB: authproxy x1 / nginx MB/s", big["authproxy x1"].mb_s / big["nginx"].mb_s, ">=", 0.5),
        Target("100 MiB: authproxy x2 / nginx MB/s", big["authproxy x2"].mb_s / big["nginx"].mb_s, ">=", 0.5),
        Target("authproxy peak RSS (max over workers)", peak_all, "<", 100, " MB"),
    ]


def report_ws(
    args: argparse.Namespace, ws: dict[tuple[str, int], WsResult], ws_conns: list[int]
) -> list[Target]:
    print()
    rows = []
    for (name, conns), r in ws.items():
        if r.error:
            rows.append([name, str(conns), "not run", "", "", "", "", r.error.splitlines()[0][:100]])
            continue
        cpu = " / ".join(f"{k} {v:.0f}" for k, v in (r.cpu or {}).items())
        direct, relay = ws["direct", conns], ws["nginx (ref)", conns]
        ratio = f"{r.msgs_s / direct.msgs_s:.2f}x" if name != "direct" and not direct.error else ""
        vs_nginx = f"{r.msgs_s / relay.msgs_s:.2f}x" if name == "authproxy" and not relay.error else ""
        rows.append([name, str(conns), fmt_int(r.msgs_s), fmt_ms(r.p50_ms), fmt_ms(r.p99_ms), ratio, vs_nginx,
                     cpu])
    table(
        ["WebSocket echo", "connections", "msgs/s", "p50 ms", "p99 ms", "vs direct", "vs nginx", "CPU%"],
        rows,
        title=f"WebSocket ({args.ws_messages} round trips of 64 B; median of {args.ws_runs} run(s))",
    )
    for (name, conns), r in ws.items():
        if r.error:
            print(f"WebSocket {name} on {conns} connection(s) could not run: {r.error}\n")

    def ratio(conns: int, base: str) -> float:
        through, other = ws["authproxy", conns], ws[base, conns]
        return through.msgs_s / other.msgs_s if not (through.error or other.error) else float("nan")

    targets = [
        Target(f"WebSocket ({conns} conns): authproxy / direct msgs/s", ratio(conns, "direct"), ">=", 0.5)
        for conns in ws_conns
    ]
    return targets


# ---- JSON-RPC (TrueNAS): the in-band bridge vs authproxy's own byte relay, same upstream, same run ----

RPC_BRIDGE, RPC_RELAY = "in-band bridge (/api/current)", "byte relay (/api/relay)"
RPC_PATHS = {RPC_BRIDGE: "/api/current", RPC_RELAY: "/api/relay"}


RPC_CALL = b'{"jsonrpc":"2.0","id":1,"method":"core.ping","params":[]}'
RPC_ANSWER = b'{"jsonrpc": "2.0", "result": "pong", "id": 1}'   # the fake's bytes, relayed as they are
RPC_LOGIN = (b'{"jsonrpc":"2.0","id":0,"method":"auth.login_ex","params":[{"mechanism":"PASSWORD_PLAIN",'
             b'"username":"alice","password":"alice-pw","login_options":{"user_info":false}}]}')


def _rpc_round_trips(url: str, headers: dict[str, str], total: int, conns: int) -> float:
    """Calls per second from the lean load generator (bench/_wsload.py): each socket logs in
    (PASSWORD_PLAIN), then one `core.ping` in flight at a time, every answer compared byte for byte."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        rate, _ = runner.run(round_trips(url, headers, total, conns, frame=text_frame(RPC_CALL),
                                         echo=server_frame(RPC_ANSWER),
                                         login=(text_frame(RPC_LOGIN), b'"SUCCESS"')))
    return rate


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:
        return asyncio.new_event_loop


def rpc_part(args: argparse.Namespace, bench: Bench, redis: RedisServer,
             ws_conns: list[int]) -> dict[tuple[str, int], float]:
    nas_port, _ = python_server(bench, "truenas", name="truenas-fake")
    ap = bench.authproxy(upstream_url=f"http://127.0.0.1:{nas_port}", redis_url=redis.url, workers=1,
                         name="authproxy-truenas", extra_env={"UPSTREAM_TYPE": "truenas"})
    headers = {"Cookie": asyncio.run(_truenas_cookie(ap.url)), "X-Forwarded-Proto": "https"}
    out: dict[tuple[str, int], float] = {}
    for conns in ws_conns:
        runs: dict[str, list[float]] = {name: [] for name in RPC_PATHS}
        for i in range(args.ws_runs):
            for name, path in RPC_PATHS.items():
                print(f"-- JSON-RPC round trips on {conns} connection(s), {name}, run {i + 1}", flush=True)
                url = ap.url.replace("http://", "ws://") + path
                runs[name].append(_rpc_round_trips(url, headers, args.rpc_calls, conns))
        for name, rates in runs.items():
            out[name, conns] = statistics.median(rates)
    return out


async def _truenas_cookie(base: str) -> str:
    """alice signed in through authproxy's login API (against the TrueNAS fake): her cookie."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(
            base + "/_authproxy/api/auth/login", json={"username": "alice", "password": "alice-pw"},
            headers={"X-Forwarded-Proto": "https"}) as resp:
        if resp.status != 200:
            raise BenchError(f"TrueNAS sign-in through authproxy failed: HTTP {resp.status}")
        return resp.headers.get("Set-Cookie", "").split(";", 1)[0]


def report_rpc(args: argparse.Namespace, rpc: dict[tuple[str, int], float],
               ws_conns: list[int]) -> list[Target]:
    print()
    rows = []
    for (name, conns), rate in rpc.items():
        base = rpc[RPC_RELAY, conns]
        rows.append([name, str(conns), fmt_int(rate), f"{rate / base:.2f}x" if name != RPC_RELAY else ""])
    table(["JSON-RPC core.ping", "connections", "calls/s", "vs byte relay"], rows,
          title=f"TrueNAS JSON-RPC through authproxy ({args.rpc_calls} round trips; "
                f"median of {args.ws_runs} run(s))")
    return [Target(f"JSON-RPC ({conns} conns): in-band bridge / byte relay calls/s",
                   rpc[RPC_BRIDGE, conns] / rpc[RPC_RELAY, conns], ">=", 0.8)
            for conns in ws_conns]


if __name__ == "__main__":
    main_wrapper(run)
