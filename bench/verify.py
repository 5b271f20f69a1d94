"""Issue #2: the session check (`GET /_authproxy/verify/nginx`) under load, against baselines in the same run.

What it measures (wrk --latency on 127.0.0.1, 50 connections, every server a separate process with the same
loop choice as `authproxy run`: uvloop when installed). Every request carries the headers nginx's shipped
`location = /_authproxy/internal/verify` sends (X-Original-URL/-Method, X-Forwarded-Method/-Proto/-Host/-Uri/
-For, X-Real-IP) and the cookie of a signed-in session, sent to authproxy's forward-auth listener
(FORWARD_AUTH_PORT, where the shipped nginx config sends them); authproxy runs with TRUST_PROXY=true
(loopback is trusted by default), a real redis-server (--save '' --appendonly no) and the access log off
unless said.
The session was created through authproxy's own login API against the faithful FakeTechnitium.

    (a)  bare aiohttp handler answering 200
    (a') (a) with aiohttp's DEFAULT access logger (reference; README "Performance": 0.41x)
    (b)  minimal aiohttp handler: one redis-py asyncio GET + one AES-GCM decryption of a ~300-byte blob
    (c)  authproxy, hot in-process cache off (SESSION_CACHE_TTL=0: every check goes to Redis)
    (d)  authproxy, cache on (default SESSION_CACHE_TTL)
    (e)  (d) with ACCESS_LOG=true (authproxy's own cheap access logger, JSON lines to stderr -> a file)
    (f)  (d) on the embedded SQLite store instead of Redis (no REDIS_URL; the session signed in there)
    (g)  (d) with METRICS=false (no registry, no hooks), against (d) again in alternated runs (two
         servers; on, off, off, on, ...): what the session check pays for its metrics
    (h)  authproxy verify with `Authorization: Bearer <JWT>` instead of the cookie (AUTH_MODE=otp, HS256,
         Redis, default cache): the bearer check of issue 12

Targets: (c) >= 0.9x (b); (d) >= 0.6x (a); (e) >= 0.5x (d) (logging must not halve throughput);
(d) >= 0.9x (g) (metrics on vs off); (h) >= 0.8x (d) (a bearer check costs about what a cookie check costs).
Also printed: Redis commands per request for (b), (c), (d), and the size of the real session blob.

With --sessions N[,N...] (e.g. 1k,100k,1M) it measures instead whether the check stays flat as the store
fills: authproxy with the cache off (as (c)), and before each measurement Redis is filled up to N sessions,
each a copy of everything one real sign-in wrote (the sealed blob, its end marker, its per-account index
set) under fresh names. Printed per N: req/s, p50, p99, p99 against the smallest N (target at 1M: <= 1.2x
the p99 at 1k) and Redis memory per session (used_memory growth / sessions added).

    python bench/verify.py [--duration 5] [--connections 50] [--runs 1] [--threads 1] [--quick]
    python bench/verify.py --metrics-only --runs 10 --duration 2     # case (g) alone, 10 rounds
    python bench/verify.py --sessions 1k,100k,1M [--duration 5]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import secrets
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authproxy.config.passwordless import kid_for
from bench._common import (
    ORIGINAL_HOST,
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
    python_server,
    redis_commands,
    sign_in,
    table,
    wrk,
)
from tests.support.procs import ManagedProcess
from tests.support.redis_server import RedisServer

VERIFY_PATH = "/_authproxy/verify/nginx"
JWT_SECRET = "bench-" + "Kq7vP2wZ9rT4mY8nB1xC6jH3lF5dS0gA"   # 38 random-looking characters, no placeholder


def bearer_token() -> str:
    """A token as authproxy mints it after a one-time code (HS256, its kid, claims), an hour long."""
    now = int(time.time())
    claims = {"sub": "admin", "iat": now, "exp": now + 3600, "jti": "bench", "iss": "authproxy",
              "aud": "authproxy", "roles": ["admin"], "amr": "otp"}
    kid = kid_for(JWT_SECRET.encode(), "hs")
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers={"kid": kid})


def cpu_us(load: Load) -> float:
    """Server CPU time per request, in microseconds."""
    return load.cpu["server"] / 100 / load.rps * 1e6 if load.rps else float("nan")


def _metrics_on_and_off(bench: Bench, args: argparse.Namespace, upstream: str, redis: RedisServer,
                        headers: list[str]) -> dict[str, list[Load]]:
    """(g): METRICS=false against (d) again: two servers, runs alternated (on, off, off, on, ...) so the
    load other programs put on the machine falls on both alike. METRICS value -> its runs."""
    pair = {m: bench.authproxy(upstream_url=upstream, redis_url=redis.url, name=f"authproxy-metrics-{m}",
                               extra_env={"METRICS": m}) for m in ("true", "false")}
    for ap in pair.values():
        probe(ap.verify_url + VERIFY_PATH, headers, what="(d)/(g) pair")
    one = argparse.Namespace(**{**vars(args), "runs": 1})
    print("-- (g) authproxy verify, cache on, METRICS=false, alternated with (d)", flush=True)
    runs: dict[str, list[Load]] = {"true": [], "false": []}
    for i in range(max(3, args.runs)):
        for m in (("true", "false") if i % 2 == 0 else ("false", "true")):
            ap = pair[m]
            runs[m].append(wrk(one, ap.verify_url + VERIFY_PATH, headers,
                               meters={"server": lambda ap=ap: descendants(ap.proc.pid),
                                       "redis": lambda: [redis.pid] if redis.pid else []}))
    _counted(pair["true"].verify_url, runs["true"][-1])
    for ap in pair.values():
        bench.stop(ap.proc)
    return runs


def _hook_cost_us(n: int = 200_000) -> float:
    """The verify hook alone (wrapper + counter), per call: the floor under (d) vs (g), free of the
    machine's other load that moves req/s."""
    import asyncio
    import time
    import types

    from aiohttp import web

    from authproxy import keys
    from authproxy.metrics import Metrics, observe_verify

    app = web.Application()
    app[keys.METRICS] = Metrics()
    answer = web.Response()

    request = types.SimpleNamespace(app=app, match_info={"proxy": "nginx"})

    async def handler(request: web.Request) -> web.StreamResponse:
        return answer

    async def calls(h: object) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await h(request)  # type: ignore[operator]
        return time.perf_counter() - start

    observed = observe_verify(handler, app[keys.METRICS])
    with_hook = min(asyncio.run(calls(observed)) for _ in range(3))
    bare = min(asyncio.run(calls(handler)) for _ in range(3))
    return (with_hook - bare) / n * 1e6


