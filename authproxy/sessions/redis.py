"""Redis session store (redis-py asyncio + a small client for the hot reads), for replicas sharing sessions.

URL forms: `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS), `unix://[:password@]/path?db=N`
and Sentinel `redis+sentinel://[[user]:password@]host:port[,host2:port2]/service_name[/db]` (the password is
the master's; add `?sentinel_password=...` when the sentinels require one too), and Redis Cluster
`redis+cluster://[[user]:password@]h1:p1[,h2:p2,...]` (`rediss+cluster://`; see redis_cluster.py: writes
wait for a replica, pub/sub on one agreed node, slot-aware hot reads).

Why it looks like this:
- Two clients. The hot reads of the session check — `get`, `expire` (PEXPIRE) and `ttl` (PTTL) — go
  through `resp.RespClient` (one pipelined connection, hiredis parsing, no per-call timer), because
  redis-py's asyncio client is what bounds the session check on a cache miss: see bench/verify.py and
  the README. Everything else (writes, locks, scripts, index sets, pub/sub, ping) stays on redis-py.
  Sentinel URLs (`redis+sentinel://`) use redis-py for everything, hot reads included: master discovery
  and failover are redis-py's job.
- Keys, index sets and channels all get `prefix`, so one Redis can serve several deployments. Keys and
  index names share Redis's one keyspace: never use one name for both.
- Short socket timeouts, one quick retry (it heals connections left stale by a Redis restart) and an
  overall deadline per call (DEFAULT_TIMEOUT, 0.5 s), so a dead or hung Redis fails fast with `StoreError`
  (→ 503) instead of hanging requests. The first timeout or lost connection opens a circuit breaker
  (breaker.py): later calls fail at once while a background PING probes every 0.1 s, and the first call
  after Redis answers it simply works. Not on a Cluster: there a failure is one master's, and the
  sessions on the others must go on being served (its failover bounds the wait for its own slots).
  (The hot-read client gets the same from one connection-wide watchdog, a retry of its idempotent
  commands and a short reconnect backoff.)
- `incr` and `index_add` are small Lua scripts: atomic and one round trip, so a counter can never be left
  without its expiry (which would lock someone out forever) and an index keeps the longer TTL.
- Pub/sub: one background listener PSUBSCRIBEs to `prefix*` and dispatches locally, so `subscribe()` can
  stay synchronous. It reconnects with backoff after errors; messages published while it was
  disconnected are lost (Redis pub/sub has no history).
- Revocation is confirmed, not just sent: pub/sub is asynchronous, and a replica that has not read the
  message yet would serve its cached copy after the logout answered. `revoke` PUBLISHes the message and
  a SYNC(nonce) behind it in one pipeline; Redis keeps each subscriber's messages in order, so a
  listener that reads the SYNC has dispatched the message, and it answers ACK(nonce). The revoker waits
  for as many ACKs as PUBLISH counted subscribers (its own listener too), at most `ack_timeout` s: two
  round trips and the slowest replica's loop turn on the logout, nothing on the request path. One whose
  listener is disconnected is not counted; its `generation()` is negative meanwhile (its cache holds
  nothing, it cannot hear revocations) and new on reconnect (what it cached before is re-read). What
  the guarantee cannot cover, and the timeout bounds (then a warning, and SESSION_CACHE_TTL is the
  limit): a replica hung or cut off without its connection failing yet, and other programs (or an
  older authproxy, during a rolling upgrade) subscribed to `prefix*`, which count but never confirm.
- Error messages never contain the password from the URL.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

from authproxy.config.schema import DEFAULT_REDIS_PREFIX
from authproxy.errors import ConfigError, StoreError
from authproxy.sessions.breaker import CircuitBreaker
from authproxy.sessions.redis_cluster import (
    CLUSTER_SCHEMES,
    ClusterSpec,
    ReplicaCounts,
    acked_write,
    connected_replicas,
    hosts_and_login,
    pubsub_client,
    short_of_replicas,
    wait_options,
)
from authproxy.sessions.resp import Endpoint, RedisReplyError, RespClient
from authproxy.sessions.resp import redact_url as _redact_url
from authproxy.sessions.store import InvalidationCallback

log = logging.getLogger("authproxy.store")

T = TypeVar("T")

# KEYS[1] counter; ARGV[1] window in ms, ARGV[2] amount. Sets the expiry on the first incr (or if it
# is somehow missing); a negative amount never creates the counter.
INCR_SCRIPT = """
local amount = tonumber(ARGV[2])
local existed = redis.call('EXISTS', KEYS[1]) == 1
if amount < 0 and not existed then
    return 0
