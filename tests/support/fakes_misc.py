"""Fixtures for the Pi-hole v6 and AdGuard Home fakes (pytest plugin).

Why fixtures: each test gets a fresh fake (own sessions, own rate limiters, own clock) on its own
127.0.0.1 port, closed at teardown even when the test fails. ``pihole``/``adguard`` use the defaults;
``make_pihole(**kw)``/``make_adguard(**kw)`` build ones with other options (TOTP, few seats, …).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from tests.fakes.adguard import FakeAdGuard
from tests.fakes.pihole import FakePihole

__all__ = ["adguard", "make_adguard", "make_pihole", "pihole"]

F = TypeVar("F", FakePihole, FakeAdGuard)


async def _factory(cls: type[F]) -> AsyncIterator[Callable[..., Awaitable[F]]]:
    """`await make(**options)` -> a started fake; every one made is closed at teardown."""
    started: list[F] = []

    async def make(**kwargs: Any) -> F:
        fake = cls(**kwargs)
        started.append(fake)
        return await fake.start()

    yield make
    for fake in reversed(started):
        await fake.close()


@pytest.fixture
async def make_pihole() -> AsyncIterator[Callable[..., Awaitable[FakePihole]]]:
    """``await make_pihole(totp_secret=..., max_sessions=2, ...)`` -> a started FakePihole."""
    async for make in _factory(FakePihole):
        yield make


@pytest.fixture
async def pihole(make_pihole: Callable[..., Awaitable[FakePihole]]) -> FakePihole:
    """A started FakePihole with defaults (password ``pihole.password``, 1800 s sliding sessions)."""
    return await make_pihole()


@pytest.fixture
async def make_adguard() -> AsyncIterator[Callable[..., Awaitable[FakeAdGuard]]]:
    """``await make_adguard(users={...}, session_ttl=..., ...)`` -> a started FakeAdGuard."""
    async for make in _factory(FakeAdGuard):
        yield make


@pytest.fixture
async def adguard(make_adguard: Callable[..., Awaitable[FakeAdGuard]]) -> FakeAdGuard:
    """A started FakeAdGuard with defaults (``adguard.username``/``adguard.password``, 720 h sessions)."""
    return await make_adguard()