def _median_load(loads: list[Load]) -> Load:
    med = statistics.median
    return Load(rps=med(x.rps for x in loads), p50_ms=med(x.p50_ms for x in loads),
                p99_ms=med(x.p99_ms for x in loads), mb_s=med(x.mb_s for x in loads),
                requests=sum(x.requests for x in loads), errors="", samples=[x.rps for x in loads],
                cpu={k: med(x.cpu[k] for x in loads) for k in loads[0].cpu})


def _counted(verify_url: str, load: Load) -> None:
    """The metrics-on server counted at least the checks of its last run (warm-up included): the hooks
    ran, or the comparison with (g) would mean nothing."""
    with urllib.request.urlopen(verify_url + "/_authproxy/metrics", timeout=10) as resp:
        text = resp.read().decode()
    line = r'^authproxy_verify_decisions_total\{outcome="allow",proxy="nginx"\} (\S+)$'
    found = re.search(line, text, re.MULTILINE)
    counted = float(found.group(1)) if found else 0.0
    if counted < load.requests + load.warmup_requests:
        raise BenchError(f"(d): the metrics counted {counted:.0f} checks, wrk made "
                         f"{load.requests + load.warmup_requests}")


def nginx_subrequest_headers(cookie_header: str) -> list[str]:
    """What nginx/authproxy.conf's internal verify location sends (plus the client's cookie)."""
    return [
        cookie_header,   # or the Authorization header of a bearer token
        "X-Original-Method: GET",
        f"X-Original-URL: https://{ORIGINAL_HOST}/dashboard?x=1",
        "X-Forwarded-Method: GET",
        "X-Forwarded-Proto: https",
        f"X-Forwarded-Host: {ORIGINAL_HOST}",
        "X-Forwarded-Uri: /dashboard?x=1",
        "X-Forwarded-For: 127.0.0.1",
        "X-Real-IP: 127.0.0.1",
    ]


