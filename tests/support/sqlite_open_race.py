"""Start many processes on one fresh SQLite store at the same instant; print how many failed.

Run as `python -m tests.support.sqlite_open_race DIR PROCESSES TRIALS` (it forks, so it must not run
inside pytest's event loop): `--workers N` start together on a new file, and the switch to WAL is where
they collide.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
from multiprocessing.synchronize import Barrier
from pathlib import Path

from authproxy.sessions.sqlite import SQLiteStore


def _open_once(path: str, barrier: Barrier) -> None:
    async def main() -> None:
        store = SQLiteStore(Path(path))
        barrier.wait()
        await store.start()
        try:
            await store.set("k", b"v", 60)
        finally:
            await store.close()

    try:
        asyncio.run(main())
    except Exception as exc:  # noqa: BLE001 - reported to the parent as the exit code
        print(f"failed: {exc}", file=sys.stderr)
        sys.exit(1)


def trial(directory: Path, processes: int) -> int:
    path = str(directory / "data" / "sessions.sqlite3")
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    children = [context.Process(target=_open_once, args=(path, barrier)) for _ in range(processes)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    return sum(child.exitcode != 0 for child in children)


if __name__ == "__main__":
    base, processes, trials = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print(sum(trial(base / str(n), processes) for n in range(trials)))
