"""A circuit breaker for a remote store: after a timeout or a lost connection, fail at once, probe in the
background, and close again as soon as the store answers.

Why: a hung Redis (stopped, swapping, a network that drops packets) accepts connections and never answers,
so without it every request would wait the whole store timeout before its 503, and a sign-in, which makes
several calls, several times that. With it, only the calls already waiting pay the timeout; the next ones
get their 503 at once, and one probe at a time (PING, every `interval` s) finds out when to serve again.
Answers that are errors (`-ERR ...`) prove the store is there: they never open the circuit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from authproxy.errors import StoreError

log = logging.getLogger("authproxy.store")


class CircuitOpen(StoreError):
    """The store failed just now and has not answered a probe since: the call was not even tried."""


class CircuitBreaker:
    """`check()` before a call, `trip()` after a timeout or lost connection; `probe` is awaited in the
    background (it raises while the store is still unreachable) until it succeeds."""

    def __init__(self, probe: Callable[[], Awaitable[object]], *, label: str, interval: float = 0.1) -> None:
        self.probe = probe
        self.label = label
        self.interval = interval
        self.is_open = False
        self.opened_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def check(self, op: str) -> None:
        if self.is_open:
            if self._task is None or self._task.done():   # the probe must never be lost while open
                self._start_probe()
            raise CircuitOpen(f"{self.label}: {op} not tried: the store stopped answering "
                              f"{time.monotonic() - self.opened_at:.1f} s ago and has not answered since")

    def trip(self, detail: str) -> None:
        if self.is_open:
            return
        self.is_open = True
        self.opened_at = time.monotonic()
        log.warning("%s: not answering (%s); answering 503 at once until it answers a probe again",
                    self.label, detail)
        self._start_probe()

    def _start_probe(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._probe_until_up(),
                                                            name="authproxy-store-probe")

    def answered(self) -> None:
        """The store answered a call made past the breaker: close the circuit now."""
        if self.is_open:
            self._closed()
            task, self._task = self._task, None
            if task is not None:
                task.cancel()

    def _closed(self) -> None:
        self.is_open = False
        log.info("%s: answering again after %.2f s", self.label, time.monotonic() - self.opened_at)

    async def _probe_until_up(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.probe()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                failures += 1   # a client library's own cancellation, not ours: still down
                continue
            except Exception as exc:  # noqa: BLE001 - any failure means: still down, probe again
                failures += 1
                if failures in (1, 50) or failures % 600 == 0:   # the type only: text may quote the URL
                    log.warning("%s: probe %d failed (%s)", self.label, failures, type(exc).__name__)
                continue
            self._task = None
            self._closed()
            return

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.is_open = False
