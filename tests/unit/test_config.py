"""Configuration: environment (and legacy names), TOML file, *_FILE secrets, and every problem at once."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest

from authproxy.config.loader import ensure_session_secrets, load_config, parse_duration
from authproxy.config.schema import Config
from authproxy.crypto import Secret
from authproxy.errors import ConfigError

OK = {"UPSTREAM_URL": "http://127.0.0.1:5380", "UPSTREAM_TYPE": "technitium", "TRUST_PROXY": "true"}


def problems(env: dict[str, str], config_file: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(env, config_file)
    return info.value.problems


def one_problem(env: dict[str, str], *needles: str) -> str:
    found = problems(env)
    assert len(found) == 1, found
    for needle in needles:
        assert needle in found[0], (needle, found[0])
    return found[0]


# ---- defaults and the seeds' variable names --------------------------------------------------------------

def test_defaults() -> None:
    config = load_config(OK)
    assert config.auth_mode == "session" and config.session_mode
    s, sess, t = config.server, config.session, config.throttle
    assert (s.host, s.port, s.prefix, s.https_enabled, s.trust_proxy) == (
        "127.0.0.1",
        8443,
        "/_authproxy",
        False,
        True,
    )
    assert s.trusted_proxies == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert (sess.idle_timeout, sess.max_age, sess.secrets, sess.redis_url) == (900.0, 86400.0, (), None)
    assert (t.max_failures, t.window) == (5, 900.0)
    [site] = config.sites
    assert (site.name, site.type, site.upstream_url, site.hosts, site.path_prefix) == (
        "technitium", "technitium", "http://127.0.0.1:5380", (), "/")
    assert (site.timeout, site.connect_timeout) == (30.0, 5.0)


@pytest.mark.parametrize(("env", "mode"), [
    ({"AUTH_SESSION_ENABLED": "true"}, "session"),
    ({"USE_SESSION_AUTH": "1"}, "session"),
    ({"USE_HYBRID_AUTH": "yes", "TECHNITIUM_TOKEN": "t" * 64}, "hybrid"),
    ({"AUTH_MODE": "none", "UPSTREAM_SERVICE_TOKEN": "t" * 64}, "none"),
    ({"AUTH_MODE": "HYBRID", "TECHNITIUM_BACKGROUND_TOKEN": "t" * 64}, "hybrid"),
])
def test_auth_mode_and_legacy_switches(env: dict[str, str], mode: str) -> None:
    assert load_config({**OK, **env}).auth_mode == mode


def test_legacy_technitium_names() -> None:
    config = load_config(
        {
            "TECHNITIUM_URL": "http://dns:5380/",
            "TECHNITIUM_TOKEN": "abc" * 20,
            "TRUST_PROXY": "1",
            "TECHNITIUM_API_VERSION": "14",
            "WHITELIST_DOMAINS": "a.example, .b.example",
        }
    )
    [site] = config.sites
    assert site.type == "technitium" and site.upstream_url == "http://dns:5380"
    assert site.service_token == Secret("abc" * 20) and site.options == {"api_version": "14"}
    assert config.server.allowed_redirect_domains == ("a.example", ".b.example")
    assert (
        load_config({"TECHNITIUM_BASE_URL": "http://dns", "TRUST_PROXY": "1"}).sites[0].type == "technitium"
    )


@pytest.mark.parametrize(("text", "seconds"), [
    ("900", 900.0), ("15m", 900.0), ("24h", 86400.0), ("1.5s", 1.5), ("500ms", 0.5), ("2d", 172800.0),
    (" 7 s ", 7.0), (30, 30.0), (2.5, 2.5),
])
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5", "5 minutes", "1h30m", "", "5x", True, -1])
def test_bad_durations(text: str | float) -> None:
    assert parse_duration(text) is None


def test_durations_from_the_environment() -> None:
    config = load_config(
        {
            **OK,
            "SESSION_IDLE_TIMEOUT": "1s",
            "SESSION_MAX_AGE": "2s",
            "LOGIN_FAILURE_WINDOW": "1m",
            "UPSTREAM_TIMEOUT": "10",
            "UPSTREAM_CONNECT_TIMEOUT": "250ms",
        }
    )
    assert (config.session.idle_timeout, config.session.max_age, config.throttle.window) == (1.0, 2.0, 60.0)
    assert (config.sites[0].timeout, config.sites[0].connect_timeout) == (10.0, 0.25)


def test_upstream_timeouts_from_the_environment_apply_to_every_site_that_sets_none(tmp_path: Path) -> None:
    """UPSTREAM_TIMEOUT & co. are the defaults of every [[sites]] table too, not only of UPSTREAM_URL's site;
    a site's own `timeout`, `connect_timeout`, `idle_timeout` win."""
    path = tmp_path / "authproxy.toml"
    path.write_text(
        '[[sites]]\nname = "a"\ntype = "adguard"\nupstream_url = "http://127.0.0.1:3000"\n'
        'hosts = ["a.test"]\n'
        '[[sites]]\nname = "b"\ntype = "adguard"\nupstream_url = "http://127.0.0.1:3001"\n'
        'hosts = ["b.test"]\ntimeout = "90s"\nidle_timeout = "2m"\nconnect_timeout = 1\n',
        encoding="utf-8",
    )
    env = {"TRUST_PROXY": "true", "UPSTREAM_TIMEOUT": "75s", "UPSTREAM_CONNECT_TIMEOUT": "3s",
           "UPSTREAM_IDLE_TIMEOUT": "10m"}
    a, b = load_config(env, path).sites
    assert (a.timeout, a.connect_timeout, a.idle_timeout) == (75.0, 3.0, 600.0)
    assert (b.timeout, b.connect_timeout, b.idle_timeout) == (90.0, 1.0, 120.0)
    plain = load_config({"TRUST_PROXY": "true"}, path).sites[0]
    assert (plain.timeout, plain.connect_timeout, plain.idle_timeout) == (30.0, 5.0, 300.0)
    assert any("UPSTREAM_IDLE_TIMEOUT" in p for p in problems({**OK, "UPSTREAM_IDLE_TIMEOUT": "soon"}))