def metrics_only(args: argparse.Namespace) -> None:
    """`--metrics-only`: case (g) alone, for as many alternated rounds as --runs asks."""
    with Bench(args, "verify-metrics") as bench:
        redis = bench.redis()
        headers = nginx_subrequest_headers(sign_in(redis, bench.tmp / "data").header)
        runs = _metrics_on_and_off(bench, args, "http://127.0.0.1:9", redis, headers)
    _metrics_summary(runs)
    print_targets([Target("(d) metrics on / (g) off, alternated runs", _metrics_ratio(runs), ">=", 0.9)])


def _metrics_ratio(runs: dict[str, list[Load]]) -> float:
    """The median of each round's on/off req/s: a round's two runs are seconds apart, so what else
    loads the machine weighs on both alike."""
    return statistics.median(on.rps / off.rps for on, off in zip(runs["true"], runs["false"], strict=True))


def _metrics_summary(runs: dict[str, list[Load]]) -> None:
    on_cpu = statistics.median(cpu_us(x) for x in runs["true"])
    off_cpu = statistics.median(cpu_us(x) for x in runs["false"])
    pairs = sorted(on.rps / off.rps for on, off in zip(runs["true"], runs["false"], strict=True))
    print(f"metrics: alternated runs, req/s on {[round(x.rps) for x in runs['true']]} vs off "
          f"{[round(x.rps) for x in runs['false']]} (per-round on/off, sorted: "
          f"{', '.join(f'{r:.2f}' for r in pairs)}); server CPU {on_cpu:.1f} vs {off_cpu:.1f} us/req "
          f"({off_cpu / on_cpu:.2f}x); what the hooks add to one check, timed in-process: "
          f"{_hook_cost_us():.2f} us")


