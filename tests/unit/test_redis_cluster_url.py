"""`redis+cluster://` URLs: what is parsed, what is refused (naming the fix), and no password in errors."""

from __future__ import annotations

import time

import pytest

from authproxy.config.loader import load_config
from authproxy.errors import ConfigError, StoreError
from authproxy.sessions.redis import RedisStore
from authproxy.sessions.redis_cluster import ClusterSpec, ReplicaCounts, connected_replicas, short_of_replicas


def test_hosts_password_tls_and_wait_options() -> None:
    spec = ClusterSpec.parse("redis+cluster://:p%40ss@h1:7000,[::1]:7001,h3")
    assert spec.nodes == [("h1", 7000), ("::1", 7001), ("h3", 6379)]
    assert (spec.password, spec.username, spec.tls) == ("p@ss", None, False)
    assert (spec.wait_replicas, spec.wait_timeout_ms) == (1, 500)
    spec = ClusterSpec.parse("rediss+cluster://user:pw@h1:7000?wait_replicas=2&wait_timeout_ms=100")
    assert (spec.username, spec.password, spec.tls, spec.wait_replicas, spec.wait_timeout_ms) == (
        "user", "pw", True, 2, 100)
    assert ClusterSpec.parse("redis+cluster://h:1?wait_replicas=0").wait_replicas == 0


@pytest.mark.parametrize("bad", ["redis+cluster://", "redis+cluster://:pw@h:x", "redis+cluster://:pw@h:1/2",
                                 "redis+cluster://:pw@h:1?bogus=1", "redis+cluster://:pw@h:1?wait_replicas=-1",
                                 "redis+cluster://:pw@:1"])
def test_bad_urls_are_refused_without_the_password(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ClusterSpec.parse(bad)
    text = str(caught.value)
    assert "REDIS_URL" in text and "redis+cluster://" in text
    assert ":pw@" not in text


def test_a_hash_tag_in_the_prefix_is_refused() -> None:
    with pytest.raises(ConfigError, match="REDIS_PREFIX"):
        RedisStore("redis+cluster://h:7000", prefix="{ap}:")
    assert "hunter2" not in repr(RedisStore("redis+cluster://:hunter2@h:7000"))


def test_the_configuration_accepts_the_cluster_schemes() -> None:
    for url in ("redis+cluster://:pw@h1:7000,h2:7001", "rediss+cluster://:pw@h1:7000"):
        config = load_config({"UPSTREAM_URL": "http://127.0.0.1:9", "UPSTREAM_TYPE": "technitium",
                              "REDIS_URL": url, "SESSION_SECRET": "s" * 40, "TRUST_PROXY": "true"})
        assert config.session.redis_url is not None


def test_a_write_stands_only_when_every_connected_replica_confirmed() -> None:
    short_of_replicas(0, 0, 1, 500)   # no replica left (after a failover): nothing could undo it
    short_of_replicas(1, 1, 2, 500)   # the only replica confirmed
    with pytest.raises(StoreError, match="0 of 1 connected replica"):
        short_of_replicas(0, 1, 1, 500)   # a replica that could be promoted does not have it
    assert connected_replicas(b"# Replication\r\nrole:master\r\nconnected_slaves:2\r\n") == 2
    assert connected_replicas({"role": "master", "connected_slaves": 1}) == 1


def test_a_master_seen_without_replicas_is_not_asked_to_wait_until_looked_at_again() -> None:
    counts = ReplicaCounts(1)
    assert counts.plan("a:1") == (1, False)   # unknown: as many as wanted
    counts.saw("a:1", 0)
    assert counts.plan("a:1") == (0, False)   # none: the write alone, no WAIT for its whole timeout
    counts._seen["a:1"] = (0, time.monotonic() - ReplicaCounts.RECHECK)
    assert counts.plan("a:1") == (0, True)    # a second later: read its count again first
    counts.saw("a:1", 1)
    assert counts.plan("a:1") == (1, False)
