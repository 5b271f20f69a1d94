"""Shared fixtures live in tests/support/*; each module is a pytest plugin listed here."""

pytest_plugins = [
    "tests.support.procs",
    "tests.support.proxies",
    "tests.fakes.echo",
    "tests.support.redis_server",
    "tests.support.technitium",
    "tests.support.gateway",
    "tests.support.apps",
    "tests.support.fakes_misc",
    "tests.support.browser",
]