# ---- HTTPS is required in session modes -----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["session", "hybrid"])
def test_session_modes_refuse_to_start_without_https(mode: str) -> None:
    env = {"UPSTREAM_URL": "http://dns:5380", "UPSTREAM_TYPE": "technitium", "AUTH_MODE": mode,
           "UPSTREAM_SERVICE_TOKEN": "t" * 64}
    one_problem(env, f"AUTH_MODE={mode}", "HTTPS_ENABLED=true", "TRUST_PROXY=true")
    assert load_config({**env, "HTTPS_ENABLED": "true"}).server.https_enabled
    assert load_config({**env, "TRUST_PROXY": "true"}).server.trust_proxy


def test_auth_mode_none_needs_no_https_but_a_service_token() -> None:
    env = {"UPSTREAM_URL": "http://dns:5380", "UPSTREAM_TYPE": "technitium", "AUTH_MODE": "none"}
    one_problem(env, "UPSTREAM_SERVICE_TOKEN", "AUTH_MODE=none")
    assert load_config({**env, "UPSTREAM_SERVICE_TOKEN": "x" * 64}).auth_mode == "none"


def test_trust_proxy_needs_trusted_networks_and_valid_ones() -> None:
    found = problems({**OK, "TRUSTED_PROXIES": "10.0.0.0/8, nonsense ,300.1.1.1"})
    assert len(found) == 2 and all("TRUSTED_PROXIES" in p for p in found)
    config = load_config({**OK, "TRUSTED_PROXIES": "10.1.2.3 fd00::/8"})
    assert config.server.trusted_proxies == (
        ipaddress.ip_network("10.1.2.3/32"),
        ipaddress.ip_network("fd00::/8"),
    )


# ---- every problem at once, each naming the variable -----------------------------------------------------

def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {
            "AUTH_MODE": "ldap",
            "UPSTREAM_URL": "ftp://user:pw@dns",
            "UPSTREAM_TYPE": "nope",
            "PORT": "70000",
            "WORKERS": "many",
            "HTTPS_ENABLED": "perhaps",
            "SESSION_IDLE_TIMEOUT": "2h",
            "SESSION_MAX_AGE": "1h",
            "SESSION_SECRET": "short,also-short",
            "COOKIE_NAME": "bad name",
            "COOKIE_DOMAIN": "-bad-",
            "REDIS_URL": "http://redis",
            "LOG_LEVEL": "chatty",
            "LOG_FORMAT": "xml",
            "MAX_HEADER_SIZE": "10",
            "LOGIN_MAX_FAILURES": "0",
            "HTTPS_CERT_FILE": "/nonexistent/cert.pem",
        }
    )
    text = "\n".join(found)
    for name in ("AUTH_MODE", "UPSTREAM_URL", "UPSTREAM_TYPE", "PORT", "WORKERS", "HTTPS_ENABLED",
                 "SESSION_IDLE_TIMEOUT", "SESSION_SECRET", "COOKIE_NAME", "COOKIE_DOMAIN", "REDIS_URL",
                 "LOG_LEVEL", "LOG_FORMAT", "MAX_HEADER_SIZE", "LOGIN_MAX_FAILURES", "HTTPS_CERT_FILE",
                 "HTTPS_KEY_FILE"):
        assert name in text, name
    assert "AUTH_MODE: must be one of none, session, hybrid, otp, local" in text
    assert "must not contain credentials" in text
    assert "known types:" in text and "technitium" in text.split("known types:")[1]
    assert sum("SESSION_SECRET" in p for p in found) == 2  # one line per short key
    assert "pw" not in text.replace("pwd", "")  # the URL's password is not repeated back
    assert len(found) >= 18


