"""SHUTDOWN_TIMEOUT: a duration, from the environment or [server] shutdown_timeout, checked at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from authproxy.config.loader import load_config
from authproxy.config.schema import ServerConfig
from authproxy.errors import ConfigError

OK = {"UPSTREAM_URL": "http://127.0.0.1:5380", "UPSTREAM_TYPE": "technitium", "TRUST_PROXY": "true"}


def test_default_stays_below_the_container_runtimes_stop_timeout() -> None:
    server = load_config(OK).server
    assert server.shutdown_timeout == ServerConfig().shutdown_timeout == 8.0
    assert server.shutdown_timeout < 10  # docker/podman stop send SIGKILL after 10 s
    assert server.drain_timeout == 4.0   # aiohttp's two waits, half each


@pytest.mark.parametrize(("text", "seconds"), [("3", 3.0), ("2.5s", 2.5), ("500ms", 0.5), ("1m", 60.0)])
def test_from_the_environment(text: str, seconds: float) -> None:
    assert load_config({**OK, "SHUTDOWN_TIMEOUT": text}).server.shutdown_timeout == seconds


def test_from_the_config_file_and_the_environment_wins(tmp_path: Path) -> None:
    config_file = tmp_path / "authproxy.toml"
    config_file.write_text('[server]\nshutdown_timeout = "20s"\n')
    assert load_config(OK, config_file).server.shutdown_timeout == 20.0
    assert load_config({**OK, "SHUTDOWN_TIMEOUT": "5"}, config_file).server.shutdown_timeout == 5.0


@pytest.mark.parametrize(("text", "needle"), [
    ("soon", "must be a duration"), ("-1", "must be a duration"),
    ("0", "must be more than 0 and at most 3600s"), ("2h", "but it is 7200s"),
])
def test_bad_values_name_the_variable_and_the_fix(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({**OK, "SHUTDOWN_TIMEOUT": text})
    [problem] = info.value.problems
    assert problem.startswith("SHUTDOWN_TIMEOUT: ") and needle in problem, problem


def test_bad_value_in_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "authproxy.toml"
    config_file.write_text('[server]\nshutdown_timeout = "a while"\n')
    with pytest.raises(ConfigError) as info:
        load_config(OK, config_file)
    assert info.value.problems == [("[server].shutdown_timeout: must be a duration (900, 15m, 24h), "
                                    "but it is 'a while'")]
