"""Issue #16: a soak — authproxy under mixed load for 10 minutes, watched for leaks and errors.

authproxy runs as `authproxy run` (Redis store, a real redis-server; --store sqlite for the embedded one;
--workers N) in front of FakeTechnitium with its WebSocket endpoint, served by a process of its own.
The load (--concurrency loops, each picking at random):

    45%  a session check (GET /_authproxy/api/auth/session) with a good cookie   -> 200, authenticated
    15%  the same with a bad cookie (forged or signed out)                        -> 200, not authenticated
    25%  a proxied request (GET /api/zones/list) with a good cookie               -> 200
     8%  a sign-in, then its sign-out                                             -> 200, 200
     7%  a WebSocket through the bridge: open, one echo, close                    -> the echo, close 1000

Every 10 s it samples each authproxy process: RSS, open files, threads. At the end it prints the samples,
the requests and errors per kind, and the targets: RSS growth after the first minute (or the first fifth
of a shorter run) under 10%, open files and threads flat (± 5), no errors.

    python bench/soak.py [--duration 600] [--concurrency 16] [--workers 1] [--store redis|sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    PASSWORD,
    USER,
    Bench,
    BenchError,
    Target,
    main_wrapper,
    print_machine,
    print_targets,
    status_kb,
    table,
)
from tests.support.procs import free_port, wait_for_port

SESSION = "/_authproxy/api/auth/session"
LOGIN = "/_authproxy/api/auth/login"
LOGOUT = "/_authproxy/api/auth/logout"
FORWARDED = {"X-Forwarded-Proto": "https"}
COOKIE = "__Host-authproxy"


def serve_upstream(port: int) -> None:
    """The upstream process: FakeTechnitium v15 with the bridge's WebSocket endpoint, until killed."""
    from tests.fakes.technitium import FakeTechnitium
    from tests.fakes.ws_upstream import SocketUpstream

    async def main() -> None:
        fake = FakeTechnitium(api_version=15)
        fake.add_user(USER, PASSWORD, display_name="Alice Example")
        SocketUpstream(fake)
        from aiohttp import web

        runner = web.AppRunner(fake.app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        fake._port = port
        await asyncio.Event().wait()

    asyncio.run(main())


class Load:
    def __init__(self, base: str, good: list[str]) -> None:
        self.base = base
        self.good = good
        self.bad: list[str] = ["forged." + "x" * 60]
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.samples: list[str] = []

    def _err(self, kind: str, what: str) -> None:
        self.errors[kind] += 1
        if len(self.samples) < 10:
            self.samples.append(f"{kind}: {what}")

    async def one(self, http: object, rng: random.Random) -> None:
        import aiohttp

        assert isinstance(http, aiohttp.ClientSession)
        roll = rng.random()
        kind = ("check" if roll < 0.45 else "bad-cookie" if roll < 0.60 else "proxied" if roll < 0.85
                else "sign-in/out" if roll < 0.93 else "websocket")
        self.counts[kind] += 1
        try:
            if kind in ("check", "bad-cookie"):
                cookie = rng.choice(self.good if kind == "check" else self.bad)
                headers = {**FORWARDED, "Cookie": f"{COOKIE}={cookie}"}
                async with http.get(self.base + SESSION, headers=headers) as r:
                    body = await r.json() if r.status == 200 else {}
                    if r.status != 200 or body.get("authenticated") is not (kind == "check"):
                        self._err(kind, f"{r.status} {body}")
            elif kind == "proxied":
                headers = {**FORWARDED, "Cookie": f"{COOKIE}={rng.choice(self.good)}"}
                async with http.get(self.base + "/api/zones/list", headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        self._err(kind, str(r.status))
            elif kind == "sign-in/out":
                await self._sign_in_out(http)
            else:
                headers = {**FORWARDED, "Cookie": f"{COOKIE}={rng.choice(self.good)}"}
                async with http.ws_connect(self.base + "/ws", headers=headers) as ws:
                    await ws.send_str("soak")
                    msg = await ws.receive(timeout=10)
                    if msg.data != "soak":
                        self._err(kind, f"echo {msg.type} {msg.data!r}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._err(kind, f"{type(exc).__name__}: {exc}")

    async def _sign_in_out(self, http: object) -> None:
        import aiohttp

        assert isinstance(http, aiohttp.ClientSession)
        async with http.post(self.base + LOGIN, json={"username": USER, "password": PASSWORD},
                             headers=FORWARDED) as r:
            await r.read()
            cookie = r.cookies.get(COOKIE)
            if r.status != 200 or cookie is None:
                self._err("sign-in/out", f"sign-in {r.status}")
                return
        async with http.post(self.base + LOGOUT, json={},
                             headers={**FORWARDED, "Cookie": f"{COOKIE}={cookie.value}"}) as r:
            await r.read()
            if r.status != 200:
                self._err("sign-in/out", f"sign-out {r.status}")
            elif len(self.bad) < 200:
                self.bad.append(cookie.value)  # a signed-out cookie: a bad one from now on


async def sign_in_many(base: str, count: int) -> list[str]:
    import aiohttp

    cookies = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for _ in range(count):
            async with http.post(base + LOGIN, json={"username": USER, "password": PASSWORD},
                                 headers=FORWARDED) as r:
                cookie = r.cookies.get(COOKIE)
                if r.status != 200 or cookie is None:
                    raise BenchError(f"sign-in failed: {r.status} {await r.text()}")
                cookies.append(cookie.value)
    return cookies


def sample(pids: list[int]) -> tuple[float, int, int]:
    """(RSS MiB, open files, threads) summed over `pids`."""
    rss = sum(status_kb(pid, "VmRSS") for pid in pids) / 1024
    fds = sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)
    threads = sum(int(status_kb(pid, "Threads")) for pid in pids)
    return rss, fds, threads


async def drive(args: argparse.Namespace, base: str, pids: list[int], load: Load) -> list[list[float]]:
    import aiohttp

    stop = time.monotonic() + args.duration
    samples: list[list[float]] = []

    async def loop(seed: int) -> None:
        rng = random.Random(seed)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                         timeout=aiohttp.ClientTimeout(total=15)) as http:
            while time.monotonic() < stop:
                await load.one(http, rng)

    tasks = [asyncio.create_task(loop(i)) for i in range(args.concurrency)]
    started = time.monotonic()
    while time.monotonic() < stop:
        await asyncio.sleep(min(10.0, max(0.0, stop - time.monotonic())))
        rss, fds, threads = sample(pids)
        samples.append([time.monotonic() - started, rss, fds, threads, sum(load.counts.values())])
        print(f"  t={samples[-1][0]:5.0f} s  RSS {rss:6.1f} MiB  fds {fds:4d}  threads {threads:3d}  "
              f"requests {samples[-1][4]:,.0f}  errors {sum(load.errors.values())}", flush=True)
    await asyncio.gather(*tasks)
    return samples


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent client loops (default 16)")
    p.add_argument("--workers", type=int, default=1, help="authproxy WORKERS (default 1)")
    p.add_argument("--store", choices=("redis", "sqlite"), default="redis")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for inspection")
    p.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    print("bench/soak.py — issue #16: mixed load, watched for leaks")
    print_machine({"load": f"{args.concurrency} loops for {args.duration:g} s, store {args.store}, "
                           f"WORKERS={args.workers}"})
    with Bench(args, "soak") as bench:
        up_port = free_port()
        upstream = bench.spawn([sys.executable, str(Path(__file__).resolve()), "--serve-upstream",
                                str(up_port)], name="upstream")
        wait_for_port("127.0.0.1", up_port, 20, process=upstream)
        redis_url = bench.redis().url if args.store == "redis" else None
        ap = bench.authproxy(upstream_url=f"http://127.0.0.1:{up_port}", redis_url=redis_url,
                             workers=args.workers, name="authproxy",
                             extra_env={"LOGIN_MAX_FAILURES": "10000"})
        good = asyncio.run(sign_in_many(ap.url, 20))
        load = Load(ap.url, good)
        samples = asyncio.run(drive(args, ap.url, ap.worker_pids(), load))
    warm = next((s for s in samples if s[0] >= min(60.0, args.duration / 5)), samples[0])
    last = samples[-1]
    rows = [[f"{s[0]:.0f}", f"{s[1]:.1f}", f"{s[2]:.0f}", f"{s[3]:.0f}", f"{s[4]:,.0f}"] for s in samples]
    print()
    table(["t (s)", "RSS MiB", "open files", "threads", "requests"], rows, title="Samples")
    table(["kind", "requests", "errors"],
          [[k, f"{n:,}", str(load.errors[k])] for k, n in sorted(load.counts.items())], title="Load")
    for line in load.samples:
        print(f"  error: {line}")
    total = sum(load.counts.values())
    print(f"{total:,} requests in {args.duration:g} s ({total / args.duration:,.0f}/s)")
    growth = (last[1] - warm[1]) / warm[1]
    print_targets([
        Target(f"RSS growth after t={warm[0]:.0f} s", 1 + growth, "<=", 1.10),
        Target("open files, end - warm", last[2] - warm[2], "<=", 5, unit=""),
        Target("threads, end - warm", last[3] - warm[3], "<=", 5, unit=""),
        Target("errors", sum(load.errors.values()), "<=", 0, unit=""),
    ])


if __name__ == "__main__":
    main_wrapper(run)
