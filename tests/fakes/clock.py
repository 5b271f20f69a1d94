"""A clock for fakes whose timers run in wall-clock time: real time plus an offset the test controls."""

from __future__ import annotations

import time


class OffsetClock:
    """Wall-clock time plus an offset: ``advance(15 * 60)`` ends an AdGuard login block, ``advance(1801)``
    expires a Pi-hole session. ``frozen=True`` (or ``freeze()``) stops the wall-clock part, for checks
    that count per second.
    """

    def __init__(self, *, frozen: bool = False) -> None:
        self.offset = 0.0
        self.frozen_at: float | None = time.time() if frozen else None

    def __call__(self) -> float:
        base = self.frozen_at if self.frozen_at is not None else time.time()
        return base + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def freeze(self) -> None:
        self.frozen_at = time.time()
