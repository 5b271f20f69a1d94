"""RedirectPolicy: oauth2-proxy's open-redirect corpus must all be rejected; real return URLs must pass."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest

from authproxy.redirects import MAX_REDIRECT_LENGTH, DomainRule, RedirectPolicy

CORPUS = Path(__file__).resolve().parents[1] / "data/openredirects.txt"

# Exactly the list from tests/data/README.md (and oauth2-proxy's validator_test.go).
ALLOWED = [
    "foo.bar",
    ".bar.foo",
    "port.bar:8080",
    ".sub.port.bar:8080",
    "anyport.bar:*",
    ".sub.anyport.bar:*",
    "www.whitelisteddomain.tld",
    "*.wildcard.sub.port.bar:8080",
    "*.wildcard.sub.anyport.bar:*",
    "*.wildcard.bar",
    "*.wildcard.proxy.foo.bar",
]


def _payloads() -> list[str]:
    return [unquote(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]


def test_corpus_is_complete() -> None:
    payloads = _payloads()
    assert len(payloads) == 559
    assert "" in payloads


@pytest.mark.parametrize("allow_http", [False, True])
@pytest.mark.parametrize("current_host", [None, "www.whitelisteddomain.tld"])
def test_every_open_redirect_payload_is_rejected(allow_http: bool, current_host: str | None) -> None:
    policy = RedirectPolicy(ALLOWED, allow_http=allow_http)
    accepted = [p for p in _payloads() if policy.validate(p, current_host=current_host) is not None]
    assert accepted == []


@pytest.mark.parametrize(
    "target",
    [
        "https://foo.bar/redirect",
        "https://foo.bar",
        "https://foo.bar?x=1",
        "https://foo.bar/path?q=1&r=%2Fx%20y#frag",
        "https://baz.bar.foo/redirect",
        "https://bar.foo/redirect",  # a leading dot also allows the domain itself
        "https://a.b.bar.foo/",
        "https://port.bar:8080/redirect",
        "https://foo.sub.port.bar:8080/redirect",
        "https://anyport.bar:8081/redirect",
        "https://anyport.bar/redirect",
        "https://a.sub.anyport.bar:4242/",
        "https://foo.wildcard.bar/redirect",
        "https://x.y.wildcard.bar/redirect",
        "https://foo.wildcard.sub.port.bar:8080/",
        "https://foo.wildcard.sub.anyport.bar:4242/",
        "https://www.whitelisteddomain.tld/#/dashboard",
        "https://foo.bar/login?rd=https%3A%2F%2Ffoo.bar%2Fx",  # a nested URL is fine when encoded
        "https://foo.bar/files/My%20Documents/",
    ],
)
def test_allowed_absolute_targets_are_kept(target: str) -> None:
    assert RedirectPolicy(ALLOWED).validate(target) == target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("HTTPS://FOO.BAR/Path?Q=A", "https://foo.bar/Path?Q=A"),  # scheme and host lower-cased only
        ("https://foo.bar:443/x", "https://foo.bar:443/x"),  # the default port, spelt out
        ("https://foo.bar/caf\u00e9?q=\u00fc#\u00e4", "https://foo.bar/caf%C3%A9?q=%C3%BC#%C3%A4"),
    ],
)
def test_absolute_targets_are_normalised(target: str, expected: str) -> None:
    assert RedirectPolicy(ALLOWED).validate(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        "http://foo.bar/redirect",  # https only by default
        "https://baz.foo.bar/redirect",  # foo.bar is exact
        "https://foo.bar.evil.corp/redirect",
        "https://evilbar.foo/",  # no dot boundary
        "https://evil.corp/redirect?rd=foo.bar",
        "https://foo.bar:3838/redirect",  # no port in the rule: default port only
        "https://foo.bar:80/redirect",
        "https://baz.bar.foo:3838/redirect",
        "https://port.bar/redirect",  # port rule: only that port
        "https://port.bar:3838/redirect",
        "https://foo.subport.bar:8080/redirect",
        "https://wildcard.bar/redirect",  # *. means subdomains only
        "https://wildcard.proxy.foo.bar/",  # only *.wildcard.proxy.foo.bar
        "https://user@foo.bar/",
        "https://foo.bar@evil.corp/",
        "https://foo.bar\\@evil.corp/",
        "https://foo.bar%2f@evil.corp/",
        "https://foo.bar%2eevil.corp/",
        "https://foo.bar./",
        "https:/foo.bar/",
        "https:///foo.bar/",
        "https:\\\\foo.bar/",
        "https://foo.bar:/x",
        "https://foo.bar:99999/",
        "https://foo.bar:+443/",
        "https://foo.bar//evil.corp",
        "https://foo.bar/a/../../b",
        "https://foo.bar/?next=//evil.corp",
        "https://fоo.bar/",  # Cyrillic o
        "https://foo。bar/",  # ideographic full stop
        "foo.bar/redirect",
        "proxy.wildcard.bar/redirect",
        "//foo.bar/redirect",
        "javascript:alert(1)",
        "JaVaScRiPt://foo.bar/%0aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "ftp://foo.bar/",
        " https://foo.bar/",
        "https://foo.bar/ ",
        "https://foo.bar/\u200b",
        "https://foo.bar/%0d%0aSet-Cookie:x=y",
        "https://foo.bar/%250d%250a",
        "https://foo.bar/%25252525252e",
        "",
        "https://foo.bar/" + "a" * MAX_REDIRECT_LENGTH,
    ],
)
def test_unsafe_absolute_targets_are_rejected(target: str) -> None:
    assert RedirectPolicy(ALLOWED).validate(target) is None


def test_http_only_when_allowed() -> None:
    policy = RedirectPolicy(ALLOWED, allow_http=True)
    assert policy.validate("http://foo.bar/x") == "http://foo.bar/x"
    assert policy.validate("http://foo.bar:443/x") is None  # default port of http is 80
    assert policy.validate("http://port.bar:8080/x") == "http://port.bar:8080/x"


@pytest.mark.parametrize(
    "target",
    ["/", "/redirect", "/a/b/?x=1&y=2", "/app?q=hello%20world#section-2", "/api?rd=https%3A%2F%2Fevil"],
)
def test_relative_paths_stay_on_the_current_host(target: str) -> None:
    policy = RedirectPolicy(ALLOWED)
    assert policy.validate(target) == target
    assert (
        policy.validate(target, current_host="App.Example.com:8443")
        == f"https://app.example.com:8443{target}"
    )
    assert (
        policy.validate(target, current_host="app.example", current_scheme="http")
        == f"http://app.example{target}"
    )


@pytest.mark.parametrize(
    "target",
    [
        "//evil.com",
        "/\\evil.com",
        "/ /evil.com",
        "/\t/evil.com",
        "/%09/evil.com",
        "/%20/evil.com",
        "/%2f%2fevil.com",
        "/%252f%252fevil.com",
        "/%5cevil.com",
        "/./\\evil.com",
        "/.//evil.com",
        "/./../../\\evil.com",
        "/a/%2e%2e/b",
        "/redirect?url=//evil.com",
        "/x\ny",
        "/x%0ay",
        "/x%00",
        "/x\x7f",
        "/\u2028",
    ],
)
def test_unsafe_relative_targets_are_rejected(target: str) -> None:
    assert RedirectPolicy(ALLOWED).validate(target, current_host="foo.bar") is None


@pytest.mark.parametrize("current_host", ["evil.com@foo.bar", "foo.bar/x", "foo.bar:http", "", "foo bar"])
def test_a_bad_current_host_never_produces_a_url(current_host: str) -> None:
    assert RedirectPolicy(ALLOWED).validate("/x", current_host=current_host) is None


def test_relative_non_ascii_is_percent_encoded() -> None:
    assert (
        RedirectPolicy(ALLOWED).validate("/caf\u00e9", current_host="foo.bar") == "https://foo.bar/caf%C3%A9"
    )


def test_no_rules_means_relative_only() -> None:
    policy = RedirectPolicy([])
    assert policy.validate("/x") == "/x"
    assert policy.validate("https://foo.bar/x") is None


def test_ipv6_literal_rules() -> None:
    policy = RedirectPolicy(["[::1]:8443"])
    assert policy.validate("https://[::1]:8443/x") == "https://[::1]:8443/x"
    assert policy.validate("https://[::2]:8443/x") is None


@pytest.mark.parametrize(
    ("rule", "parsed"),
    [
        ("Foo.Bar", DomainRule("foo.bar", apex=True, subdomains=False, port=None)),
        (".bar.foo", DomainRule("bar.foo", apex=True, subdomains=True, port=None)),
        ("*.w.bar:*", DomainRule("w.bar", apex=False, subdomains=True, port="*")),
        ("port.bar:8080", DomainRule("port.bar", apex=True, subdomains=False, port=8080)),
    ],
)
def test_rule_syntax(rule: str, parsed: DomainRule) -> None:
    assert DomainRule.parse(rule) == parsed


@pytest.mark.parametrize(
    "rule",
    [
        "",
        "https://foo.bar",
        "foo.bar/x",
        "foo.bar:80a",
        "foo.bar:0",
        "a@b",
        "*foo.bar",
        ".1.2.3.4",
        "foo..bar",
    ],
)
def test_bad_rules_fail_at_start_up(rule: str) -> None:
    with pytest.raises(ValueError, match="redirect domain"):
        RedirectPolicy([rule])