def _count(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


def _fill(url: str, prefix: str, template: dict[str, tuple[str, Any, int]], have: int, want: int) -> None:
    """Add sessions `have`..`want`-1: copies of `template` (key -> (type, value, pttl)) under fresh ids."""
    import redis as redis_py

    client = redis_py.Redis.from_url(url)
    try:
        pipe = client.pipeline(transaction=False)
        for n in range(have, want):
            sid = f"bench{n:09d}" + secrets.token_hex(8)
            for key, (kind, value, ttl) in template.items():
                name = key.replace("{id}", sid).replace("{account}", hashlib.sha256(sid.encode()).hexdigest())
                if kind == "string":
                    pipe.set(prefix + name, value, px=max(ttl, 60_000))
                else:
                    pipe.sadd(prefix + name, *(m.replace(b"{id}", sid.encode()) for m in value))
                    pipe.pexpire(prefix + name, max(ttl, 60_000))
            if (n - have) % 5_000 == 4_999:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()


def _template(url: str, prefix: str, store_key: str) -> dict[str, tuple[str, Any, int]]:
    """What the one real sign-in wrote, with its id and its account index made into placeholders."""
    import redis as redis_py

    sid = store_key.removeprefix(prefix).removeprefix("s:")
    client = redis_py.Redis.from_url(url)
    template: dict[str, tuple[str, Any, int]] = {}
    try:
        for raw in client.keys(prefix + "*"):
            key = raw.decode()[len(prefix):]
            kind = client.type(raw).decode()
            ttl = int(client.pttl(raw))
            if key.startswith("t:"):
                continue  # a throttle counter (per client address), not part of a session
            if kind == "string":
                template[key.replace(sid, "{id}")] = (kind, client.get(raw), ttl)
            elif kind == "set":
                members = {m.replace(sid.encode(), b"{id}") for m in client.smembers(raw)}
                name = "u:{account}" if key.startswith("u:") else key.replace(sid, "{id}")
                template[name] = (kind, members, ttl)
    finally:
        client.close()
    return template


def _used_memory(url: str) -> int:
    import redis as redis_py

    client = redis_py.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def run_sizes(args: argparse.Namespace) -> None:
    sizes = sorted(_count(x) for x in args.sessions.split(","))
    print("bench/verify.py --sessions — the session check (cache off) as the store fills")
    print_machine({"load": f"wrk -t{args.threads} -c{args.connections}, {args.duration:g} s x {args.runs} "
                           f"run(s) (median), {args.warmup:g} s warm-up per size", "sizes": args.sessions})
    rows = []
    with Bench(args, "verify-sizes") as bench:
        redis = bench.redis()
        signed = sign_in(redis, bench.tmp / "data")
        headers = nginx_subrequest_headers(signed.header)
        prefix = "authproxy:"
        template = _template(redis.url, prefix, signed.store_key)
        print(f"one sign-in wrote {len(template)} keys: {', '.join(sorted(template))}; "
              f"blob {signed.blob_bytes} bytes\n")
        ap = bench.authproxy(upstream_url="http://127.0.0.1:9", redis_url=redis.url, cache_ttl=0.0,
                             name="authproxy-sizes")
        have, base_memory = 1, _used_memory(redis.url)
        first_p99 = None
        p99s: list[float] = []
        for size in sizes:
            started = time.monotonic()
            _fill(redis.url, prefix, template, have, size)
            filled = time.monotonic() - started
            memory = _used_memory(redis.url)
            per_session = (memory - base_memory) / (size - 1) if size > 1 else float("nan")
            have = max(have, size)
            probe(ap.verify_url + VERIFY_PATH, headers, what=f"{size} sessions")
            print(f"-- {size:,} sessions (filled in {filled:.1f} s)", flush=True)
            load = wrk(args, ap.verify_url + VERIFY_PATH, headers,
                       meters={"server": lambda: descendants(ap.proc.pid),
                               "redis": lambda: [redis.pid] if redis.pid else []})
            first_p99 = first_p99 or load.p99_ms
            p99s.append(load.p99_ms)
            rows.append([f"{size:,}", fmt_int(load.rps), fmt_ms(load.p50_ms), fmt_ms(load.p99_ms),
                         f"{load.p99_ms / first_p99:.2f}x", f"{per_session:,.0f}",
                         f"{memory / 2**20:,.0f}", load.errors.replace("Socket errors: ", "")])
    print()
    table(["sessions", "req/s", "p50 ms", "p99 ms", "p99 vs smallest", "Redis bytes/session", "Redis MiB",
           "socket errors"], rows, title="Session check, cache off, as the store fills")
    if len(p99s) > 1:
        ratio = p99s[-1] / p99s[0]
        print_targets([Target(f"p99 at {sizes[-1]:,} / p99 at {sizes[0]:,} sessions", ratio, "<=", 1.2)])


def run() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--metrics-only", action="store_true", help="only case (g): metrics on vs off")
    p.add_argument("--sessions", help="comma-separated store sizes, e.g. 1k,100k,1M: measure the check "
                                      "as the store fills instead of the baselines")
    args = finish_args(p.parse_args())
    if args.sessions:
        run_sizes(args)
        return
    if args.metrics_only:
        metrics_only(args)
        return
    print("bench/verify.py — issue #2: the session check path")
    print_machine(
        {
            "load": f"wrk -t{args.threads} -c{args.connections}, {args.duration:g} s x {args.runs} run(s) "
            f"(median), {args.warmup:g} s warm-up per case"
        }
    )
    results: dict[str, Load] = {}
    per_req: dict[str, float] = {}
    with Bench(args, "verify") as bench:
        redis = bench.redis()
        signed = sign_in(redis, bench.tmp / "data")
        headers = nginx_subrequest_headers(signed.header)
        print(f"session: signed in as alice through POST /_authproxy/api/auth/login (FakeTechnitium v15); "
              f"sealed blob in Redis: {signed.blob_bytes} bytes (baseline (b) blob: 328 bytes)\n")

        def measure(
            key: str, label: str, url: str, server: ManagedProcess, *, count_redis: bool = False
        ) -> None:
            print(f"-- {label}", flush=True)
            before = redis_commands(redis.url) if count_redis else 0
            load = wrk(args, url, headers, meters={"server": lambda: descendants(server.pid),
                                                   "redis": lambda: [redis.pid] if redis.pid else []})
            if count_redis:
                per_req[key] = (redis_commands(redis.url) - before) / (load.requests + load.warmup_requests)
            results[key] = load

        # (a) and (a') bare aiohttp
        port, proc = python_server(bench, "bare", name="bare")
        probe(f"http://127.0.0.1:{port}/", headers, what="bare aiohttp")
        measure("a", "(a) bare aiohttp handler", f"http://127.0.0.1:{port}/", proc)
        bench.stop(proc)
        port, proc = python_server(bench, "bare", "--access-log", "default", name="bare-log")
        probe(f"http://127.0.0.1:{port}/", headers, what="bare aiohttp + default access log")
        measure(
            "a_log", "(a') bare aiohttp + aiohttp's default access logger", f"http://127.0.0.1:{port}/", proc
        )
        if proc.log_path.stat().st_size < 10_000:
            raise BenchError("(a'): aiohttp's access logger wrote nothing")
        bench.stop(proc)

        # (b) redis-py GET + AES-GCM
        port, proc = python_server(bench, "redis", "--redis-url", redis.url, name="redis-decrypt")
        probe(f"http://127.0.0.1:{port}/", headers, what="redis GET + decrypt baseline")
        measure("b", "(b) aiohttp + redis-py GET + AES-GCM open", f"http://127.0.0.1:{port}/", proc,
                count_redis=True)
        bench.stop(proc)

        # (c), (d), (e) authproxy
        upstream = "http://127.0.0.1:9"  # never contacted by /verify
        for key, label, cache_ttl, access_log in (
            ("c", "(c) authproxy verify, cache off (SESSION_CACHE_TTL=0)", 0.0, False),
            ("d", "(d) authproxy verify, cache on (default)", None, False),
            ("e", "(e) authproxy verify, cache on, ACCESS_LOG=true", None, True),
        ):
            ap = bench.authproxy(upstream_url=upstream, redis_url=redis.url, cache_ttl=cache_ttl,
                                 access_log=access_log, name=f"authproxy-{key}")
            got, _ = probe(ap.verify_url + VERIFY_PATH, headers, what=label)
            if got.get("Remote-User") != "alice":
                raise BenchError(f"{label}: 200 without Remote-User: alice ({got})")
            measure(key, label, ap.verify_url + VERIFY_PATH, ap.proc, count_redis=key in ("c", "d"))
            if access_log and ap.log().count('"authproxy.access"') < 1000:
                raise BenchError(
                    f"{label}: the access log did not log (no lines in {ap.proc.log_path})\n"
                    f"{ap.proc.log_tail(2000)}"
                )
            bench.stop(ap.proc)

        alternated = _metrics_on_and_off(bench, args, upstream, redis, headers)
        results["g"] = _median_load(alternated["false"])

        # (f) authproxy on the embedded SQLite store (a session signed in there)
        label = "(f) authproxy verify, cache on, SQLite store"
        sqlite_headers = nginx_subrequest_headers(sign_in(None, bench.tmp / "data").header)
        ap = bench.authproxy(upstream_url=upstream, redis_url=None, name="authproxy-f")
        got, _ = probe(ap.verify_url + VERIFY_PATH, sqlite_headers, what=label)
        if got.get("Remote-User") != "alice":
            raise BenchError(f"{label}: 200 without Remote-User: alice ({got})")
        print(f"-- {label}", flush=True)
        results["f"] = wrk(args, ap.verify_url + VERIFY_PATH, sqlite_headers,
                           meters={"server": lambda: descendants(ap.proc.pid), "redis": list})
        bench.stop(ap.proc)

        # (h) authproxy verify with a JWT bearer (AUTH_MODE=otp), the same Redis, cache on
        label = "(h) authproxy verify, JWT bearer, cache on"
        otp = {"AUTH_MODE": "otp", "JWT_SECRET": JWT_SECRET, "TECHNITIUM_TOKEN": "bench-service-" + "s" * 20,
               "DISCORD_WEBHOOK_URL": "http://127.0.0.1:9/api/webhooks/1/unused", "OTP_NOTIFY": "false"}
        ap = bench.authproxy(upstream_url=upstream, redis_url=redis.url, name="authproxy-h", extra_env=otp)
        bearer_headers = nginx_subrequest_headers(f"Authorization: Bearer {bearer_token()}")
        got, _ = probe(ap.verify_url + VERIFY_PATH, bearer_headers, what=label)
        if got.get("Remote-User") != "admin":
            raise BenchError(f"{label}: 200 without Remote-User: admin ({got})")
        measure("h", label, ap.verify_url + VERIFY_PATH, ap.proc, count_redis=True)
        bench.stop(ap.proc)

    labels = {
        "a": "(a) bare aiohttp handler",
        "a_log": "(a') bare aiohttp + default access logger",
        "b": "(b) aiohttp + redis-py GET + AES-GCM",
        "c": "(c) authproxy verify, cache off",
        "d": "(d) authproxy verify, cache on",
        "e": "(e) authproxy verify, cache on + access log",
        "f": "(f) authproxy verify, cache on, SQLite store",
        "g": "(g) authproxy verify, cache on, METRICS=false",
        "h": "(h) authproxy verify, JWT bearer, cache on",
    }
    base = {"a": None, "a_log": "a", "b": "a", "c": "b", "d": "a", "e": "d", "f": "a", "g": "a", "h": "d"}
    rows = []
    for key, label in labels.items():
        r = results[key]
        ref = base[key]
        ratio = f"{r.rps / results[ref].rps:.2f}x ({ref})" if ref else ""
        cpu_ratio = f"{cpu_us(results[ref]) / cpu_us(r):.2f}x" if ref else ""
        rows.append(
            [
                label,
                fmt_int(r.rps),
                fmt_ms(r.p50_ms),
                fmt_ms(r.p99_ms),
                ratio,
                f"{r.cpu['server']:.0f} / {r.cpu['redis']:.0f} / {r.cpu['wrk']:.0f}",
                f"{cpu_us(r):.0f}",
                cpu_ratio,
                f"{per_req[key]:.2f}" if key in per_req else "",
                r.errors.replace("Socket errors: ", ""),
            ]
        )
    print()
    table(["case", "req/s", "p50 ms", "p99 ms", "ratio", "CPU% srv/redis/wrk", "srv us/req", "ratio(CPU)",
           "redis cmd/req", "socket errors"], rows,
          title=f"Results (wrk -c{args.connections}, median of {args.runs} x {args.duration:g} s)")
    print("CPU% = share of one core over the measured runs; srv us/req = server CPU time per request, and "
          "ratio(CPU) = the baseline's us/req over this case's: less sensitive to other load on the machine "
          "than req/s.\n")
    metrics_ratio = _metrics_ratio(alternated)
    print_targets([
        Target("(c) cache off / (b) redis-py GET+decrypt", results["c"].rps / results["b"].rps, ">=", 0.9),
        Target("(d) cache on / (a) bare aiohttp", results["d"].rps / results["a"].rps, ">=", 0.6),
        Target("(e) access log on / (d) off", results["e"].rps / results["d"].rps, ">=", 0.5),
        Target("(d) metrics on / (g) off, alternated runs", metrics_ratio, ">=", 0.9),
        Target("(h) JWT bearer / (d) cookie", results["h"].rps / results["d"].rps, ">=", 0.8),
    ])
    _metrics_summary(alternated)
    print(f"reference: aiohttp's default access logger costs the bare handler "
          f"{results['a_log'].rps / results['a'].rps:.2f}x (README: 0.41x); authproxy's logger costs "
          f"{results['e'].rps / results['d'].rps:.2f}x")


if __name__ == "__main__":
    main_wrapper(run)
