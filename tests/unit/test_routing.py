"""Routing on the decoded path, and what the upstream is then sent of the raw one."""

from __future__ import annotations

from typing import Any, cast

import pytest

from authproxy.config.schema import SiteConfig
from authproxy.routing import Router, Site, has_dot_segments


def site(prefix: str, name: str = "s") -> Site:
    return Site(config=SiteConfig(name=name, upstream_url="http://127.0.0.1:1", type="technitium",
                                  path_prefix=prefix), adapter=cast(Any, None))


@pytest.mark.parametrize(("prefix", "raw", "upstream"), [
    ("/", "/a%20b/c", "/a%20b/c"),
    ("/qbt/", "/qbt/api/v2", "/api/v2"),
    ("/qbt/", "/qbt", "/"),
    ("/qbt", "/qbt/", "/"),
    ("/qbt/", "/qb%74/api/v2", "/api/v2"),             # the prefix spelled with an escape
    ("/qbt/", "/%71%62%74/api%2Fv2", "/api%2Fv2"),       # ...entirely; escapes after it are kept
    ("/qbt/", "/qbt%2Fapi/v2", "/api/v2"),              # the separator itself escaped
    ("/dns/ui/", "/dns%2Fui/x", "/x"),
    ("/é/", "/%C3%A9/x", "/x"),                         # a two-byte prefix character
])
def test_the_prefix_is_cut_however_it_is_spelled(prefix: str, raw: str, upstream: str) -> None:
    assert site(prefix).upstream_path(raw) == upstream


def test_routing_matches_the_decoded_path_longest_prefix_first() -> None:
    router = Router([site("/", "root"), site("/qbt/", "qbt")])
    assert router.match("h", "/qbt/x").name == "qbt"    # type: ignore[union-attr]
    assert router.match("h", "/qbt").name == "qbt"      # type: ignore[union-attr]
    assert router.match("h", "/qbtx").name == "root"    # type: ignore[union-attr]


@pytest.mark.parametrize(("path", "dots"), [
    ("/a/../b", True), ("/a/./b", True), ("/a/..", True), ("/.", True), ("/..", True),
    ("/a/..b", False), ("/.well-known/x", False), ("/a.b/c", False), ("/", False), ("/a/...", False),
])
def test_dot_segments(path: str, dots: bool) -> None:
    assert has_dot_segments(path) is dots
