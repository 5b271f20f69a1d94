"""Reading the original request from forward-auth headers: pure, strict, and never from the wrong source.

What each proxy sends (observed with the real binaries, tests/e2e): Caddy and Traefik always recompute
X-Forwarded-Method/-Proto/-Host/-Uri (and pass any client X-Original-URL on); nginx's subrequest
inherits every client header and only the ones its config sets are believable.
"""

from __future__ import annotations

import ipaddress

import pytest
from multidict import CIMultiDict

from authproxy import authz
from authproxy.config.schema import SiteConfig
from authproxy.sessions.model import OWNER, Credential, Identity, Session, owner_record, site_identity
from authproxy.web.forward_auth import (
    BadTarget,
    Target,
    detect,
    login_url,
    normalise_path,
    read_target,
)
from authproxy.web.middleware import peer_in

CADDY = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "dns.example.com",
         "X-Forwarded-Uri": "/api/zones?x=1&enc=%2Fa%20b", "Via": "1.1 Caddy"}
NGINX = {"X-Original-Method": "POST", "X-Original-URL": "https://dns.example.com/api/zones?x=1",
         "X-Forwarded-Method": "POST", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "dns.example.com",
         "X-Forwarded-Uri": "/api/zones?x=1"}


def headers(
    base: dict[str, str] | None = None, *extra: tuple[str, str], **replace: str | None
) -> CIMultiDict[str]:
    h: CIMultiDict[str] = CIMultiDict(base or {})
    for name, value in replace.items():
        name = name.replace("_", "-")
        h.popall(name, None)
        if value is not None:
            h[name] = value
    for name, value in extra:
        h.add(name, value)
    return h


# ---- the happy paths -------------------------------------------------------------------------------


def test_caddy_and_traefik_read_x_forwarded() -> None:
    for kind in ("caddy", "traefik"):
        target = read_target(headers(CADDY), kind)  # type: ignore[arg-type]
        assert target == Target("GET", "https", "dns.example.com", "/api/zones?x=1&enc=%2Fa%20b")
        assert target.url == "https://dns.example.com/api/zones?x=1&enc=%2Fa%20b"
        assert target.path == "/api/zones"


def test_nginx_reads_x_original_url() -> None:
    target = read_target(headers(NGINX), "nginx")
    assert target == Target("POST", "https", "dns.example.com", "/api/zones?x=1")
    only_original = headers({"X-Original-URL": "http://Dns.Example.com:8080?q=1"})
    # No method header: GET for everything else, but not known to be one (a form post from another
    # site must not pass as a link).
    assert read_target(only_original, "nginx") == Target("GET", "http", "dns.example.com:8080", "/?q=1",
                                                         method_known=False)


def test_nginx_recipes_that_send_only_x_forwarded_work_too() -> None:
    h = headers(NGINX, X_Original_URL=None, X_Original_Method=None)
    assert read_target(h, "nginx") == Target("POST", "https", "dns.example.com", "/api/zones?x=1")


@pytest.mark.parametrize(("proto", "expected"), [("ws", "http"), ("wss", "https"), ("HTTPS", "https")])
def test_traefik_websocket_schemes_mean_http_and_https(proto: str, expected: str) -> None:
    assert read_target(headers(CADDY, X_Forwarded_Proto=proto), "traefik").proto == expected


def test_host_case_port_and_ip_literals() -> None:
    for host, expected in (("DNS.Example.COM:8443", "dns.example.com:8443"), ("[::1]:8443", "[::1]:8443"),
                           ("127.0.0.1:9", "127.0.0.1:9"), ("my_app.lan", "my_app.lan")):
        assert read_target(headers(CADDY, X_Forwarded_Host=host), "caddy").host == expected


def test_method_defaults_to_get_and_accepts_extension_methods() -> None:
    assert read_target(headers(CADDY, X_Forwarded_Method=None), "caddy").method == "GET"
    assert read_target(headers(CADDY, X_Forwarded_Method="PROPFIND"), "caddy").method == "PROPFIND"
    assert read_target(headers(CADDY, X_Forwarded_Method="M-SEARCH"), "caddy").method == "M-SEARCH"


def test_non_ascii_in_the_uri_is_percent_encoded_like_a_browser_would() -> None:
    assert (
        read_target(headers(CADDY, X_Forwarded_Uri="/caf\u00e9?q=\u00fc"), "caddy").uri
        == "/caf%C3%A9?q=%C3%BC"
    )


# ---- refused: forged, malformed, ambiguous ---------------------------------------------------------