def test_secrets_never_appear_in_problems() -> None:
    found = problems({**OK, "SESSION_SECRET": "tooShortSecretValue", "REDIS_URL": "http://:hunter2@redis"})
    assert not any("tooShortSecretValue" in p or "hunter2" in p for p in found)


def test_missing_upstream() -> None:
    one_problem({"TRUST_PROXY": "true"}, "UPSTREAM_URL", "UPSTREAM_TYPE")
    one_problem({"UPSTREAM_URL": "http://dns", "TRUST_PROXY": "true"}, "UPSTREAM_TYPE")


def test_allow_methods_lists_only_methods_refused_by_default(tmp_path: Path) -> None:
    assert load_config({**OK, "ALLOW_METHODS": "trace, Debug"}).sites[0].allow_methods == ("TRACE", "DEBUG")
    assert load_config(OK).sites[0].allow_methods == ()
    one_problem({**OK, "ALLOW_METHODS": "TRACE,GET"}, "ALLOW_METHODS", "'GET'", "TRACE")
    path = tmp_path / "authproxy.toml"
    path.write_text('[[sites]]\nname = "dns"\ntype = "technitium"\nupstream_url = "http://dns:5380"\n'
                    'allow_methods = ["track"]\n')
    assert load_config({"TRUST_PROXY": "true"}, path).sites[0].allow_methods == ("TRACK",)


def test_technitium_options_are_checked() -> None:
    one_problem({**OK, "TECHNITIUM_API_VERSION": "fifteen"}, "TECHNITIUM_API_VERSION")
    one_problem({**OK, "TECHNITIUM_TOKEN_MODE": "cookie"}, "TECHNITIUM_TOKEN_MODE", "bearer", "query")


# ---- secrets --------------------------------------------------------------------------------------------

def test_secret_files(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 40 + "\n")
    token_file = tmp_path / "token"
    token_file.write_text("t" * 64 + "\n")
    config = load_config(
        {**OK, "SESSION_SECRET_FILE": str(secret_file), "UPSTREAM_SERVICE_TOKEN_FILE": str(token_file)}
    )
    assert config.session.secrets == (Secret("s" * 40),)
    assert config.sites[0].service_token == Secret("t" * 64)
    one_problem(
        {**OK, "SESSION_SECRET_FILE": str(tmp_path / "missing")}, "SESSION_SECRET_FILE", "cannot read"
    )
    (tmp_path / "empty").write_text("\n")
    one_problem({**OK, "SESSION_SECRET_FILE": str(tmp_path / "empty")}, "SESSION_SECRET_FILE", "empty")
    one_problem({**OK, "SESSION_SECRET_FILE": str(secret_file), "SESSION_SECRET": "x" * 40}, "not both")


def test_secret_rotation_list() -> None:
    config = load_config({**OK, "SESSION_SECRET": f"{'n' * 40}, {'o' * 40}"})
    assert config.session.secrets == (Secret("n" * 40), Secret("o" * 40))
    assert "n" * 40 not in repr(config)


def test_generated_secret_is_private_and_reused(tmp_path: Path) -> None:
    config = load_config({**OK, "AUTHPROXY_DATA_DIR": str(tmp_path / "data")})
    first, created = ensure_session_secrets(config)
    assert created and len(first.session.secrets) == 1 and len(first.session.secrets[0].reveal()) >= 48
    path = tmp_path / "data" / "session_secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700
    again, created_again = ensure_session_secrets(config)
    assert not created_again and again.session.secrets == first.session.secrets
    given = load_config({**OK, "SESSION_SECRET": "g" * 40, "AUTHPROXY_DATA_DIR": str(tmp_path / "other")})
    assert ensure_session_secrets(given) == (given, False)
    assert not (tmp_path / "other").exists()


# ---- the TOML file ----------------------------------------------------------------------------------------

