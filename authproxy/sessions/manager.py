"""The one owner of tickets, sealing, cookies, expiry and the hot cache.

Idle timeout is the store TTL (sliding, refreshed at most every `touch_interval`), the absolute
lifetime is checked on every load. A short in-process cache of verified sessions keeps the store
round trip off most requests. Logout, revocation and expiry delete the session and then `revoke` it
through the store, which returns only once no process can serve its cached copy any more: each cache
entry records the store's `generation()` from before its read and is used only while that is unchanged
(see store.py), so a request that starts after a logout answered is never let in, on any worker.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from authproxy.config.schema import SessionConfig
from authproxy.crypto import Keyring, b64e, seal, unseal
from authproxy.errors import AuthError
from authproxy.log import audit, log
from authproxy.sessions.model import OWNER, Credential, Identity, Session, owner_record, site_identity
from authproxy.sessions.store import SessionStore
from authproxy.sessions.ticket import Ticket, decode_ticket, new_ticket

CHANNEL = "sessions"
# Each per-process memo (decoded cookies, verified sessions, revocation counts, last touches) is emptied
# when it reaches this many entries: far more sessions than a gateway in front of a few admin UIs has
# active at once, and small enough that a stream of sign-ins no longer grows the process for long (the
# 10-minute soak: +32% RSS after its first minute with 50,000, most of it these memos filling).
MAX_CACHE_ENTRIES = 10_000
# The end marker outlives the session blob by this much, so an absolute-lifetime end is still noticed.
MARKER_GRACE = 300.0
# "Sign out everywhere" leaves a tombstone per session it ends, for this long: a sign-in that indexed
# and wrote its session meanwhile finds it when it checks, a few store round trips later.
TOMBSTONE_TTL = 600.0
MAX_REVOKE_ROUNDS = 16


def public_id(store_key: str) -> str:
    """A short, non-secret handle for logs and admin listings (hash of the store key)."""
    return hashlib.sha256(store_key.encode()).hexdigest()[:12]


def marker_key(store_key: str) -> str:
    return "m:" + store_key.removeprefix("s:")


def tombstone_key(store_key: str) -> str:
    """Set by "sign out everywhere" before it deletes a session (see SessionManager.destroy_everywhere)."""
    return "x:" + store_key.removeprefix("s:")


MARKER_PURPOSE = "authproxy-session-marker"


def open_marker(keys: list[bytes], blob: bytes, key: str) -> dict[str, object] | None:
    """A session's marker (user, site, times, client, how it signed in; never a credential), sealed
    under a key derived from SESSION_SECRET so the operator's tools (`authproxy sessions`) can read it,
    and a store dump alone still cannot. `keys`: every key it may be sealed under (the ticket's own key
    last, for markers written before this form)."""
    for candidate in keys:
        plain = unseal(candidate, blob, key.encode())
        if plain is not None:
            try:
                info = json.loads(plain)
            except ValueError:
                return None
            return info if isinstance(info, dict) else None
    return None


@dataclass(slots=True)
class LoadedSession:
    """A session together with the ticket that unlocks it (needed to save it again)."""

    session: Session
    ticket: Ticket
    store_key: str
    generation: int = -1  # the store's generation() before the read that produced this copy
    fetched_at: float = 0.0
    touched_at: float = 0.0

    @property
    def public_id(self) -> str:
        """A short, non-secret handle for logs and admin listings (hash of the store key)."""
        return public_id(self.store_key)


ClientIP = str | Callable[[], str]


class SessionRevoked(AuthError):
    """A sign-in lost a race with "sign out everywhere" of its account: its session is gone again."""

    def __init__(self, why: str) -> None:
        super().__init__(f"You were {why}; sign in again.", code="signed_out_everywhere", status=401)


def _resolve(client_ip: ClientIP) -> str:
    """The audit line's address; forward auth passes a function (its X-Forwarded-For walk runs only
    for the rare request that writes an audit line)."""
    return client_ip if isinstance(client_ip, str) else client_ip()


class SessionManager:
    def __init__(self, *, store: SessionStore, keyring: Keyring, config: SessionConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.keyring = keyring
        self.config = config
        self.clock = clock
        self.cookie_name = config.cookie_name or ("authproxy" if config.cookie_domain else "__Host-authproxy")
        # Well below the idle timeout: a cached session is trusted only until its next touch is due,
        # and that touch is what notices a store entry that lapsed (or was deleted) meanwhile.
        self.touch_interval = min(60.0, config.idle_timeout / 10)
        self._cache: dict[str, LoadedSession] = {}
        # Cookie values that decoded to a valid ticket -> (ticket, store key). Decoding (three base64
        # parts, an HMAC per signing key, a SHA-256) is a pure function of the value and this process's
        # keyring, so it runs once per cookie instead of on every request. Only valid values get in.
        self._tickets: dict[str, tuple[Ticket, str]] = {}
        # Store key -> when this process last slid its idle TTL, kept apart from the cache so the
        # slide stays "at most every touch_interval" with the cache off too (not one EXPIRE per load).
        self._touched: dict[str, float] = {}
        # Store key -> the one store read under way for it (with the cache on), and the generation it
        # started under: requests join it only while that holds (one that started before a revocation
        # may have read the session before the delete). When a cached entry goes stale under load, every
        # concurrent request for that session would otherwise read the store at once (50 connections:
        # 50 GETs and a 50-connection Redis pool every cache_ttl).
        self._inflight: dict[str, tuple[Ticket, asyncio.Future[LoadedSession | None], int]] = {}
        self._generation = store.generation  # read on every cache hit: no I/O
        # Store key -> invalidations and destroys seen here. A store read that one overtook (a logout
        # elsewhere landed while the GET was on the wire) may hold a session that no longer exists: its
        # answer serves the request that asked, but is not cached. Per key, so other people's logins
        # and logouts never stop this session's reads from being cached.
        self._epochs: dict[str, int] = {}
        self._epochs_cleared = 0
        # Plain counts for authproxy_session_cache_* (metrics.py moves them into the registry).
        self.cache_hits = 0
        self.cache_misses = 0
        self.marker_keys = keyring.derive_all(MARKER_PURPOSE)   # open_marker: newest first

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to invalidations (call after store.start())."""
        self.store.subscribe(CHANNEL, self._on_invalidate)

    def _bump(self, store_key: str) -> None:
        if len(self._epochs) >= MAX_CACHE_ENTRIES and store_key not in self._epochs:
            self._epochs.clear()       # reads under way then see the clear count change: not cached
            self._epochs_cleared += 1
        self._epochs[store_key] = self._epochs.get(store_key, 0) + 1

    def _on_invalidate(self, message: str) -> None:
        self._bump(message)
        self._cache.pop(message, None)
        self._touched.pop(message, None)
        self._inflight.pop(message, None)  # requests from now on read the store afresh

    # ---- create / load / save / destroy ----------------------------------------------------------

    async def create(self, *, user: str, site: str, identity: Identity, credential: Credential | None,
                     client_ip: str, auth_method: str = "passthrough") -> tuple[LoadedSession, str]:
        """A brand-new session and its cookie value (always a new id: no fixation)."""
        now = self.clock()
        session = Session(user=user, site=site, identity=identity,
                          credentials={site: credential} if credential is not None else {},
                          created_at=now, expires_at=now + self.config.max_age, client_ip=client_ip,
                          auth_method=auth_method)
        ticket = new_ticket()
        loaded = LoadedSession(session=session, ticket=ticket, store_key=ticket.store_key,
                               fetched_at=now, touched_at=now)
        # Indexed before it is written, checked after: a "sign out everywhere" of this account that
        # is under way either finds it in the index or has already left its tombstone (see
        # destroy_everywhere), so the revocation wins.
        await self.store.index_add(self._account_index(site, user), loaded.store_key, self.config.max_age)
        await self._write(loaded)
        await self._write_marker(loaded, now)
        if await self._revoked(loaded.store_key):
            await self.destroy(loaded)
            raise SessionRevoked("signed out everywhere while signing in")
        return loaded, ticket.encode(self.keyring)

    async def load(self, cookie_value: str | None, *, client_ip: ClientIP = "") -> LoadedSession | None:
        """The live session for a cookie value, or None (absent, forged, expired, revoked).

        `client_ip` (or a function that tells it, called only then) only goes into the audit line
        written when this request is the one that finds the session expired.
        """
        if not cookie_value:
            return None
        memo = self._tickets.get(cookie_value)
        if memo is None:
            ticket = decode_ticket(cookie_value, self.keyring)
            if ticket is None:
                return None
            store_key = ticket.store_key
            if len(self._tickets) >= MAX_CACHE_ENTRIES:
                self._tickets.clear()
            self._tickets[cookie_value] = (ticket, store_key)
        else:
            ticket, store_key = memo
        now = self.clock()
        cached = self._cache.get(store_key)
        if (cached is not None and now - cached.fetched_at < self.config.cache_ttl
                and cached.generation == self._generation()
                and hmac.compare_digest(cached.ticket.key, ticket.key)):
            if now >= cached.session.expires_at:
                await self._expired(cached, client_ip)
                return None
            if not await self._maybe_touch(cached, now):
                self._cache.pop(store_key, None)
                await self._lapsed(ticket, now, client_ip)
                return None
            self.cache_hits += 1
            return cached
        self.cache_misses += 1
        if self.config.cache_ttl <= 0:
            return await self._fetch(ticket, store_key, cached, now, client_ip, -1)
        generation = self._generation()
        flight = self._inflight.get(store_key)
        if (flight is None or flight[2] != generation or generation < 0
                or not hmac.compare_digest(flight[0].key, ticket.key)):
            task = asyncio.ensure_future(self._fetch(ticket, store_key, cached, now, client_ip, generation))
            self._inflight[store_key] = flight = (ticket, task, generation)
            task.add_done_callback(functools.partial(self._landed, store_key))
        # Shielded: a request that goes away must not cancel the read the others are waiting for.
        return await asyncio.shield(flight[1])

    def _landed(self, store_key: str, done: asyncio.Future[LoadedSession | None]) -> None:
        flight = self._inflight.get(store_key)
        if flight is not None and flight[1] is done:
            del self._inflight[store_key]
        if not done.cancelled():
            done.exception()  # retrieved here, so an error nobody awaited any more is not reported as lost

    async def _fetch(self, ticket: Ticket, store_key: str, cached: LoadedSession | None, now: float,
                     client_ip: ClientIP, generation: int) -> LoadedSession | None:
        """The store read behind `load` (a cache miss): unseal, decode, check expiry, slide, cache.

        `generation` was read before the store read: the copy is cached under it (never when negative),
        so a revocation that lands meanwhile anywhere makes it stale at once."""
        epoch = (self._epochs_cleared, self._epochs.get(store_key))
        blob = await self.store.get(store_key)
        if blob is None:
            self._cache.pop(store_key, None)
            await self._lapsed(ticket, now, client_ip)
            return None
        plain = unseal(ticket.key, blob, store_key.encode())
        if plain is None:
            return None
        try:
            session = Session.from_dict(json.loads(plain))
        except (ValueError, KeyError, TypeError):
            log.warning("dropping a session that does not decode", extra={"fields": {"reason": "decode"}})
            await self.store.delete(store_key)
            return None
        loaded = LoadedSession(session=session, ticket=ticket, store_key=store_key, generation=generation,
                               fetched_at=now,
                               touched_at=self._touched.get(store_key, cached.touched_at if cached else 0.0))
        if now >= session.expires_at:
            await self._expired(loaded, client_ip)
            return None
        if not await self._maybe_touch(loaded, now):
            await self._lapsed(ticket, now, client_ip)
            return None
        if (self.config.cache_ttl > 0 and generation >= 0
                and epoch == (self._epochs_cleared, self._epochs.get(store_key))):
            if len(self._cache) >= MAX_CACHE_ENTRIES:
                self._cache.clear()
            self._cache[store_key] = loaded
        return loaded

    async def save(self, loaded: LoadedSession) -> bool:
        """Persist a changed session (credentials refreshed, a site added) and tell other replicas.

        Only over a session that still exists: callers save a copy they loaded before a slow upstream
        call, and a logout or revocation meanwhile must win. False when the session is gone."""
        if not await self._write(loaded, replace=True):
            self._cache.pop(loaded.store_key, None)
            return False
        await self.store.publish(CHANNEL, loaded.store_key)
        return True

    async def drop_credential(self, loaded: LoadedSession, *sites: str, client_ip: str = "") -> bool:
        """The upstream says these sites' credentials are dead: remove them (audited); the session ends
        with its last credential. True when the session lives on. The one place a credential dies
        (the proxy, a UI call, the keepalive and the heartbeat all come here)."""
        for site in sites:
            loaded.session.credentials.pop(site, None)
            audit("expiry", outcome="upstream_invalid", user=loaded.session.user, site=site,
                  client_ip=_resolve(client_ip), session=loaded.public_id)
        if loaded.session.credentials and await self.save(loaded):
            return True
        await self.destroy(loaded)
        return False

    async def adopt(self, loaded: LoadedSession, previous: LoadedSession) -> None:
        """A fresh sign-in keeps the person's other sites (under the new id: no session fixation),
        each credential remembering whose account it is (per-site allow lists, Remote-User); then the
        previous session ends. The one place the portal and the UIs' own logins merge sessions."""
        own = set(loaded.session.credentials)
        for name, cred in previous.session.credentials.items():
            cred.extra.setdefault(OWNER, owner_record(previous.session.identity))
            loaded.session.credentials.setdefault(name, cred)
        # Indexed first, written, then checked: a "sign out everywhere" of an adopted account under
        # way either reads this session from the index (and ends it) or has already tombstoned and
        # deleted `previous`, which is checked here; either way the revocation wins.
        for site, user in self._accounts(loaded.session):  # "sign out everywhere" of those finds it too
            await self.store.index_add(self._account_index(site, user), loaded.store_key, self.config.max_age)
        if not await self.save(loaded) or await self._revoked(loaded.store_key):
            await self.destroy(loaded)
            raise SessionRevoked("signed out everywhere while signing in")
        if await self._revoked(previous.store_key) or await self.store.get(previous.store_key) is None:
            await self._forget_adopted(loaded, own)
        await self.destroy(previous)

    async def _forget_adopted(self, loaded: LoadedSession, own: set[str]) -> None:
        """The session the credentials came from ended (signed out everywhere, or out) while they were
        adopted: keep only this sign-in's own."""
        kept = {name: cred for name, cred in loaded.session.credentials.items() if name in own}
        dropped = self._accounts(loaded.session)
        loaded.session.credentials = kept
        dropped -= self._accounts(loaded.session)
        audit("logout", outcome="adoption_revoked", user=loaded.session.user, site=loaded.session.site,
              session=loaded.public_id, sites=sorted(site for site, _ in dropped))
        if not await self.save(loaded) or await self._revoked(loaded.store_key):
            await self.destroy(loaded)
            raise SessionRevoked("signed out everywhere while signing in")
        for site, user in dropped:
            await self.store.index_remove(self._account_index(site, user), loaded.store_key)

    async def _revoked(self, store_key: str) -> bool:
        return await self.store.get(tombstone_key(store_key)) is not None

    async def destroy(self, loaded: LoadedSession) -> None:
        """End the session on every worker and replica before returning (logout answers after this)."""
        self._bump(loaded.store_key)
        self._cache.pop(loaded.store_key, None)
        self._touched.pop(loaded.store_key, None)
        self._inflight.pop(loaded.store_key, None)
        await self.store.delete(loaded.store_key, marker_key(loaded.store_key))
        for site, user in self._accounts(loaded.session):
            await self.store.index_remove(self._account_index(site, user), loaded.store_key)
        await self.store.revoke(CHANNEL, loaded.store_key)

    async def destroy_everywhere(self, loaded: LoadedSession) -> int:
        """"Sign out everywhere": end every session signed in to an account this one holds, itself
        included; returns how many were still alive. O(sessions of those accounts).

        An account is a user name *at a site* (another site's "alice" may be someone else, and Pi-hole
        takes any typed name). The other sessions are sealed under keys only their cookies carry, so
        their upstream tokens cannot be read to sign those out upstream: they become unreachable here
        and lapse at the upstream's own timeout."""
        indexes = [self._account_index(site, user) for site, user in self._accounts(loaded.session)]
        done: set[str] = set()
        batch = {loaded.store_key}
        ended = 0
        # A sign-in racing with this indexes its session before writing it and checks for a tombstone
        # after (create, adopt). Each round tombstones, then deletes, then reads the indexes again, so
        # a session indexed before the last read is ended here, and one written after its tombstone
        # ends itself. (Deleting the index would also drop a sign-in indexed after the last read.)
        for _ in range(MAX_REVOKE_ROUNDS):   # a cap against a flood of sign-ins
            ended += await self._end(batch)
            done |= batch
            batch = set()
            for index in indexes:
                batch |= await self.store.index_members(index)
            batch -= done
            if not batch:
                break
        else:   # what the last read found is ended too; sign-ins indexed after it stay
            ended += await self._end(batch)
            done |= batch
            log.warning("sign out everywhere: sign-ins kept coming; the latest stay",
                        extra={"fields": {"rounds": MAX_REVOKE_ROUNDS}})
        for index in indexes:
            for key in done:
                await self.store.index_remove(index, key)
        for key in done:
            await self.store.revoke(CHANNEL, key)
        return ended

    async def _end(self, batch: set[str]) -> int:
        """Tombstone, then delete, these sessions (destroy_everywhere); how many were alive."""
        for key in batch:
            self._bump(key)
            self._cache.pop(key, None)
            self._touched.pop(key, None)
            self._inflight.pop(key, None)
            await self.store.set(tombstone_key(key), b"1", TOMBSTONE_TTL)
        ended = await self.store.delete(*batch)
        await self.store.delete(*(marker_key(m) for m in batch))
        return ended

    async def end_account(self, site: str, user: str, *, keep: str | None = None) -> int:
        """End every session signed in as `user` at `site` but `keep` (a store key), on every worker and
        replica before returning (a password change, a role change, an account disabled); how many."""
        index = self._account_index(site, user)
        members = await self.store.index_members(index) - {keep}
        return await self.end_keys(members, index=index)

    async def end_keys(self, members: set[str], *, index: str | None = None) -> int:
        """End these sessions (store keys), wherever they are cached; how many were still alive."""
        if not members:
            return 0
        ended = await self._end(members)   # tombstoned first, as destroy_everywhere does
        for key in members:
            if index is not None:
                await self.store.index_remove(index, key)
            await self.store.revoke(CHANNEL, key)
        return ended

    async def idle_expires_at(self, loaded: LoadedSession) -> float:
        left = await self.store.ttl(loaded.store_key)
        now = self.clock()
        return min(loaded.session.expires_at, now + (left if left is not None else 0.0))

    async def touch(self, loaded: LoadedSession) -> bool:
        """Slide the idle timeout now (heartbeat); False when the store no longer has the session."""
        loaded.touched_at = 0.0
        if await self._maybe_touch(loaded, self.clock()):
            return True
        self._cache.pop(loaded.store_key, None)
        return False

    # ---- internals -------------------------------------------------------------------------------

    async def _write(self, loaded: LoadedSession, *, replace: bool = False) -> bool:
        plain = json.dumps(loaded.session.to_dict(), separators=(",", ":")).encode()
        blob = seal(loaded.ticket.key, plain, loaded.store_key.encode())
        ttl = self._ttl(loaded, self.clock())
        if replace:
            if not await self.store.replace(loaded.store_key, blob, ttl):
                return False
        else:
            await self.store.set(loaded.store_key, blob, ttl)
        loaded.touched_at = self.clock()
        self._remember_touch(loaded.store_key, loaded.touched_at)
        return True

    def _ttl(self, loaded: LoadedSession, now: float) -> float:
        return max(0.001, min(self.config.idle_timeout, loaded.session.expires_at - now))

    async def _maybe_touch(self, loaded: LoadedSession, now: float) -> bool:
        """Slide the idle TTL when due; False when the store no longer has the session."""
        if now - loaded.touched_at < self.touch_interval:
            return True
        loaded.touched_at = now
        self._remember_touch(loaded.store_key, now)
        return await self.store.expire(loaded.store_key, self._ttl(loaded, now))

    def _remember_touch(self, store_key: str, when: float) -> None:
        if len(self._touched) >= MAX_CACHE_ENTRIES and store_key not in self._touched:
            self._touched.clear()
        self._touched[store_key] = when

    # ---- expiry audit ----------------------------------------------------------------------------
    #
    # The idle timeout is the store's TTL, so an idle session simply vanishes and the next request
    # only sees a valid ticket with nothing behind it. To audit that expiry with the person's name, a
    # small marker (user, site, absolute end; sealed with the ticket's key, no credential) lives until
    # the absolute end. The first request that finds the session gone consumes the marker and writes
    # the audit line; logout and revocation delete the marker, so they are never reported as expiry.

    async def _write_marker(self, loaded: LoadedSession, now: float) -> None:
        s = loaded.session
        key = marker_key(loaded.store_key)
        plain = json.dumps({"user": s.user, "site": s.site, "expires_at": s.expires_at,
                            "created_at": s.created_at, "client_ip": s.client_ip,
                            "auth_method": s.auth_method}).encode()
        ttl = max(0.001, s.expires_at - now) + MARKER_GRACE
        await self.store.set(key, seal(self.marker_keys[0], plain, key.encode()), ttl)

    async def _expired(self, loaded: LoadedSession, client_ip: ClientIP) -> None:
        """The absolute lifetime is over: end it and say so."""
        await self.destroy(loaded)
        audit("expiry", outcome="max_age", user=loaded.session.user, site=loaded.session.site,
              client_ip=_resolve(client_ip), session=loaded.public_id)

    async def _lapsed(self, ticket: Ticket, now: float, client_ip: ClientIP) -> None:
        """A validly signed ticket whose session is gone: audit the expiry once, if it was one."""
        key = marker_key(ticket.store_key)
        blob = await self.store.get(key)
        if blob is None or not await self.store.delete(key):
            return  # already reported, logged out, revoked, or never ours
        info = open_marker([*self.marker_keys, ticket.key], blob, key)
        if info is None:
            return
        try:
            user, site = str(info["user"]), str(info["site"])
            expires_at = float(info["expires_at"])  # type: ignore[arg-type]
        except (ValueError, KeyError, TypeError):
            return
        await self.store.index_remove(self._account_index(site, user), ticket.store_key)
        audit("expiry", outcome="max_age" if now >= expires_at else "idle_timeout", user=user, site=site,
              client_ip=_resolve(client_ip), session=public_id(ticket.store_key))

    @staticmethod
    def _account_index(site: str, user: str) -> str:
        """The set of sessions signed in as `user` at `site` (hashed: store keys never show names)."""
        named = json.dumps(["authproxy-account", site, user]).encode()
        return "u:" + b64e(hashlib.sha256(named).digest())

    @staticmethod
    def _accounts(session: Session) -> set[tuple[str, str]]:
        """Every (site, user name) this session is signed in as: its own sign-in, and the owners of the
        credentials it carries over from earlier sign-ins (`adopt`)."""
        found = {(session.site, session.user)}
        for name in session.credentials:
            identity = site_identity(session, name)
            if identity is not None and identity.username:
                found.add((name, identity.username))
        return found

    # ---- cookies ---------------------------------------------------------------------------------

    def cookie_attributes(self) -> dict[str, str | int | bool]:
        attrs: dict[str, str | int | bool] = {
            "path": "/",
            "secure": True,
            "httponly": True,
            "samesite": "Lax",
            "max_age": int(self.config.max_age),
        }
        if self.config.cookie_domain:
            attrs["domain"] = self.config.cookie_domain
        return attrs
