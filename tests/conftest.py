"""Shared fixtures live in tests/support/*; each module is a pytest plugin listed here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

pytest_plugins = [
    "tests.support.procs",
    "tests.support.proxies",
    "tests.fakes.echo",
    "tests.fakes.webhook",
    "tests.support.redis_server",
    "tests.support.redis_cluster",
    "tests.support.technitium",
    "tests.support.gateway",
    "tests.support.apps",
    "tests.support.fakes_misc",
    "tests.support.browser",
    "tests.support.containers",
]


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests marked `both_loops` run on asyncio's loop and on uvloop (what `authproxy run` serves on:
    its transports are alike but not the same classes); the rest on asyncio's."""
    if item.get_closest_marker("both_loops") is not None:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
