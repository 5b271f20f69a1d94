"""What authproxy adds to and takes from answers: HSTS settings, private caching, the upstream's Server."""

from __future__ import annotations

from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.config.loader import load_config
from authproxy.errors import ConfigError
from authproxy.proxy.headers import downstream_response_headers, private_cache_control
from authproxy.web.common import hsts_value

OK = {"UPSTREAM_URL": "http://127.0.0.1:5380", "UPSTREAM_TYPE": "technitium", "TRUST_PROXY": "true"}


def hsts_of(env: dict[str, str], config_file: Path | None = None) -> str:
    server = load_config({**OK, **env}, config_file).server
    return hsts_value(server.hsts_max_age, server.hsts_include_subdomains)


def test_hsts_defaults_to_one_year_without_subdomains() -> None:
    assert hsts_of({}) == "max-age=31536000"


@pytest.mark.parametrize(("env", "value"), [
    ({"HSTS_MAX_AGE": "0"}, ""),
    ({"HSTS_MAX_AGE": "1d"}, "max-age=86400"),
    ({"HSTS_MAX_AGE": "600", "HSTS_INCLUDE_SUBDOMAINS": "true"}, "max-age=600; includeSubDomains"),
    ({"HSTS_MAX_AGE": "0", "HSTS_INCLUDE_SUBDOMAINS": "true"}, ""),
])
def test_hsts_from_the_environment(env: dict[str, str], value: str) -> None:
    assert hsts_of(env) == value


def test_hsts_from_the_file_and_the_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "authproxy.toml"
    path.write_text('[server]\nhsts_max_age = "180d"\nhsts_include_subdomains = true\n')
    assert hsts_of({}, path) == "max-age=15552000; includeSubDomains"
    assert hsts_of({"HSTS_MAX_AGE": "0"}, path) == ""


def test_a_bad_hsts_max_age_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({**OK, "HSTS_MAX_AGE": "forever"})
    assert any(p.startswith("HSTS_MAX_AGE:") for p in info.value.problems)


@pytest.mark.parametrize(("upstream", "sent"), [
    ("no-store", "no-store"),
    ("private, max-age=60", "private, max-age=60"),
    ("no-cache, no-store, must-revalidate", "no-cache, no-store, must-revalidate"),
    ("max-age=3600", "private, max-age=3600"),                       # a shared cache could keep it
    ("public, max-age=31536000, immutable", "private, max-age=31536000, immutable"),
    ("PUBLIC,S-MAXAGE=600,max-age=60", "private, max-age=60"),
    ("s-maxage=600", "private"),
    ('private="Set-Cookie", max-age=5', "private, max-age=5"),    # only some fields private: not enough
    ('no-cache="Set-Cookie, X-A", public', 'private, no-cache="Set-Cookie, X-A"'),
    ('no-cache="a\\", public", max-age=1', 'private, no-cache="a\\", public", max-age=1'),
    ("no-cache", "private, no-cache"),
    ("", "private"),
])
def test_answers_made_with_a_credential_are_never_for_shared_caches(upstream: str, sent: str) -> None:
    assert private_cache_control(upstream) == sent


def test_the_upstreams_server_and_hsts_do_not_pass() -> None:
    items = [
        ("Server", "Kestrel"),
        ("Strict-Transport-Security", "max-age=63072000; includeSubDomains; preload"),
        ("strict-transport-security", "max-age=0"),
        ("Content-Type", "text/html"),
        ("X-Served-By", "a"),
    ]
    out: CIMultiDict[str] = CIMultiDict()
    downstream_response_headers(CIMultiDictProxy(CIMultiDict(items)), out)
    assert list(out.items()) == [("Content-Type", "text/html"), ("X-Served-By", "a")]
