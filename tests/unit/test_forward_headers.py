"""The one-pass header filters the proxy uses give exactly what the step-by-step rules give."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.proxy.headers import (
    HOP_BY_HOP,
    IDENTITY_HEADERS,
    cookie_without,
    downstream_response_headers,
    upstream_request_headers,
)

TICKET = "__Host-authproxy"


def strip_hop_by_hop(headers: CIMultiDict[str]) -> None:
    """Remove hop-by-hop headers, including any the Connection header names (RFC 9110 7.6.1)."""
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(token.strip().lower() for token in value.split(",") if token.strip())
    for name in list(headers.keys()):
        if name.lower() in HOP_BY_HOP or name.lower() in named:
            headers.popall(name, None)


def strip_names(headers: CIMultiDict[str], names: Iterable[str]) -> None:
    for name in names:
        headers.popall(name, None)


def step_by_step_request(src: CIMultiDict[str]) -> CIMultiDict[str]:
    """The rules as the proxy applied them before the one-pass version (kept as the reference)."""
    headers = CIMultiDict(src)
    strip_hop_by_hop(headers)
    strip_names(headers, IDENTITY_HEADERS)
    headers.popall("Host", None)
    cookies = [cookie_without(v, (TICKET,)) for v in headers.getall("Cookie", ())]
    headers.popall("Cookie", None)
    if any(cookies):
        headers["Cookie"] = "; ".join(c for c in cookies if c)
    return headers


REQUESTS = [
    [("Host", "dns.example"), ("Accept", "*/*"), ("Cookie", f"{TICKET}=v1.a.b")],
    [("Host", "x"), ("Cookie", f"theme=dark; {TICKET}=v1.a.b;lang=en"), ("Cookie", "  a=1 ;; b=2"),
     ("X-Custom", "1"), ("x-custom", "2"), ("Authorization", "Bearer t")],
    [("Connection", "keep-alive, X-Hop, Cookie"), ("X-Hop", "1"), ("Cookie", "a=1"), ("TE", "trailers"),
     ("Keep-Alive", "5"), ("Upgrade", "h2c"), ("Proxy-Authorization", "Basic eA=="), ("Accept", "x")],
    [("REMOTE-USER", "admin"), ("X-Forwarded-For", "6.6.6.6"), ("Forwarded", "for=1"), ("X-Real-IP", "1"),
     ("Cookie", f"{TICKET}=only"), ("Content-Type", "text/plain"), ("Content-Length", "3")],
    [],
]


@pytest.mark.parametrize("items", REQUESTS)
def test_request_headers_match_the_step_by_step_rules(items: list[tuple[str, str]]) -> None:
    src = CIMultiDictProxy(CIMultiDict(items))
    got = upstream_request_headers(src, drop_cookie=TICKET)
    assert list(got.items()) == list(step_by_step_request(CIMultiDict(items)).items())


@pytest.mark.parametrize("drop_length", [False, True])
def test_response_headers_lose_hop_by_hop_and_maybe_the_length(drop_length: bool) -> None:
    items = [("Content-Type", "text/plain"), ("Content-Length", "3"), ("Connection", "close, X-Trace"),
             ("X-Trace", "1"), ("Transfer-Encoding", "chunked"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
             ("Keep-Alive", "timeout=5")]
    reference = CIMultiDict(items)
    strip_hop_by_hop(reference)
    if drop_length:
        reference.popall("Content-Length", None)
    out: CIMultiDict[str] = CIMultiDict()
    downstream_response_headers(CIMultiDictProxy(CIMultiDict(items)), out, drop_length=drop_length)
    assert list(out.items()) == list(reference.items())
