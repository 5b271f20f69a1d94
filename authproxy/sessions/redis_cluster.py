"""What `RedisStore` needs for a Redis Cluster: the URL, the client, acknowledged writes, the pub/sub node.

`redis+cluster://[[user]:password@]h1:p1[,h2:p2,...][?wait_replicas=1&wait_timeout_ms=500]` (TLS:
`rediss+cluster://`). The hosts are where discovery starts; redis-py's cluster client learns the rest
(slots, replicas, failovers: MOVED/ASK and re-discovery are its job).

Why it looks like this:
- Every command the store sends touches one key (the Lua scripts included: a counter, or one index
  set); a delete of several keys is split per key. But a session check reads `s:<id>` and `m:<id>`
  together, so the store names keys `<kind>:{<rest>}` (RedisStore._name): a session's keys share the
  slot of its id, and one master's failure refuses only its own sessions. A `{...}` in REDIS_PREFIX
  would put every key in one slot (one master) and is refused.
- Acknowledged means replicated: Redis replicates asynchronously, so a master killed right after "OK"
  loses that write when its replica takes over. Writes that matter (sessions, their index, throttle
  counters, deletes, i.e. revocations) go out as `<command>` + `WAIT <wait_replicas> <timeout>` on one
  connection to the key's master, and the store returns only once `wait_replicas` replicas have it.
  When a connected replica does not confirm in time, the write stands but the call fails (503): the
  caller never tells someone "signed in" or "signed out" on a write a failover could undo. A master
  with fewer replicas than that (after a failover, until the old master returns as a replica) has
  nobody to fail over to: its writes are accepted once all the replicas it has confirmed (a warning
  a minute says so).
- Classic pub/sub, not sharded: the store needs one pattern subscription (`prefix*`), which sharded
  pub/sub (SSUBSCRIBE) cannot do, and classic messages reach every node. Every replica of authproxy
  listens and publishes on the same node — the master of the slot of `prefix + "!pubsub"` — because
  PUBLISH counts only that node's subscribers, and the revocation handshake (redis.py) waits for as
  many confirmations as PUBLISH counted. After a failover all follow the slot to its new master.
- The hot reads (GET, PEXPIRE, PTTL) are slot-aware: the store finds the key's master in redis-py's slot
  map and sends them through a small pipelined client of that master's own (resp.py); a MOVED/ASK reply,
  a failing node or one not known yet sends that read through redis-py's cluster client, which follows
  the cluster. bench/cluster_reads.py measures both paths.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from authproxy.errors import ConfigError, StoreError
from authproxy.sessions.resp import redact_url

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
PUBSUB_SLOT_KEY = "!pubsub"


def hosts_and_login(netloc: str, default_port: int, problem: Callable[[str], ConfigError],
                    kind: str = "") -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """The user, password and `host:port` list of a multi-host Redis URL (Cluster nodes, Sentinels);
    IPv6 hosts in brackets. `kind` names the hosts in the errors ("sentinel ")."""
    userinfo, _, hostlist = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_pw, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if has_pw else None
    hosts: list[tuple[str, int]] = []
    for item in filter(None, hostlist.split(",")):
        if item.startswith("["):  # [ipv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.lstrip(":")
        else:
            host, _, port_text = item.partition(":")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise problem(f"has a bad {kind}port in '{item}'") from None
        if not host:
            raise problem(f"names an empty {kind}host")
        hosts.append((host, port))
    if not hosts:
        raise problem(f"names no {kind}host")
    return username, password, hosts


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    nodes: list[tuple[str, int]]
    tls: bool
    username: str | None
    password: str | None
    wait_replicas: int
    wait_timeout_ms: int

    @classmethod
    def parse(cls, url: str) -> ClusterSpec:
        def problem(why: str) -> ConfigError:
            return ConfigError([(f"session: REDIS_URL {why}; expected redis+cluster://[:password@]"
                                 f"host:port[,host2:port2,...][?wait_replicas=1&wait_timeout_ms=500] but "
                                 f"it's configured as '{redact_url(url)}'")])

        parts = urlsplit(url)
        username, password, nodes = hosts_and_login(parts.netloc, 6379, problem)
        if parts.path.strip("/"):
            raise problem("has a path (a cluster has only db 0)")
        query = parse_qs(parts.query)
        unknown = set(query) - {"wait_replicas", "wait_timeout_ms"}
        if unknown:
            raise problem(f"has unknown query options {sorted(unknown)}")
        wait_replicas, wait_timeout_ms = wait_options(query, problem, default_replicas=1)
        return cls(nodes, parts.scheme.lower() == "rediss+cluster", username, password, wait_replicas,
                   wait_timeout_ms)

    def client(self, common: dict[str, Any]) -> RedisCluster:
        kwargs = {k: v for k, v in common.items() if k != "retry"}
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.nodes], ssl=self.tls,
                            username=self.username, password=self.password,
                            # MOVED after a failover or a resharding: re-read the slots and retry,
                            # quickly; a failover itself takes longer than the store's deadline (503).
                            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=2), **kwargs)


def wait_options(query: dict[str, list[str]], problem: Callable[[str], ConfigError], *,
                 default_replicas: int) -> tuple[int, int]:
    """`wait_replicas` and `wait_timeout_ms` of a REDIS_URL's query (Cluster, Sentinel)."""
    try:
        wait_replicas = int(query.get("wait_replicas", [str(default_replicas)])[-1])
        wait_timeout_ms = int(query.get("wait_timeout_ms", ["500"])[-1])
    except ValueError:
        raise problem("has a wait option that is not a number") from None
    if wait_replicas < 0 or wait_timeout_ms < 1:
        raise problem("needs wait_replicas >= 0 and wait_timeout_ms >= 1")
    return wait_replicas, wait_timeout_ms


