"""A real Redis Cluster for tests: 3 masters + 3 replicas of `redis-server --cluster-enabled yes`, joined by
`redis-cli --cluster create` (no fakes: slots, MOVED, failover elections behave as in production).

Fixtures:
    redis_cluster      function-scoped RedisCluster (tests kill its masters); stopped at teardown
    redis_cluster_url  URL of one session-scoped cluster, every master FLUSHALLed before the test

RedisCluster: .url (redis+cluster://[:pw@]h:p,h:p,h:p), .nodes (RedisServer each), .master_of(key) and
.replica_of(master) (the RedisServer), .wait_ok(), .client() (a sync redis-py client on one node).
`cluster-node-timeout` is 1000 ms, so a replica takes over about 2 s after its master dies, and
`cluster-require-full-coverage no`, so the other masters go on serving meanwhile.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from tests.support.procs import free_port
from tests.support.redis_server import RedisServer

__all__ = ["ClusterNode", "RedisCluster", "redis_cluster", "redis_cluster_url"]

NODE_TIMEOUT_MS = 1000


class ClusterNode(RedisServer):
    """One redis-server with cluster mode on (its own nodes.conf in its dir; its bus on a free port of its
    own rather than port + 10000)."""

    def _argv(self) -> list[str]:
        if not hasattr(self, "bus_port"):
            self.bus_port = free_port()
        argv = super()._argv() + ["--cluster-port", str(self.bus_port),
                                  "--cluster-enabled", "yes", "--cluster-config-file",
                                  str(self.dir / "nodes.conf"),
                                  "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                                  # As the README advises: a failed master's slots must not stop the rest.
                                  "--cluster-require-full-coverage", "no"]
        if self.password:
            argv += ["--masterauth", self.password]
        return argv


class RedisCluster:
    def __init__(self, base: Path, *, password: str | None = None, masters: int = 3) -> None:
        self.password = password
        self.nodes = [ClusterNode(base / f"node{i}", password=password, appendonly=True)
                      for i in range(masters * 2)]
        self.masters = masters

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"{n.host}:{n.port}" for n in self.nodes[:self.masters])
        return f"redis+cluster://{auth}{hosts}"

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is required for the cluster tests: apt-get install -y redis-tools",
                        pytrace=False)
        argv = [cli, "--cluster", "create", *(f"{n.host}:{n.port}" for n in self.nodes),
                "--cluster-replicas", "1", "--cluster-yes"]
        if self.password:
            argv += ["-a", self.password, "--no-auth-warning"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        self.wait_ok()
        return self

    def client(self, node: RedisServer | None = None) -> redis.Redis:
        node = node or next(n for n in self.nodes if n.running)
        return redis.Redis(host=node.host, port=node.port, password=self.password, socket_timeout=2)

    def _node_by_port(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def topology(self) -> list[dict[str, str]]:
        """CLUSTER NODES as seen by a running node: id, port, flags, master (id or '-'), slots."""
        with self.client() as c:
            text = c.execute_command("CLUSTER", "NODES")
        text = text.decode() if isinstance(text, bytes) else str(text)
        rows = []
        for line in text.strip().splitlines():
            parts = line.split()
            rows.append({"id": parts[0], "port": parts[1].split("@")[0].rsplit(":", 1)[1],
                         "flags": parts[2], "master": parts[3], "slots": " ".join(parts[8:])})
        return rows

    def master_of(self, key: str) -> RedisServer:
        with self.client() as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
        for row in self.topology():
            if "master" not in row["flags"] or "fail" in row["flags"]:
                continue
            for span in row["slots"].split():
                if span.startswith("["):
                    continue
                lo, _, hi = span.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    return self._node_by_port(int(row["port"]))
        raise AssertionError(f"no master serves slot {slot}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        rows = self.topology()
        master_id = next(r["id"] for r in rows if int(r["port"]) == master.port)
        return self._node_by_port(int(next(r["port"] for r in rows if r["master"] == master_id)))

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Until every running node says cluster_state:ok and every running replica's link to its master
        is up (its first sync done: before it, WAIT counts no replica)."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for node in self.nodes:
                if not node.running:
                    continue
                try:
                    with self.client(node) as c:
                        info = c.execute_command("CLUSTER", "INFO")
                        replication = c.info("replication")
                    states.append(b"cluster_state:ok" in info and (
                        replication.get("role") == "master" or replication.get("master_link_status") == "up"))
                except redis.RedisError:
                    states.append(False)
            if all(states):
                return
            assert time.monotonic() < deadline, f"cluster not ok after {timeout} s: {states}"
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), password="cluster-s3cret")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def _shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster-shared"), password="cluster-s3cret")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(_shared_cluster: RedisCluster) -> str:
    for row in _shared_cluster.topology():
        if "master" in row["flags"]:
            with _shared_cluster.client(_shared_cluster._node_by_port(int(row["port"]))) as c:
                c.flushall()
    return _shared_cluster.url
