"""FORWARD_AUTH_HOST / FORWARD_AUTH_PORT / FORWARD_AUTH_SECRET(_FILE): loaded like the other server settings,
and every mistake is a problem that names the variable and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from authproxy.config.loader import load_config
from authproxy.crypto import Secret
from authproxy.errors import ConfigError

OK = {"UPSTREAM_URL": "http://127.0.0.1:5380", "UPSTREAM_TYPE": "technitium", "TRUST_PROXY": "true"}
GOOD = "g" * 40


def problems(env: dict[str, str], config_file: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(env, config_file)
    return info.value.problems


def test_off_by_default() -> None:
    s = load_config(OK).server
    assert (s.forward_auth_host, s.forward_auth_port, s.forward_auth_secret) == ("127.0.0.1", None, None)
    assert not s.forward_auth_listener and not s.forward_auth_enabled


def test_from_the_environment(tmp_path: Path) -> None:
    s = load_config({**OK, "FORWARD_AUTH_PORT": "9001", "FORWARD_AUTH_HOST": "10.0.0.5",
                     "FORWARD_AUTH_SECRET": GOOD}).server
    assert (s.forward_auth_host, s.forward_auth_port, s.forward_auth_secret) == (
        "10.0.0.5",
        9001,
        Secret(GOOD),
    )
    assert s.forward_auth_listener and s.forward_auth_enabled
    assert GOOD not in repr(s)
    (tmp_path / "fa").write_text(GOOD + "\n")
    s = load_config({**OK, "FORWARD_AUTH_SECRET_FILE": str(tmp_path / "fa")}).server
    assert s.forward_auth_secret == Secret(GOOD) and s.forward_auth_enabled and not s.forward_auth_listener
    both = problems({**OK, "FORWARD_AUTH_SECRET_FILE": str(tmp_path / "fa"), "FORWARD_AUTH_SECRET": GOOD})
    assert len(both) == 1 and "FORWARD_AUTH_SECRET" in both[0] and "not both" in both[0]


def test_from_the_config_file_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / "fa").write_text(GOOD + "\n")
    toml = tmp_path / "authproxy.toml"
    toml.write_text(f'[server]\nforward_auth_host = "::1"\nforward_auth_port = 9001\n'
                    f'forward_auth_secret_file = "{tmp_path / "fa"}"\n')
    s = load_config(OK, toml).server
    assert (s.forward_auth_host, s.forward_auth_port, s.forward_auth_secret) == ("::1", 9001, Secret(GOOD))
    s = load_config({**OK, "FORWARD_AUTH_PORT": "9002", "FORWARD_AUTH_HOST": "127.0.0.1"}, toml).server
    assert (s.forward_auth_host, s.forward_auth_port) == ("127.0.0.1", 9002)


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"FORWARD_AUTH_HOST": "127.0.0.1"}, ("FORWARD_AUTH_HOST", "set FORWARD_AUTH_PORT")),
        ({"FORWARD_AUTH_PORT": "nine"}, ("FORWARD_AUTH_PORT", "whole number")),
        ({"FORWARD_AUTH_PORT": "70000"}, ("FORWARD_AUTH_PORT", "between 0 and 65535")),
        ({"FORWARD_AUTH_PORT": "8443"}, ("FORWARD_AUTH_PORT", "must differ from PORT", "9001")),
        ({"FORWARD_AUTH_PORT": "9001", "PORT": "9001"}, ("FORWARD_AUTH_PORT", "must differ from PORT")),
        (
            {"FORWARD_AUTH_SECRET": "short-secret"},
            ("FORWARD_AUTH_SECRET", "32 characters", "secrets.token_urlsafe"),
        ),
        (
            {"FORWARD_AUTH_SECRET": "with spaces " * 4},
            ("FORWARD_AUTH_SECRET", "printable ASCII", "X-Authproxy-Secret"),
        ),
        ({"FORWARD_AUTH_SECRET": "é" * 40}, ("FORWARD_AUTH_SECRET", "printable ASCII")),
        ({"FORWARD_AUTH_SECRET_FILE": "/nonexistent/fa"}, ("FORWARD_AUTH_SECRET_FILE", "cannot read")),
        (
            {"FORWARD_AUTH_PORT": "9001", "TRUST_PROXY": "false", "HTTPS_ENABLED": "true"},
            ("FORWARD_AUTH_PORT", "TRUST_PROXY=true"),
        ),
        (
            {"FORWARD_AUTH_SECRET": GOOD, "TRUST_PROXY": "false", "HTTPS_ENABLED": "true"},
            ("FORWARD_AUTH_SECRET", "TRUST_PROXY=true"),
        ),
    ],
)
def test_each_mistake_names_the_variable_and_the_fix(env: dict[str, str], needles: tuple[str, ...]) -> None:
    found = problems({**OK, **env})
    assert len(found) == 1, found
    for needle in needles:
        assert needle in found[0], (needle, found[0])


def test_config_file_mistakes(tmp_path: Path) -> None:
    toml = tmp_path / "authproxy.toml"
    toml.write_text(
        '[server]\nforward_auth_port = "soon"\nforward_auth_secret = "tiny"\nforward_auth_listen = 1\n'
    )
    found = problems(OK, toml)
    text = "\n".join(found)
    assert "[server].forward_auth_port" in text and "port number" in text
    assert "FORWARD_AUTH_SECRET" in text and "32 characters" in text
    assert "unknown option 'forward_auth_listen'" in text
    toml.write_text('[server]\nforward_auth_host = "127.0.0.1"\n')
    assert any("FORWARD_AUTH_HOST" in p and "FORWARD_AUTH_PORT" in p for p in problems(OK, toml))


def test_the_secret_is_never_repeated_in_a_problem() -> None:
    for value in ("tooShortForwardAuth", "has a space in it and is long enough too"):
        found = problems({**OK, "FORWARD_AUTH_SECRET": value})
        assert found and not any(value in p for p in found), found
