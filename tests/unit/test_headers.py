"""Pure forwarding rules: hop-by-hop and identity headers, query/cookie surgery that keeps encodings,
and where the Technitium adapter puts (and takes away) the token."""

from __future__ import annotations

from typing import Any, cast

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.config.schema import SiteConfig
from authproxy.proxy.headers import (
    HOP_BY_HOP,
    IDENTITY_HEADERS,
    cookie_without,
    drop_carrying,
    location_without,
    set_forwarded,
    upstream_request_headers,
)
from authproxy.sessions.model import Credential
from authproxy.upstreams.base import UpstreamRequest
from authproxy.upstreams.query import query_pairs, query_with, query_without
from authproxy.upstreams.technitium import TechnitiumAdapter

TOKEN = "a1" * 32


def test_strip_hop_by_hop_including_those_connection_names() -> None:
    h = CIMultiDict(
        [
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("connection", "Upgrade"),
            ("Keep-Alive", "5"),
            ("Transfer-Encoding", "chunked"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("Proxy-Authorization", "Basic eA=="),
            ("X-Secret-Hop", "1"),
            ("Proxy-Connection", "close"),
            ("Trailer", "x"),
            ("Accept", "*/*"),
            ("Content-Type", "text/plain"),
        ]
    )
    assert sorted(upstream_request_headers(CIMultiDictProxy(h), drop_cookie="t").keys()) == \
        ["Accept", "Content-Type"]


def test_identity_headers_cover_what_upstreams_trust() -> None:
    for name in (
        "Remote-User",
        "Remote-Groups",
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Auth-Request-User",
        "X-Real-IP",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "Forwarded",
        "X-Authproxy-Token",
        "X-Original-URL",
        "X-Forwarded-Prefix",
    ):
        assert name.lower() in IDENTITY_HEADERS, name
    h = CIMultiDict(
        [("REMOTE-USER", "admin"), ("remote-user", "root"), ("x-real-ip", "6.6.6.6"), ("Accept", "x")]
    )
    assert list(upstream_request_headers(CIMultiDictProxy(h), drop_cookie="t").keys()) == ["Accept"]
    assert "connection" in HOP_BY_HOP and "authorization" not in HOP_BY_HOP


def test_client_address_and_identity_headers_never_go_upstream_in_any_spelling() -> None:
    # CDN-style client-IP headers (AdGuard's realIP reads CF-Connecting-IP/True-Client-IP before
    # X-Real-IP) and underscore spellings that CGI-style upstreams read as the dashed name.
    sent = CIMultiDict([("CF-Connecting-IP", "6.6.6.6"), ("True-Client-IP", "6.6.6.6"),
                        ("X-Cluster-Client-IP", "6.6.6.6"), ("Fastly-Client-IP", "6.6.6.6"),
                        ("Remote_User", "admin"), ("X_Forwarded_For", "6.6.6.6"), ("x_real_ip", "6.6.6.6"),
                        ("X_Custom_Thing", "kept"), ("Accept", "*/*")])
    out = upstream_request_headers(sent, drop_cookie="__Host-authproxy")
    assert list(out.items()) == [("X_Custom_Thing", "kept"), ("Accept", "*/*")]


def test_answer_headers_that_echo_the_credential_in_any_spelling_are_dropped() -> None:
    secret = "Zm9v+YmFy/c2lk=="
    h = CIMultiDict(
        [
            ("Content-Location", "/p?sid=Zm9v%2bYmFy%2fc2lk%3d%3d"),
            ("Refresh", "0; url=/p?sid=" + secret),
            ("Link", "</p?sid=Zm9v%2BYmFy/c2lk%3D%3D>; rel=canonical"),
            ("Link", "</style.css>; rel=preload"),
            ("Content-Type", "text/html"),
        ]
    )
    drop_carrying(h, secret)
    assert list(h.items()) == [("Content-Type", "text/html"), ("Link", "</style.css>; rel=preload")]
    assert location_without("/p?a=1&sid=Zm9v%2bYmFy%2fc2lk%3d%3d&b=2", secret) == "/p?a=1&b=2"
    assert location_without("/p?a=1&sid=Zm9v+YmFy/c2lk==", secret) == "/p?a=1"
    assert location_without("/p?a=1", secret) == "/p?a=1" and location_without("/p", secret) == "/p"


@pytest.mark.parametrize(("raw", "names", "expected"), [
    ("token=abc&x=1", ("token",), "x=1"),
    ("x=1&TOKEN=abc&Token=d&y=%2F", ("token",), "x=1&y=%2F"),
    ("%74oken=abc&x=a%20b+c", ("token",), "x=a%20b+c"),
    ("token&x=1&&", ("token",), "x=1"),
    ("tokens=1&my_token=2&token[]=3", ("token",), "tokens=1&my_token=2&token[]=3"),
    ("x=%2F%2f&y=%zz&z=%E2%9C%93", ("token",), "x=%2F%2f&y=%zz&z=%E2%9C%93"),
    ("", ("token",), ""),
    ("a=1&b=2", ("a", "B"), ""),
])
def test_query_without_keeps_everything_else_byte_for_byte(
    raw: str, names: tuple[str, ...], expected: str
) -> None:
    assert query_without(raw, names) == expected


def test_query_with_and_pairs() -> None:
    assert query_with("", "token", "a b/c&d") == "token=a%20b%2Fc%26d"
    assert query_with("x=%2F", "token", TOKEN) == f"x=%2F&token={TOKEN}"
    assert query_pairs("a=1&&b") == [("a", "a=1"), ("b", "b")]


def test_cookie_without() -> None:
    assert cookie_without("a=1; __Host-authproxy=v1.x.y.z; b=2", ("__Host-authproxy",)) == "a=1; b=2"
    assert cookie_without("__Host-authproxy=1", ("__Host-authproxy",)) == ""
    assert cookie_without(" a=1 ;; b = 2;", ("x",)) == "a=1; b = 2"
    assert cookie_without("__host-authproxy=1; x=1", ("__Host-authproxy",)) == "__host-authproxy=1; x=1"


def test_set_forwarded() -> None:
    h: dict[str, str] = {}
    set_forwarded(h, client_ip="192.0.2.1", proto="https", host="dns.example.com")
    assert h == {
        "X-Forwarded-For": "192.0.2.1",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "dns.example.com",
        "X-Real-IP": "192.0.2.1",
    }


# ---- the Technitium adapter's part ------------------------------------------------------------------------

def adapter(**options: Any) -> TechnitiumAdapter:
    site = SiteConfig(name="dns", upstream_url="http://dns:5380", type="technitium", options=options)
    return TechnitiumAdapter(site, cast(aiohttp.ClientSession, None))


def request(query: str = "", **headers: str) -> UpstreamRequest:
    return UpstreamRequest(
        method="GET", raw_path="/api/zones/list", raw_query=query, headers=CIMultiDict(headers)
    )


def bearer() -> Credential:
    return Credential(secret=TOKEN, extra={"mode": "bearer"})


def query_mode() -> Credential:
    return Credential(secret=TOKEN, extra={"mode": "query"})


def test_bearer_mode_replaces_the_clients_authorization_and_token() -> None:
    req = request("token=forged&x=%2F", Authorization="Bearer forged")
    req.headers.add("authorization", "Basic Zm9v")
    adapter().prepare_request(req, bearer())
    assert req.headers.getall("Authorization") == [f"Bearer {TOKEN}"]
    assert req.raw_query == "x=%2F"
    # Form bodies lose the same field (proxy/forms.py), as the adapter names it.
    assert "TOKEN" in adapter().credential_fields() and "zone" not in adapter().credential_fields()


def test_query_mode_puts_the_token_in_the_query_only() -> None:
    req = request("Token=forged&x=1", Authorization="Bearer forged")
    adapter().prepare_request(req, query_mode())
    assert "Authorization" not in req.headers
    assert req.raw_query == f"x=1&token={TOKEN}"


def test_without_a_credential_nothing_client_supplied_survives() -> None:
    req = request("token=forged", Authorization="Bearer forged")
    adapter().prepare_request(req, None)
    assert "Authorization" not in req.headers and req.raw_query == ""


@pytest.mark.parametrize(
    ("options", "version", "mode"),
    [
        ({}, "15.2", "bearer"),
        ({}, "14.3", "query"),
        ({}, "", "query"),
        ({}, "garbage", "query"),
        ({"api_version": "14"}, "15.2", "query"),
        ({"api_version": "15"}, "14.3", "bearer"),
        ({"token_mode": "query"}, "15.2", "query"),
        ({"token_mode": "bearer", "api_version": "14"}, "14.3", "bearer"),
    ],
)
def test_token_mode_follows_settings_then_the_reported_version(options: dict[str, str], version: str,
                                                               mode: str) -> None:
    assert adapter(**options)._mode_for(version) == mode


def test_invalid_token_envelope_inside_http_200() -> None:
    a = adapter()
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    dead = b'{"status":"invalid-token","errorMessage":"Invalid token or session expired."}'
    assert a.is_expired(200, headers, dead)
    assert not a.is_expired(200, headers, b'{"status":"ok","response":{"note":"invalid-token"}}')
    assert not a.is_expired(200, headers, b'{"status":"error","errorMessage":"invalid-token"}')
    assert not a.is_expired(404, headers, dead) and not a.is_expired(200, headers, b"invalid-token not json")
    assert not a.is_expired(200, headers, None)
    req = request()
    assert a.wants_body(req, 200, headers)
    assert not a.wants_body(req, 200, CIMultiDictProxy(CIMultiDict({"Content-Type": "application/zip"})))
    assert not a.wants_body(req, 200, CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json",
                                                                    "Content-Length": str(50 << 20)})))
    page = UpstreamRequest(method="GET", raw_path="/index.html", raw_query="", headers=CIMultiDict())
    assert not a.wants_body(page, 200, headers)


def test_the_upstream_token_cookie_never_reaches_the_browser() -> None:
    h = CIMultiDict([("Set-Cookie", f"token={TOKEN}; Path=/"), ("Set-Cookie", "theme=dark"),
                     ("Set-Cookie", f" Token={TOKEN}"), ("Content-Type", "text/html")])
    adapter().filter_response_headers(h)
    assert h.getall("Set-Cookie") == ["theme=dark"]