end
local n = redis.call('INCRBY', KEYS[1], amount)
if not existed or redis.call('PTTL', KEYS[1]) == -1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"""

# KEYS[1] set; ARGV[1] member, ARGV[2] ttl in ms. Keeps whichever expiry is later.
INDEX_ADD_SCRIPT = """
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

_STORE_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)
# Failures that say "Redis is not answering" (they open the circuit), unlike an error reply.
_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, TimeoutError)
# How long one call may wait for Redis. Redis answers in well under a millisecond; this is what a hung
# Redis costs the requests already waiting, before the circuit opens and the next ones get 503 at once.
DEFAULT_TIMEOUT = 0.5

# `revoke`'s own channels (under the prefix, like every channel): a SYNC(nonce) follows the message, and
# each listener that reads it answers ACK(nonce).
SYNC_CHANNEL = "!sync"
ACK_CHANNEL = "!ack"
UNCONFIRMED_WARNING_EVERY = 60.0


@dataclass(slots=True)
class _Acks:
    """The confirmations of one revocation: `expected` is PUBLISH's subscriber count, once it is known
    (an ACK may arrive before PUBLISH's own reply)."""

    seen: int = 0
    expected: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def confirm(self) -> None:
        self.seen += 1
        if self.expected is not None and self.seen >= self.expected:
            self.done.set()


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "\\*?[]" else ch for ch in text)