@pytest.mark.parametrize("host", [
    "evil.example/x", "good.example@evil.example", "a b.example", "evil.example:99999", "evil.example:0",
    "evil.example:", "evil.example:80:80", "[zz::]:1", "[::1", "good.example, evil.example", "-bad.example",
    "a..b", "example.com.", "evil.example\\x", "ex\u00e4mple.com", "x" * 300, "",
])
def test_forged_or_malformed_hosts_are_refused(host: str) -> None:
    with pytest.raises(BadTarget):
        read_target(headers(CADDY, X_Forwarded_Host=host), "caddy")
    if "/" not in host:  # in a URL, a "/" simply ends the host
        with pytest.raises(BadTarget):
            read_target(headers({"X-Original-URL": f"https://{host}/x"}), "nginx")


@pytest.mark.parametrize(
    "uri",
    [
        "//evil.example/x",
        "///evil.example",
        "http://evil.example/",
        "evil",
        "/a b",
        "/a\tb",
        "/a\\b",
        "/\\evil",
        "/x#frag",
        "/a\r\nSet-Cookie: x=1",
        "/a\nb",
        "/a\x00b",
        "/a\x7fb",
        "/a\u2028b",
        "/" + "a" * 9000,
        "",
    ],
)
def test_forged_or_malformed_uris_are_refused(uri: str) -> None:
    with pytest.raises(BadTarget):
        read_target(headers(CADDY, X_Forwarded_Uri=uri or " "), "caddy")


@pytest.mark.parametrize("proto", ["ftp", "javascript", "https, http", "http,https", "", "h ttp", "file"])
def test_bad_protos_are_refused(proto: str) -> None:
    with pytest.raises(BadTarget):
        read_target(headers(CADDY, X_Forwarded_Proto=proto or None), "caddy")


@pytest.mark.parametrize("method", ["get", "GET /x", "G\r\nET", "", "A" * 30, "GET,POST"])
def test_bad_methods_are_refused(method: str) -> None:
    if method == "":
        assert (
            read_target(headers(CADDY, X_Forwarded_Method=method), "caddy").method == "GET"
        )  # blank = unset
        return
    with pytest.raises(BadTarget):
        read_target(headers(CADDY, X_Forwarded_Method=method), "caddy")


@pytest.mark.parametrize(
    "name", ["X-Forwarded-Host", "X-Forwarded-Uri", "X-Forwarded-Proto", "X-Forwarded-Method"]
)
def test_duplicate_forwarded_headers_are_refused(name: str) -> None:
    with pytest.raises(BadTarget, match="more than once"):
        read_target(headers(CADDY, (name, CADDY[name])), "caddy")


@pytest.mark.parametrize("name", ["X-Original-URL", "X-Original-Method"])
def test_duplicate_original_headers_are_refused(name: str) -> None:
    with pytest.raises(BadTarget, match="more than once"):
        read_target(headers(NGINX, (name, NGINX[name])), "nginx")


def test_caddy_and_traefik_ignore_a_client_x_original_url() -> None:
    """Both pass client headers on; only their own X-Forwarded-* describe the request."""
    forged = headers(CADDY, X_Original_URL="https://other.example/admin", X_Original_Method="DELETE")
    for kind in ("caddy", "traefik"):
        assert read_target(forged, kind).url == "https://dns.example.com/api/zones?x=1&enc=%2Fa%20b"  # type: ignore[arg-type]


@pytest.mark.parametrize("change", [
    {"X_Forwarded_Host": "other.example.com"}, {"X_Forwarded_Uri": "/admin"}, {"X_Forwarded_Proto": "http"},
    {"X_Forwarded_Method": "DELETE"}, {"X_Original_URL": "https://dns.example.com/admin"},
    {"X_Original_Method": "GET"},
])
def test_nginx_refuses_forwarded_and_original_headers_that_disagree(change: dict[str, str]) -> None:
    """nginx's subrequest inherits client headers: a mismatch means a client added one family."""
    with pytest.raises(BadTarget, match="different requests"):
        read_target(headers(NGINX, **change), "nginx")


def test_a_method_only_one_family_names_is_not_a_mismatch() -> None:
    h = headers(NGINX, X_Original_Method=None)  # Authelia-style configs send the method, others don't
    assert read_target(h, "nginx").method == "GET"


@pytest.mark.parametrize("url", ["/relative/path", "dns.example.com/x", "//dns.example.com/x",
                                 "https://user:pw@dns.example.com/", "https:///x", "https://dns.example.com#x"])
def test_nginx_x_original_url_must_be_a_plain_absolute_url(url: str) -> None:
    with pytest.raises(BadTarget):
        read_target(headers({"X-Original-URL": url}), "nginx")