async def pubsub_client(cluster: RedisCluster, prefix: str, spec: ClusterSpec,
                        common: dict[str, Any]) -> aioredis.Redis:
    """A plain client on the node every replica shares for pub/sub: the master of PUBSUB_SLOT_KEY's slot."""
    if not cluster.get_nodes():
        await cluster.initialize()
    node = _master(cluster, prefix + PUBSUB_SLOT_KEY)
    return aioredis.Redis(host=node.host, port=int(node.port), ssl=spec.tls, username=spec.username,
                          password=spec.password, **common)


class ReplicaCounts:
    """How many replicas each master was last seen with. A master left without replicas (after a
    failover, until the old one returns as its replica) is not asked to WAIT for one: WAIT would hold
    every write there for its whole timeout. Such a master is looked at again once a second."""

    RECHECK = 1.0

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self._seen: dict[str, tuple[int, float]] = {}

    def plan(self, node: str) -> tuple[int, bool]:
        """(replicas to WAIT for, whether to read the master's count first)."""
        count, at = self._seen.get(node, (self.wanted, 0.0))
        if count >= self.wanted:
            return self.wanted, False
        return count, time.monotonic() - at >= self.RECHECK

    def saw(self, node: str, count: int) -> None:
        self._seen[node] = (count, time.monotonic())


async def acked_write(cluster: RedisCluster, key: str, args: Sequence[Any], spec: ClusterSpec,
                      counts: ReplicaCounts, degraded: Callable[[int], None]) -> Any:
    """`args` on the master of `key`, then WAIT on the same connection: the reply once `wait_replicas`
    replicas hold it (or all the master has, see ReplicaCounts). After MOVED/ASK or a lost connection the
    slot map is read again and the write sent once more (to the new master after a failover): a lost
    reply may mean a counter counts one failure twice, never that a write is reported done when it is
    not."""
    if spec.wait_replicas == 0:
        return await cluster.execute_command(*args)
    for attempt in (1, 2):
        node = _master(cluster, key)
        conn = node.acquire_connection()
        try:
            reply, acked, wait_for, replicas = await _write_and_wait(conn, args, node.name, spec, counts)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError,
                redis.exceptions.MovedError, redis.exceptions.AskError, redis.exceptions.ClusterDownError,
                redis.exceptions.TryAgainError, redis.exceptions.ReadOnlyError):
            await conn.disconnect()  # a second reply may still be on its way: never reuse it
            node.release(conn)
            if attempt == 2:
                raise
            await cluster.nodes_manager.initialize()  # where the slot lives now
            continue
        except BaseException:
            await conn.disconnect()
            node.release(conn)
            raise
        node.release(conn)
        if acked < wait_for:
            short_of_replicas(acked, replicas, spec.wait_replicas, spec.wait_timeout_ms)
        if min(acked, replicas) < spec.wait_replicas:
            degraded(replicas)
        return reply
    raise AssertionError("unreachable")


async def _write_and_wait(conn: Any, args: Sequence[Any], name: str, spec: ClusterSpec,
                          counts: ReplicaCounts) -> tuple[Any, int, int, int]:
    """(reply, replicas that confirmed, replicas waited for, replicas the master has) on one connection."""
    wait_for, recheck = counts.plan(name)
    replicas = wait_for
    if recheck:
        await conn.send_command("INFO", "replication")
        replicas = connected_replicas(await conn.read_response())
        counts.saw(name, replicas)
        wait_for = min(spec.wait_replicas, replicas)
    if wait_for == 0:
        await conn.send_command(*args)
        return await conn.read_response(), 0, 0, replicas
    wait = ("WAIT", wait_for, spec.wait_timeout_ms)
    await conn.send_packed_command(conn.pack_commands([tuple(args), wait]))
    reply = await conn.read_response()
    # WAIT may take its whole timeout: the socket's own read timeout must not end it first.
    acked = int(await conn.read_response(timeout=spec.wait_timeout_ms / 1000 + (conn.socket_timeout or 0)))
    if acked < wait_for:  # how many could have confirmed?
        await conn.send_command("INFO", "replication")
        replicas = connected_replicas(await conn.read_response())
        counts.saw(name, replicas)
    return reply, acked, wait_for, replicas


def connected_replicas(info: object) -> int:
    """connected_slaves from INFO replication (raw text, or redis-py's parsed dict)."""
    if isinstance(info, dict):
        return int(info.get("connected_slaves", 0))
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("connected_slaves:"):
            return int(line.split(":", 1)[1])
    return 0


def short_of_replicas(acked: int, connected: int, wanted: int, timeout_ms: int) -> None:
    """Fewer replicas confirmed than `wanted`. When every replica the master has confirmed (none left
    after a failover, until the old master returns as a replica), no failover can undo the write: it
    stands (the caller warns). When a connected replica did not confirm in time, it could: StoreError."""
    if acked >= connected:
        return
    raise StoreError(f"written, but {acked} of {connected} connected replica(s) confirmed within "
                     f"{timeout_ms} ms (wait_replicas={wanted} in REDIS_URL)")


def _master(cluster: RedisCluster, key: str) -> ClusterNode:
    node = cluster.get_node_from_key(key)
    if node is None:
        raise redis.exceptions.ClusterDownError(f"no master known for the slot of {key!r}")
    return node
