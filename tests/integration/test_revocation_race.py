""""Sign out everywhere" wins over a sign-in that runs at the same time, on the real stores.

A sign-in writes a new session and adopts the credentials of the person's previous session
(SessionManager.create and .adopt); "sign out everywhere" reads the account's index and deletes what it
finds. Run side by side as concurrent tasks, with a small random pause before every store call (a
seeded jitter, so the interleavings differ from round to round), no session may come out of it holding
a credential of the account that was signed out everywhere, and none may be left that a later "sign
out everywhere" cannot find. Before the fix, a session indexed after the index was read (or written
after its delete) survived with the revoked account's upstream token.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from authproxy.config.schema import SessionConfig
from authproxy.crypto import Keyring, Secret
from authproxy.sessions.manager import LoadedSession, SessionManager, SessionRevoked
from authproxy.sessions.model import Credential, Identity
from authproxy.sessions.redis import RedisStore
from authproxy.sessions.sqlite import SQLiteStore

ROUNDS = 40


def _jittered(store_class: type[Any], rng: random.Random) -> type[Any]:
    """The real store, pausing up to 2 ms before each call that the race is about."""

    class Jittered(store_class):  # type: ignore[valid-type,misc]
        async def _pause(self) -> None:
            await asyncio.sleep(rng.random() * 0.002)

        async def get(self, key: str) -> bytes | None:
            await self._pause()
            return await super().get(key)  # type: ignore[no-any-return]

        async def set(self, key: str, value: bytes, ttl: float) -> None:
            await self._pause()
            await super().set(key, value, ttl)

        async def replace(self, key: str, value: bytes, ttl: float) -> bool:
            await self._pause()
            return await super().replace(key, value, ttl)  # type: ignore[no-any-return]

        async def delete(self, *keys: str) -> int:
            await self._pause()
            return await super().delete(*keys)  # type: ignore[no-any-return]

        async def index_add(self, index: str, member: str, ttl: float) -> None:
            await self._pause()
            await super().index_add(index, member, ttl)

        async def index_members(self, index: str) -> set[str]:
            await self._pause()
            return await super().index_members(index)  # type: ignore[no-any-return]

    return Jittered


@pytest.fixture(params=["sqlite", "redis"])
async def manager(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionManager]:
    rng = random.Random(8)
    if request.param == "sqlite":
        store = _jittered(SQLiteStore, rng)(tmp_path / "sessions.sqlite3", poll_interval=60.0)
    else:
        store = _jittered(RedisStore, rng)(request.getfixturevalue("redis_url"))
    await store.start()
    config = SessionConfig(idle_timeout=600, max_age=3600, cache_ttl=2.0)
    sessions = SessionManager(store=store, keyring=Keyring([Secret("k" * 40)]), config=config)
    sessions.start()
    yield sessions
    await store.close()


async def _sign_in(manager: SessionManager, user: str, site: str) -> tuple[LoadedSession, str]:
    return await manager.create(user=user, site=site, identity=Identity(username=user),
                                credential=Credential(secret=f"{user}-token-at-{site}"),
                                client_ip="192.0.2.1")


async def test_a_credential_adopted_during_sign_out_everywhere_does_not_survive_it(
        manager: SessionManager) -> None:
    outcomes = {"ended": 0, "stripped": 0}
    for _ in range(ROUNDS):
        previous, _ = await _sign_in(manager, "alice", "dns")     # this browser, signed in at dns
        phone, _ = await _sign_in(manager, "alice", "dns")        # another device, which signs out everywhere

        async def sign_in_at_web(previous: LoadedSession) -> str | None:
            """The browser signs in at a second site: the new session adopts the dns credential."""
            try:
                loaded, cookie = await _sign_in(manager, "alice", "web")
                await manager.adopt(loaded, previous)
            except SessionRevoked:
                return None
            return cookie

        cookie, _ = await asyncio.gather(sign_in_at_web(previous), manager.destroy_everywhere(phone))
        survivor = await manager.load(cookie) if cookie else None
        if survivor is None:
            outcomes["ended"] += 1
        else:
            assert "dns" not in survivor.session.credentials, "the revoked account's token survived"
            assert set(survivor.session.credentials) == {"web"}
            outcomes["stripped"] += 1
            await manager.destroy(survivor)
        assert await manager.load(cookie or "") is None
    assert outcomes["ended"] + outcomes["stripped"] == ROUNDS


async def test_a_session_written_during_sign_out_everywhere_is_ended_or_stays_reachable(
        manager: SessionManager) -> None:
    """A sign-in of the same account while it is signed out everywhere: either it is ended too, or it
    came late enough to stay, and then the next "sign out everywhere" finds it (it is in the index)."""
    ended = 0
    for _ in range(ROUNDS):
        phone, _ = await _sign_in(manager, "bob", "dns")

        async def sign_in() -> str | None:
            try:
                return (await _sign_in(manager, "bob", "dns"))[1]
            except SessionRevoked:
                return None

        cookie, _ = await asyncio.gather(sign_in(), manager.destroy_everywhere(phone))
        survivor = await manager.load(cookie) if cookie else None
        if survivor is None:
            ended += 1
            continue
        later, _ = await _sign_in(manager, "bob", "dns")
        assert await manager.destroy_everywhere(later) == 2, "a live session the index lost"
        assert await manager.load(cookie or "") is None
    assert 0 <= ended <= ROUNDS