@pytest.mark.parametrize("kind", ["caddy", "traefik", "nginx"])
def test_missing_information_is_refused_not_guessed(kind: str) -> None:
    with pytest.raises(BadTarget):
        read_target(headers({"Host": "dns.example.com"}), kind)  # type: ignore[arg-type]
    with pytest.raises(BadTarget, match="without"):
        read_target(headers(CADDY, X_Forwarded_Host=None), kind)  # type: ignore[arg-type]
    with pytest.raises(BadTarget, match="without"):
        read_target(headers(CADDY, X_Forwarded_Proto=None), kind)  # type: ignore[arg-type]


def test_detect() -> None:
    assert detect(headers(NGINX)) == "nginx"
    assert detect(headers({"X-Original-Method": "GET"})) == "nginx"
    assert detect(headers(CADDY)) == "caddy"
    assert detect(headers(CADDY, Via="1.1 proxy, 2.0 Caddy")) == "caddy"
    assert detect(headers(CADDY, Via=None)) == "traefik"


# ---- peers, paths, login URL -----------------------------------------------------------------------

TRUSTED = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8"),
           ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(("peer", "trusted"), [
    ("127.0.0.1", True), ("10.1.2.3", True), ("fd00::5", True), ("::ffff:127.0.0.1", True),
    ("203.0.113.5", False), ("::1", False), ("192.168.1.1", False), (None, False), ("", False),
    ("not-an-ip", False), ("fe80::1%eth0", False),
])
def test_untrusted_peers(peer: str | None, trusted: bool) -> None:
    assert peer_in(peer, TRUSTED) is trusted
    assert peer_in(peer, ()) is False


@pytest.mark.parametrize(("raw", "routed"), [
    ("/", "/"), ("/a/b", "/a/b"), ("/a/b/", "/a/b/"), ("//a//b", "/a/b"), ("/a/./b", "/a/b"),
    ("/a/../b", "/b"), ("/../../etc", "/etc"), ("/a/b/..", "/a/"), ("/nas%2Fx", "/nas/x"),
    ("/x/%2e%2e/nas/", "/nas/"),
])
def test_route_path_is_what_proxies_route_on(raw: str, routed: str) -> None:
    assert Target("GET", "https", "h", raw + "?q=/../x").route_path == routed
    assert normalise_path(routed) == routed


def test_login_url_carries_the_whole_original_url() -> None:
    target = Target("GET", "https", "dns.example.com:8443", "/a?x=1&y=%20")
    assert login_url("/_authproxy", target) == (
        "https://dns.example.com:8443/_authproxy/login?rd=https%3A%2F%2Fdns.example.com%3A8443%2Fa%3Fx%3D1%26y%3D%2520")


# ---- the decision ----------------------------------------------------------------------------------


def _site(name: str = "dns", **kw: object) -> SiteConfig:
    return SiteConfig(name=name, upstream_url="http://up", type="technitium", **kw)  # type: ignore[arg-type]


def _session(user: str = "alice", sites: tuple[str, ...] = ("dns",), groups: tuple[str, ...] = ()) -> Session:
    return Session(user=user, site=sites[0], identity=Identity(username=user, groups=groups),
                   credentials={s: Credential(secret=f"{s}-token") for s in sites})


def test_decide() -> None:
    assert authz.decide(None, _site(), session_mode=True) == "login"
    assert authz.decide(_session(sites=("nas",)), _site(), session_mode=True) == "login"
    assert authz.decide(_session(), _site(), session_mode=True) == "allow"
    assert authz.decide(_session(), _site(allowed_users=("alice",)), session_mode=True) == "allow"
    assert authz.decide(_session("Alice"), _site(allowed_users=("alice",)), session_mode=True) == "allow"
    assert authz.decide(_session("bob"), _site(allowed_users=("alice",)), session_mode=True) == "deny"
    assert (
        authz.decide(_session(groups=("Admins",)), _site(allowed_groups=("admins",)), session_mode=True)
        == "allow"
    )
    assert (
        authz.decide(_session(groups=("users",)), _site(allowed_groups=("admins",)), session_mode=True)
        == "deny"
    )
    assert authz.decide(None, _site(), session_mode=False) == "deny"  # AUTH_MODE=none without a service token


def test_allow_lists_use_the_account_that_holds_the_sites_credential() -> None:
    """alice signed in to dns, then bob to nas in the same browser: the session was re-issued for bob."""
    session = _session("bob", sites=("nas", "dns"))
    session.credentials["dns"].extra[OWNER] = owner_record(Identity(username="alice", display_name="Alice"))
    dns, nas = _site("dns", allowed_users=("alice",)), _site("nas", allowed_users=("bob",))
    assert authz.decide(session, dns, session_mode=True) == "allow"
    assert authz.decide(session, nas, session_mode=True) == "allow"
    assert site_identity(session, "dns") == Identity(username="alice", display_name="Alice")
    assert site_identity(session, "nas").username == "bob"  # type: ignore[union-attr]
    assert site_identity(session, "nope") is None