def test_config_file_with_several_sites(tmp_path: Path) -> None:
    path = tmp_path / "authproxy.toml"
    path.write_text("""
auth_mode = "session"
[server]
trust_proxy = true
port = 9000
trusted_proxies = ["10.0.0.0/8"]
[session]
idle_timeout = "30m"
max_age = 43200
[throttle]
max_failures = 3
[[sites]]
name = "dns"
type = "technitium"
upstream_url = "http://dns:5380/"
hosts = ["dns.example.com", "DNS2.example.com"]
[[sites]]
name = "dns-lab"
type = "technitium"
upstream_url = "https://lab:53443"
path_prefix = "/lab"
options = { token_mode = "query" }
""")
    config = load_config({}, path)
    assert config.server.port == 9000 and config.server.trust_proxy
    assert config.server.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    assert (config.session.idle_timeout, config.session.max_age, config.throttle.max_failures) == (
        1800.0,
        43200.0,
        3,
    )
    dns, lab = config.sites
    assert dns.hosts == ("dns.example.com", "dns2.example.com") and dns.upstream_url == "http://dns:5380"
    assert lab.path_prefix == "/lab" and lab.options == {"token_mode": "query"}
    # The environment wins over the file.
    assert load_config({"PORT": "9100"}, path).server.port == 9100


def test_config_file_problems(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("""
colour = "blue"
[server]
trust_proxy = true
prot = 1
[[sites]]
name = "a"
type = "technitium"
upstream_url = "http://a"
[[sites]]
name = "a"
type = "technitium"
upstream_url = "http://b"
[[sites]]
upstream_url = "http://c"
""")
    found = problems({}, path)
    text = "\n".join(found)
    assert "unknown option 'colour'" in text and "unknown option 'prot'" in text
    assert "used twice" in text and "already routed" in text and "missing name, type" in text
    assert "UPSTREAM_URL" in "\n".join(
        problems({"UPSTREAM_URL": "http://x", "UPSTREAM_TYPE": "technitium"}, path)
    )
    (tmp_path / "broken.toml").write_text("[server\n")
    assert any("not valid TOML" in p for p in problems({**OK}, tmp_path / "broken.toml"))
    assert any("cannot read" in p for p in problems({**OK}, tmp_path / "missing.toml"))


def test_config_is_frozen() -> None:
    config: Config = load_config(OK)
    with pytest.raises(AttributeError):
        config.server.port = 1  # type: ignore[misc]


def test_bad_return_url_domains_are_configuration_problems() -> None:
    """A typo in ALLOWED_REDIRECT_DOMAINS is reported by check-config, not a crash at start-up."""
    found = problems({**OK, "ALLOWED_REDIRECT_DOMAINS": "good.example.com,http://bad.example.com,*."})
    assert len([p for p in found if p.startswith("ALLOWED_REDIRECT_DOMAINS:")]) == 2
    assert load_config({**OK, "ALLOWED_REDIRECT_DOMAINS": ".example.com,*.wild.example.com,h:*"})


def test_the_readme_toml_example_loads(tmp_path: Path) -> None:
    """The several-sites example in the README is a working configuration, secrets from files included."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    example = readme.split("### TOML (several sites)", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "redis_url").write_text("redis://127.0.0.1:6379/0\n")
    (tmp_path / "secret").write_text("s" * 48 + "\n")
    example = example.replace("/run/secrets/redis_url", str(tmp_path / "redis_url"))
    example = example.replace("/run/secrets/authproxy_secret", str(tmp_path / "secret"))
    (tmp_path / "authproxy.toml").write_text(example)
    config = load_config({}, tmp_path / "authproxy.toml")
    assert [s.name for s in config.sites] == ["dns", "torrents"]
    assert config.session.redis_url is not None and config.session.redis_url.reveal().startswith("redis://")
    assert config.sites[1].path_prefix == "/qbt/" and config.sites[1].allowed_users == ("admin",)


def test_an_allow_list_is_refused_where_the_user_name_is_only_typed(tmp_path: Path) -> None:
    # Pi-hole has one account and checks only the password: anyone could type an allowed name.
    found = problems({**OK, "UPSTREAM_TYPE": "pihole", "ALLOWED_USERS": "alice"})
    assert any(p.startswith("ALLOWED_USERS") and "identity.username" in p for p in found), found
    load_config({**OK, "UPSTREAM_TYPE": "pihole"})                        # without the list: fine
    load_config({**OK, "UPSTREAM_TYPE": "adguard", "ALLOWED_USERS": "alice"})  # AdGuard checks the name
    fixed = tmp_path / "authproxy.toml"
    fixed.write_text('[[sites]]\nname = "pihole"\ntype = "pihole"\nupstream_url = "http://127.0.0.1:8080"\n'
                     'allowed_users = ["admin"]\n[sites.options.identity]\nusername = "admin"\n')
    load_config({"TRUST_PROXY": "true"}, fixed)                        # a fixed name is not typed