class RedisStore:
    """`SessionStore` on Redis; `timeout` bounds every call (connect and each operation)."""

    name = "redis"

    def __init__(self, url: str, *, prefix: str = DEFAULT_REDIS_PREFIX, timeout: float = DEFAULT_TIMEOUT,
                 health_check_interval: int = 30, ack_timeout: float = 1.0) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self.ack_timeout = ack_timeout
        self._url = url
        self._health_check_interval = health_check_interval
        self._secrets: list[str] = []
        self._sentinel_spec: _SentinelSpec | None = None
        self._endpoint: Endpoint | None = None
        self._cluster_spec: ClusterSpec | None = None
        self._node_template: Endpoint | None = None  # Cluster: TLS and credentials of its hot-read clients
        self._acknowledged = False  # writes wait for replicas (WAIT): Cluster, or Sentinel with wait_replicas
        self._replica_counts = ReplicaCounts(0)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in CLUSTER_SCHEMES:
            self._cluster_spec = ClusterSpec.parse(url)
            self._acknowledged = self._cluster_spec.wait_replicas > 0
            self._replica_counts = ReplicaCounts(self._cluster_spec.wait_replicas)
            spec = self._cluster_spec
            self._node_template = dataclasses.replace(
                Endpoint.from_url(f"{'rediss' if spec.tls else 'redis'}://localhost/0"),
                username=spec.username, password=spec.password)
            self._secrets += [s for s in (self._cluster_spec.password,) if s]
            if "{" in prefix:
                raise ConfigError([(f"session: REDIS_PREFIX '{prefix}' holds a '{{': on a Redis Cluster "
                                    "that hash tag puts every key in one slot, on one master; remove it")])
        elif scheme == "redis+sentinel":
            self._sentinel_spec = _SentinelSpec.parse(url)
            self._acknowledged = self._sentinel_spec.wait_replicas > 0
            self._replica_counts = ReplicaCounts(self._sentinel_spec.wait_replicas)
            self._secrets += [s for s in (self._sentinel_spec.password,
                                          self._sentinel_spec.sentinel_password) if s]
        elif scheme in ("redis", "rediss", "unix"):
            if parts.password:
                self._secrets.append(unquote(parts.password))
            self._endpoint = Endpoint.from_url(url)
        else:
            raise ConfigError([(f"session: REDIS_URL must start with redis://, rediss://, unix://, "
                                f"redis+sentinel://, redis+cluster:// or rediss+cluster:// but it's "
                                f"configured as '{_redact_url(url)}'")])
        self._secrets += [quote(s, safe="") for s in self._secrets]
        self._secrets.sort(key=len, reverse=True)
        self.safe_url = _redact_url(url)
        self._client: aioredis.Redis | RedisCluster | None = None
        self._pub: aioredis.Redis | None = None  # pub/sub's client: _client, or (Cluster) one node's
        self._node_fast: dict[str, RespClient] = {}  # Cluster: a hot-read client per master, by host:port
        self._fast: RespClient | None = None  # hot reads; None with Sentinel and when not started
        self._sentinel: Sentinel | None = None
        self._incr: Any = None
        self._index_add: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribers: dict[str, list[InvalidationCallback]] = {}
        self._first_attempt = asyncio.Event()
        self._generation = -1  # the listener's connection count while it is subscribed, else -1
        self._connections = 0
        self._acks: dict[str, _Acks] = {}  # revocations waiting for confirmations, by nonce
        self._acking: set[asyncio.Future[Any]] = set()
        self._warned_at = -math.inf
        self._degraded_at = -math.inf
        self._breaker = CircuitBreaker(self._probe, label=f"redis store {self.safe_url}")

    def __repr__(self) -> str:
        return f"<RedisStore {self.safe_url!r} prefix={self.prefix!r}>"

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe. Redis being down is logged, not raised: ping() reports readiness."""
        if self._client is not None:
            return
        self._client = self._make_client()
        self._pub = self._client if isinstance(self._client, aioredis.Redis) else None
        self._incr = self._client.register_script(INCR_SCRIPT)
        self._index_add = self._client.register_script(INDEX_ADD_SCRIPT)
        self._first_attempt = asyncio.Event()
        self._listener = asyncio.create_task(self._listen_forever(), name="authproxy-redis-pubsub")
        if self._endpoint is not None:
            self._fast = RespClient(
                self._endpoint, label=f"redis store {self.safe_url}", timeout=self.timeout
            )
            with contextlib.suppress(StoreError):  # logged by the client; it retries on the next call
                await self._fast.connect()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout * 2 + 1):
                await self._first_attempt.wait()

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        for task in list(self._acking):
            task.cancel()
        await self._breaker.close()
        fast, self._fast = self._fast, None
        if fast is not None:
            await fast.close()
        for node_fast in self._node_fast.values():
            await node_fast.close()
        self._node_fast.clear()
        client, self._client = self._client, None
        pub, self._pub = self._pub, None
        sentinel, self._sentinel = self._sentinel, None
        with contextlib.suppress(*_STORE_ERRORS):
            if client is not None:
                await client.aclose()
            if pub is not None and pub is not client:
                await pub.aclose()
            if sentinel is not None:
                for sentinel_client in sentinel.sentinels:
                    await sentinel_client.aclose()

    async def ping(self) -> None:
        """Asks Redis even while the circuit is open (readiness wants the truth); an answer closes it."""
        if self._client is None:
            raise StoreError(f"redis store {self.safe_url} is not started (or already closed)")
        try:
            await self._probe()
        except _STORE_ERRORS as exc:
            detail = self._scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            if isinstance(exc, _UNREACHABLE) and self._cluster_spec is None:  # one node of a Cluster: not all
                self._breaker.trip(detail)
            raise StoreError(f"redis store {self.safe_url}: ping failed: {detail}") from None
        self._breaker.answered()

    # -- key/value -------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        fast = self._fast
        if fast is not None:
            return await self._hot("get", lambda: fast.get((self.prefix + key).encode()))
        if self._cluster_spec is not None:
            value = await self._node_read("get", key, lambda f, k: f.get(k),
                                          lambda c: c.get(self._name(key)))
        else:
            value = await self._do("get", lambda c: c.get(self._name(key)))
        return value if isinstance(value, bytes) or value is None else value.encode()

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if self._acknowledged:
            await self._acked("set", key, "SET", self._name(key), value, "PX", _ms(ttl))
            return
        await self._do("set", lambda c: c.set(self._name(key), value, px=_ms(ttl)))

    async def replace(self, key: str, value: bytes, ttl: float) -> bool:
        if self._acknowledged:
            return bool(await self._acked("replace", key, "SET", self._name(key), value, "PX", _ms(ttl),
                                          "XX"))
        written = await self._do("replace", lambda c: c.set(self._name(key), value, px=_ms(ttl), xx=True))
        return bool(written)

    async def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        if self._acknowledged:
            return bool(await self._acked("set_if_absent", key, "SET", self._name(key), value, "PX",
                                          _ms(ttl), "NX"))
        created = await self._do("set_if_absent",
                                 lambda c: c.set(self._name(key), value, px=_ms(ttl), nx=True))
        return bool(created)

    async def expire(self, key: str, ttl: float) -> bool:
        fast = self._fast
        if fast is not None:
            ms = _ms(ttl)
            return bool(await self._hot("expire", lambda: fast.pexpire((self.prefix + key).encode(), ms)))
        if self._cluster_spec is not None:
            ms = _ms(ttl)
            return bool(await self._node_read("expire", key, lambda f, k: f.pexpire(k, ms),
                                              lambda c: c.pexpire(self._name(key), ms)))
        return bool(await self._do("expire", lambda c: c.pexpire(self._name(key), _ms(ttl))))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        if self._cluster_spec is not None:  # one key at a time: they live in different slots
            return sum([int(await self._acked("delete", k, "DEL", self._name(k))) for k in keys])
        if self._acknowledged:
            return int(await self._acked("delete", keys[0], "DEL", *(self._name(k) for k in keys)))
        return int(await self._do("delete", lambda c: c.delete(*(self._name(k) for k in keys))))

    async def incr(self, key: str, window: float, amount: int = 1) -> int:
        if self._acknowledged:  # EVAL, not EVALSHA: a promoted replica has no script cache
            return int(await self._acked("incr", key, "EVAL", INCR_SCRIPT, 1, self._name(key),
                                         _ms(window), amount))
        return int(await self._do("incr", lambda c: self._incr(keys=[self._name(key)],
                                                                args=[_ms(window), amount])))

    async def ttl(self, key: str) -> float | None:
        fast = self._fast
        if fast is not None:
            ms = int(await self._hot("ttl", lambda: fast.pttl((self.prefix + key).encode())))
        elif self._cluster_spec is not None:
            ms = int(await self._node_read("ttl", key, lambda f, k: f.pttl(k),
                                           lambda c: c.pttl(self._name(key))))
        else:
            ms = int(await self._do("ttl", lambda c: c.pttl(self._name(key))))
        if ms == -2:
            return None
        return math.inf if ms == -1 else ms / 1000

    # -- index sets ------------------------------------------------------------------------------

    async def index_add(self, index: str, member: str, ttl: float) -> None:
        if self._acknowledged:
            await self._acked("index_add", index, "EVAL", INDEX_ADD_SCRIPT, 1, self._name(index), member,
                              _ms(ttl))
            return
        await self._do("index_add",
                       lambda c: self._index_add(keys=[self._name(index)], args=[member, _ms(ttl)]))

    async def index_remove(self, index: str, member: str) -> None:
        if self._acknowledged:
            await self._acked("index_remove", index, "SREM", self._name(index), member)
            return
        await self._do("index_remove", lambda c: c.srem(self._name(index), member))

    async def index_members(self, index: str) -> builtins.set[str]:
        members = await self._do("index_members", lambda c: c.smembers(self._name(index)))
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    async def keys(self, prefix: str) -> builtins.list[str]:
        pattern = self.prefix + prefix
        if self._cluster_spec is not None:  # names are `kind:{rest}` there (_name)
            kind, sep, rest = prefix.partition(":")
            pattern = f"{self.prefix}{kind}:{{{rest}" if sep else pattern

        async def scan(client: Any) -> builtins.list[str]:
            cut = len(self.prefix)
            found = [k async for k in client.scan_iter(match=_glob_escape(pattern) + "*", count=1000)]
            return [self._unname((k.decode() if isinstance(k, bytes) else str(k))[cut:]) for k in found]
        return await self._do("keys", scan)

    def _unname(self, name: str) -> str:
        """The store key of a Redis key (without the prefix): `_name` undone."""
        if self._cluster_spec is None:
            return name
        kind, sep, rest = name.partition(":")
        return f"{kind}:{rest[1:-1]}" if sep and rest.startswith("{") and rest.endswith("}") else name

    # -- pub/sub ---------------------------------------------------------------------------------

    async def publish(self, channel: str, message: str) -> None:
        await self._do("publish", lambda c: c.publish(self.prefix + channel, message), pub=True)

    def subscribe(self, channel: str, callback: InvalidationCallback) -> None:
        self._subscribers.setdefault(channel, []).append(callback)

    async def revoke(self, channel: str, message: str) -> None:
        nonce = secrets.token_hex(8)
        acks = self._acks[nonce] = _Acks()

        async def publish_both(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.publish(self.prefix + channel, message)
            pipe.publish(self.prefix + SYNC_CHANNEL, nonce)
            replies: list[Any] = await pipe.execute()
            return replies

        try:
            replies = await self._do("revoke", publish_both, pub=True)
            acks.expected = int(replies[1])
            if acks.seen < acks.expected:
                try:
                    async with asyncio.timeout(self.ack_timeout):
                        await acks.done.wait()
                except TimeoutError:
                    self._unconfirmed(acks)
        finally:
            del self._acks[nonce]

    def generation(self) -> int:
        return self._generation

    def _unconfirmed(self, acks: _Acks) -> None:
        now = time.monotonic()
        if now - self._warned_at < UNCONFIRMED_WARNING_EVERY:
            return
        self._warned_at = now
        log.warning("redis store %s: %d of %d subscribers to %r did not confirm a revocation within %g s "
                    "(an authproxy replica hung or cut off from Redis, an older authproxy, or another "
                    "program subscribed there); "
                    "such a replica may serve a signed-out session for up to SESSION_CACHE_TTL",
                    self.safe_url, (acks.expected or 0) - acks.seen, acks.expected, self.prefix + "*",
                    self.ack_timeout)

    def _confirm(self, nonce: str) -> None:
        """Answer a revocation's SYNC: everything published before it has been dispatched here."""
        task = asyncio.ensure_future(self._do("ack", lambda c: c.publish(self.prefix + ACK_CHANNEL, nonce),
                                              pub=True))
        self._acking.add(task)
        task.add_done_callback(self._confirmed)

    def _confirmed(self, task: asyncio.Future[Any]) -> None:
        self._acking.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("redis store %s: could not confirm a revocation (the revoker stops waiting): %s",
                      self.safe_url, task.exception())

    async def _listen_forever(self) -> None:
        """PSUBSCRIBE `prefix*` and dispatch; on any error log, back off, reconnect. Never dies."""
        pattern = _glob_escape(self.prefix) + "*"
        backoff = 0.1
        failing = False
        while True:
            pubsub = None
            try:
                pubsub = (await self._pub_client()).pubsub()
                await pubsub.psubscribe(pattern)
                async with asyncio.timeout(self.timeout + 0.5):
                    while True:  # wait for the confirmation: only then are publishes seen
                        msg = await pubsub.get_message(timeout=self.timeout)
                        if msg is not None and msg.get("type") == "psubscribe":
                            break
                if failing:
                    log.info("redis store %s: pub/sub listener reconnected", self.safe_url)
                failing, backoff = False, 0.1
                self._connections += 1
                self._generation = self._connections  # what was cached while deaf is stale now
                self._first_attempt.set()
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None and msg.get("type") == "pmessage":
                        self._on_message(msg["channel"], msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the listener must survive anything
                if not failing:
                    log.warning("redis store %s: pub/sub listener failed, reconnecting: %s",
                                self.safe_url, self._scrub(f"{type(exc).__name__}: {exc}"))
                failing = True
                self._first_attempt.set()
            finally:
                self._generation = -1  # deaf to revocations until subscribed again: cache nothing
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _on_message(self, raw_channel: bytes | str, raw_data: bytes | str) -> None:
        channel = raw_channel.decode() if isinstance(raw_channel, bytes) else raw_channel
        message = raw_data.decode() if isinstance(raw_data, bytes) else str(raw_data)
        if not channel.startswith(self.prefix):
            return
        channel = channel[len(self.prefix):]
        if channel == SYNC_CHANNEL:
            self._confirm(message)
            return
        if channel == ACK_CHANNEL:
            acks = self._acks.get(message)
            if acks is not None:
                acks.confirm()
            return
        for callback in list(self._subscribers.get(channel, ())):
            try:
                callback(message)
            except Exception:
                log.exception("store subscriber for channel %r failed", channel)

    # -- plumbing --------------------------------------------------------------------------------

    async def _pub_client(self) -> aioredis.Redis:
        """The client pub/sub goes through; on a Cluster, (re)chosen on each listener (re)connection."""
        client = self._client
        if isinstance(client, aioredis.Redis):
            return client
        assert client is not None and self._cluster_spec is not None
        async with asyncio.timeout(self.timeout * 2):
            if self._pub is not None:  # reconnecting: the node may have failed over
                await client.nodes_manager.initialize()
            chosen = await pubsub_client(client, self.prefix, self._cluster_spec, self._common())
        old, self._pub = self._pub, chosen
        if old is not None:
            with contextlib.suppress(Exception):
                await old.aclose()
        return chosen

    def _name(self, key: str) -> str:
        """The Redis key of a store key: the prefix and the key; on a Cluster with what follows the key's
        kind in a hash tag (`s:{id}`, `m:{id}`), so a session's blob and its end marker, which a check
        reads together, live in one slot: one master's failure then refuses only its own sessions."""
        if self._cluster_spec is None:
            return self.prefix + key
        kind, sep, rest = key.partition(":")
        return f"{self.prefix}{kind}:{{{rest}}}" if sep and rest and "{" not in rest else self.prefix + key

    async def _node_read(self, op: str, key: str, fast: Callable[[RespClient, bytes], Awaitable[Any]],
                         slow: Callable[[Any], Awaitable[T]]) -> Any:
        """A hot read on a Cluster: straight to the key's master through a small client of its own (the
        slot map is redis-py's); on MOVED/ASK, a node that fails or one not known yet, through redis-py's
        cluster client, which follows the cluster (and its failovers) and answers or fails properly."""
        client = self._client
        bkey = (self._name(key)).encode()
        if isinstance(client, RedisCluster) and self._node_template is not None:
            node = client.get_node_from_key(self._name(key)) if client.get_nodes() else None
            if node is not None:
                resp = self._node_fast.get(node.name)
                if resp is None:
                    endpoint = dataclasses.replace(self._node_template, host=node.host, port=int(node.port))
                    resp = self._node_fast[node.name] = RespClient(
                        endpoint, label=f"redis store {self.safe_url} node {node.name}", timeout=self.timeout)
                try:
                    return await fast(resp, bkey)
                except RedisReplyError as exc:
                    if not exc.reply.startswith(("MOVED", "ASK")):
                        raise
                except StoreError:
                    pass
        return await self._do(op, slow)

    async def _acked(self, op: str, key: str, *args: Any) -> Any:
        """A write that returns once `wait_replicas` replicas hold it (Cluster, or Sentinel when asked)."""
        cluster = self._cluster_spec
        counts = self._replica_counts
        if cluster is not None:
            return await self._do(op, lambda c: acked_write(c, self._name(key), args, cluster, counts,
                                                            self._degraded),
                                  extra=cluster.wait_timeout_ms / 1000)
        sentinel = self._sentinel_spec
        assert sentinel is not None

        async def with_wait(client: aioredis.Redis) -> Any:
            wait_for, recheck = counts.plan("master")
            if recheck:
                counts.saw("master", connected_replicas(await client.info("replication")))
                wait_for = min(sentinel.wait_replicas, counts.plan("master")[0])
            pipe = client.pipeline(transaction=False)  # one connection: WAIT counts this write
            pipe.execute_command(*args)
            if wait_for:
                pipe.execute_command("WAIT", wait_for, sentinel.wait_timeout_ms)
            replies = await pipe.execute()
            acked = connected = int(replies[1]) if wait_for else 0
            if acked < wait_for:
                connected = connected_replicas(await client.info("replication"))
                counts.saw("master", connected)
                short_of_replicas(acked, connected, sentinel.wait_replicas, sentinel.wait_timeout_ms)
            if connected < sentinel.wait_replicas:
                self._degraded(connected)
            return replies[0]

        return await self._do(op, with_wait, extra=sentinel.wait_timeout_ms / 1000)

    def _degraded(self, replicas: int) -> None:
        """A write was kept by a master with fewer replicas than wait_replicas (say so once a minute)."""
        now = time.monotonic()
        if now - self._degraded_at >= UNCONFIRMED_WARNING_EVERY:
            self._degraded_at = now
            log.warning("redis store %s: a master has %d replica(s), fewer than wait_replicas: writes there "
                        "are kept by that master alone until a replica is back", self.safe_url, replicas)

    def _common(self) -> dict[str, Any]:
        spec = self._cluster_spec or self._sentinel_spec
        # A WAIT may take its whole timeout; every other call is still bounded by _do's deadline.
        wait = spec.wait_timeout_ms / 1000 if self._acknowledged and spec is not None else 0.0
        return {
            "socket_timeout": self.timeout + wait,
            "socket_connect_timeout": self.timeout,
            # One fast retry: heals a pooled connection that died with a restarted Redis.
            "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
            "health_check_interval": self._health_check_interval,
        }

    def _make_client(self) -> aioredis.Redis | RedisCluster:
        common = self._common()
        if self._cluster_spec is not None:
            return self._cluster_spec.client(common)
        spec = self._sentinel_spec
        if spec is None:
            return aioredis.Redis.from_url(self._url, **common)
        sentinel_kwargs = {k: v for k, v in common.items() if k != "health_check_interval"}
        if spec.sentinel_password:
            sentinel_kwargs["password"] = spec.sentinel_password
        self._sentinel = Sentinel(spec.sentinels, sentinel_kwargs=sentinel_kwargs, **common)
        master: aioredis.Redis = self._sentinel.master_for(
            spec.service_name, db=spec.db, username=spec.username, password=spec.password)
        return master

    async def _do(self, op: str, call: Callable[[Any], Awaitable[T]], *, pub: bool = False,
                  extra: float = 0.0) -> T:
        """Run one command under the overall deadline (+ `extra`: a WAIT's own timeout); every failure
        becomes a password-free StoreError. `pub`: on pub/sub's client (the same one, except on a Cluster)."""
        client = self._pub if pub else self._client
        if client is None:
            raise StoreError(f"redis store {self.safe_url} is not started (or already closed)")
        self._breaker.check(op)
        try:
            async with asyncio.timeout(self.timeout + extra):
                return await call(client)
        except _STORE_ERRORS as exc:
            detail = self._scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            if isinstance(exc, _UNREACHABLE) and self._cluster_spec is None:  # one node of a Cluster: not all
                self._breaker.trip(detail)
            raise StoreError(f"redis store {self.safe_url}: {op} failed: {detail}") from None

    async def _hot(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """One of the session check's reads on the small pipelined client, behind the breaker: an error
        reply proves Redis is there; a timeout or lost connection opens the circuit."""
        self._breaker.check(op)
        try:
            return await call()
        except RedisReplyError:
            raise
        except StoreError as exc:
            self._breaker.trip(str(exc))
            raise

    async def _probe(self) -> None:
        """The circuit breaker's probe: one PING past the breaker, under the usual deadline."""
        client = self._client
        if client is None:
            raise StoreError("not started")
        async with asyncio.timeout(self.timeout):
            await client.ping()
            fast = self._fast
            if fast is not None:  # the hot-read connection too, at once rather than after its back-off
                fast.retry_now()
                await fast.execute("PING", idempotent=True)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class _SentinelSpec:
    """`redis+sentinel://[[user]:password@]h1:p1[,h2:p2]/service_name[/db][?sentinel_password=...]`
    (`&wait_replicas=N&wait_timeout_ms=M`: writes return once N replicas hold them, as on a Cluster)."""

    def __init__(self, sentinels: list[tuple[str, int]], service_name: str, db: int,
                 username: str | None, password: str | None, sentinel_password: str | None,
                 wait_replicas: int = 0, wait_timeout_ms: int = 500) -> None:
        self.sentinels = sentinels
        self.service_name = service_name
        self.db = db
        self.username = username
        self.password = password
        self.sentinel_password = sentinel_password
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms

    @classmethod
    def parse(cls, url: str) -> _SentinelSpec:
        def problem(why: str) -> ConfigError:
            return ConfigError([(f"session: REDIS_URL {why}; expected redis+sentinel://[:password@]"
                                 f"host:port[,host2:port2]/service_name[/db] but it's configured as "
                                 f"'{_redact_url(url)}'")])

        parts = urlsplit(url)
        username, password, sentinels = hosts_and_login(parts.netloc, 26379, problem, "sentinel ")
        path = [unquote(p) for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise problem("must name the service (and optionally the db) in its path")
        try:
            db = int(path[1]) if len(path) == 2 else 0
        except ValueError:
            raise problem("has a db that is not a number") from None
        query = parse_qs(parts.query)
        unknown = set(query) - {"sentinel_password", "wait_replicas", "wait_timeout_ms"}
        if unknown:
            raise problem(f"has unknown query options {sorted(unknown)}")
        sentinel_password = query.get("sentinel_password", [None])[-1]
        wait_replicas, wait_timeout_ms = wait_options(query, problem, default_replicas=0)
        return cls(sentinels, path[0], db, username, password, sentinel_password, wait_replicas,
                   wait_timeout_ms)
