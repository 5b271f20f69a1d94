"""Every adapter type answers the whole contract of upstreams/base.py (the required methods at least)."""

from __future__ import annotations

import inspect

from authproxy.upstreams.base import UpstreamAdapter
from authproxy.upstreams.registry import ADAPTERS


def test_every_registered_adapter_is_a_complete_upstream_adapter() -> None:
    assert sorted(ADAPTERS) == [
        "adguard", "generic", "pihole", "qbittorrent", "technitium", "transmission", "truenas"
    ]
    for name, cls in ADAPTERS.items():
        assert issubclass(cls, UpstreamAdapter) and cls.name == name
        assert not inspect.isabstract(cls), f"{name} leaves {sorted(cls.__abstractmethods__)} unanswered"
