"""Keep each upstream session alive for as long as its authproxy session is.

Upstreams with a sliding timeout (Technitium: 1800 s by default, configurable per user down to a
few minutes; Pi-hole: 1800 s) forget a token that goes unused. Forwarded requests use it, but a
person who leaves the UI open without clicking would find the upstream session gone while the
authproxy session (idle timeout) still stands. For every credential whose upstream timeout is not
comfortably longer than the idle timeout, this schedules the adapter's cheapest authenticated call
at half the upstream timeout after the last use, and stops once the authproxy session has ended.

It also proves credentials that authproxy hands out without seeing the upstream's answer: forward auth
(/verify) gives the proxy in front the token and never learns that the upstream restarted and forgot
it, so the person would be stuck until the idle timeout. When /verify hands out a credential that no
upstream answer has proven for `prove_every` s (30), the same cheapest call runs in the background;
a dead credential is dropped (the session ends with its last one), so the next check asks to sign in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from authproxy.errors import StoreError, UpstreamError
from authproxy.log import log
from authproxy.sessions.manager import LoadedSession, SessionManager
from authproxy.upstreams.base import UpstreamAdapter

Key = tuple[str, str]  # (store key, site name)
Timer = Callable[[float, Callable[[], None]], asyncio.TimerHandle]
PROVE_EVERY = 30.0  # a forward-auth-only credential is checked at most this long after its last proof
PROVEN_MAX = 100_000  # remembered proofs (oldest forgotten first): a bounded cost per process


def _loop_timer(delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_later(delay, callback)


class UpstreamKeepalive:
    def __init__(self, sessions: SessionManager, adapter_for: Callable[[str], UpstreamAdapter | None], *,
                 timer: Timer = _loop_timer) -> None:
        self.sessions = sessions
        self.adapter_for = adapter_for
        self.timer = timer  # tests drive time by hand
        self._last_use: dict[Key, float] = {}
        self._held: dict[Key, LoadedSession] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.prove_every = PROVE_EVERY
        # store key -> {site: when the upstream last proved that credential}; only for credentials /verify
        # handed out, forgotten when the session is saved or ended anywhere; insertion-ordered (LRU).
        self._proven: dict[str, dict[str, float]] = {}
        self._proving: set[Key] = set()

    def needed(self, ttl: float | None) -> bool:
        """Only when the upstream could time out before authproxy's own idle timeout does."""
        return ttl is not None and 0 < ttl <= self.sessions.config.idle_timeout + self.sessions.touch_interval

    def note_use(self, loaded: LoadedSession, site: str) -> None:
        """The credential for `site` was just used (login, forwarded request, heartbeat)."""
        credential = loaded.session.credentials.get(site)
        if loaded.store_key in self._proven:
            self._proved((loaded.store_key, site), self.sessions.clock())
        if credential is None or not self.needed(credential.upstream_ttl):
            return
        key = (loaded.store_key, site)
        self._last_use[key] = self.sessions.clock()
        self._held[key] = loaded
        if key not in self._timers:
            self._schedule(key, credential.upstream_ttl / 2)  # type: ignore[operator]

    def note_unproven_use(self, loaded: LoadedSession, site: str) -> None:
        """The credential for `site` was handed out (forward auth) and authproxy will not see whether the
        upstream still takes it: prove it in the background when no answer has for `prove_every` s."""
        key = (loaded.store_key, site)
        now = self.sessions.clock()
        proven = self._proven.get(loaded.store_key, {}).get(site)
        if proven is None:
            credential = loaded.session.credentials.get(site)
            proven = credential.touched_at if credential is not None else now
            self._proved(key, proven)
        if now - proven < self.prove_every or key in self._proving:
            return
        self._proving.add(key)
        task = asyncio.get_running_loop().create_task(self._prove(key, loaded), name="authproxy-prove")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _proved(self, key: Key, when: float) -> None:
        store_key, site = key
        sites = self._proven.pop(store_key, None) or {}
        sites[site] = when
        self._proven[store_key] = sites
        if len(self._proven) > PROVEN_MAX:
            del self._proven[next(iter(self._proven))]

    async def _prove(self, key: Key, loaded: LoadedSession) -> None:
        site = key[1]
        try:
            credential = loaded.session.credentials.get(site)
            adapter = self.adapter_for(site)
            if credential is None or adapter is None:
                return
            try:
                alive = await adapter.keepalive(credential)
            except UpstreamError:  # down or slow, not a verdict on the token: ask again in 5 s
                self._proved(key, self.sessions.clock() - self.prove_every + 5.0)
                return
            if alive:
                self._proved(key, self.sessions.clock())
                return
            log.info("forward auth: the upstream no longer takes a credential; it is dropped",
                     extra={"fields": {"site": site}})
            self._proven.get(key[0], {}).pop(site, None)
            self._forget(key)
            with contextlib.suppress(StoreError):
                await self.sessions.drop_credential(loaded, site)
        finally:
            self._proving.discard(key)

    def _schedule(self, key: Key, delay: float) -> None:
        self._timers[key] = self.timer(max(0.05, delay), lambda: self._fire(key))

    def invalidated(self, store_key: str) -> None:
        """A session was saved or destroyed somewhere: re-check its credentials now."""
        self._proven.pop(store_key, None)  # a saved one starts again from its credentials' touched_at
        for key in [k for k in self._timers if k[0] == store_key]:
            self._timers.pop(key).cancel()
            self._fire(key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        task = asyncio.get_running_loop().create_task(self._touch(key), name="authproxy-keepalive")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, key: Key) -> None:
        self._last_use.pop(key, None)
        self._held.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def _touch(self, key: Key) -> None:
        loaded = self._held.get(key)
        store_key, site = key
        credential = loaded.session.credentials.get(site) if loaded else None
        adapter = self.adapter_for(site)
        if loaded is None or credential is None or adapter is None or credential.upstream_ttl is None:
            self._forget(key)
            return
        ttl = credential.upstream_ttl
        try:
            if await self.sessions.store.ttl(store_key) is None:
                self._forget(key)  # the authproxy session ended: let the upstream one lapse too
                return
        except StoreError:
            self._schedule(key, min(30.0, ttl / 4))
            return
        now = self.sessions.clock()
        idle = now - self._last_use.get(key, 0.0)
        if idle < ttl / 2:
            self._schedule(key, ttl / 2 - idle)
            return
        before = credential.secret
        try:
            alive = await adapter.keepalive(credential)
        except UpstreamError as exc:
            log.warning(
                "upstream keepalive failed; retrying",
                extra={"fields": {"site": site, "error": type(exc).__name__}},
            )
            self._schedule(key, min(30.0, ttl / 4))
            return
        if alive and credential.secret != before:
            # A chained credential (TrueNAS: the token used is destroyed, the next one kept).
            with contextlib.suppress(StoreError):
                await self.sessions.save(loaded)
        if not alive and await self._rotated_meanwhile(loaded, site, before):
            self._schedule(key, min(30.0, ttl / 4))
            return
        if not alive:
            self._forget(key)
            with contextlib.suppress(StoreError):
                await self.sessions.drop_credential(loaded, site)
            return
        self._last_use[key] = now
        self._schedule(key, ttl / 2)

    async def _rotated_meanwhile(self, loaded: LoadedSession, site: str, tried: str) -> bool:
        """Whether another socket already replaced the credential this keepalive found dead (a chained
        credential): then the held copy is refreshed, not the session ended."""
        try:
            fresh = await self.sessions.load(loaded.ticket.encode(self.sessions.keyring))
        except StoreError:
            return False
        credential = fresh.session.credentials.get(site) if fresh is not None else None
        if fresh is None or credential is None or credential.secret == tried:
            return False
        self._held[(loaded.store_key, site)] = fresh
        return True

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._last_use.clear()
        self._held.clear()
        self._proven.clear()
