"""Issue #16: what the session check's hot read costs on a Redis Cluster, against one Redis, same run.

On one Redis the store's hot reads (GET/PEXPIRE/PTTL) go through its small pipelined client; on a Cluster
through one such client per master, found from redis-py's slot map (redis-py's cluster client only after
a MOVED or a failing node). This measures `RedisStore.get` of a real-sized blob (1.3 KB) from one process
with --concurrency calls in flight: gets per second and the client's CPU time per get, one Redis vs a
3-master + 3-replica cluster of real redis-server processes (started here; redis-cli needed). Also the
cost of an acknowledged write on the Cluster (SET + WAIT 1) against a plain SET on one Redis.

    python bench/cluster_reads.py [--duration 5] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import main_wrapper, print_machine, table
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

BLOB = os.urandom(1300)


async def rate(call: Callable[[int], Awaitable[object]], duration: float,
               concurrency: int) -> tuple[float, float]:
    """(calls per second, CPU µs of this process per call)."""
    done = 0
    stop = time.monotonic() + duration

    async def loop(k: int) -> None:
        nonlocal done
        n = k
        while time.monotonic() < stop:
            await call(n)
            n += concurrency
            done += 1

    cpu = time.process_time()
    started = time.monotonic()
    await asyncio.gather(*(loop(k) for k in range(concurrency)))
    elapsed = time.monotonic() - started
    return done / elapsed, (time.process_time() - cpu) / max(done, 1) * 1e6


async def measure(url: str, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    from authproxy.sessions.redis import RedisStore

    store = RedisStore(url)
    await store.start()
    try:
        for i in range(1000):
            await store.set(f"s:{i}", BLOB, 600)
        await rate(lambda n: store.get(f"s:{n % 1000}"), 0.5, args.concurrency)  # warm-up
        reads = await rate(lambda n: store.get(f"s:{n % 1000}"), args.duration, args.concurrency)
        writes = await rate(lambda n: store.set(f"w:{n % 1000}", BLOB, 600), args.duration / 2,
                            args.concurrency)
        return {"get": reads, "set": writes}
    finally:
        await store.close()


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=50)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print("bench/cluster_reads.py — issue #16: hot reads and acknowledged writes, one Redis vs a Cluster")
    print_machine({"load": f"{args.concurrency} calls in flight, {args.duration:g} s per case"})
    with tempfile.TemporaryDirectory(prefix="authproxy-bench-cluster-") as tmp:
        single = RedisServer(Path(tmp) / "single").start()
        cluster = RedisCluster(Path(tmp) / "cluster").start()
        try:
            one = asyncio.run(measure(single.url, args))
            many = asyncio.run(measure(cluster.url, args))
        finally:
            cluster.stop()
            single.stop()
    rows = []
    for op, label in (("get", "GET (hot read)"), ("set", "SET (a write)")):
        for name, result in (("one Redis", one), ("Cluster 3+3", many)):
            rows.append([label, name, f"{result[op][0]:,.0f}", f"{result[op][1]:.0f}"])
    table(["call", "store", "calls/s", "client CPU µs/call"], rows, title="RedisStore from one process")
    print("one Redis: GET through the small pipelined client, SET through redis-py; Cluster: GET through a "
          "small client per master (slot-aware), SET through redis-py's cluster client + WAIT 1 on the "
          "master's connection.\n")
    get_rate, get_cpu = many["get"][0] / one["get"][0], many["get"][1] / one["get"][1]
    print(f"Cluster / one Redis: GET {get_rate:.2f}x the calls/s at {get_cpu:.1f}x the CPU per call; "
          f"SET {many['set'][0] / one['set'][0]:.2f}x the calls/s")


if __name__ == "__main__":
    main_wrapper(run)
