"""Which requests another site made the browser send, and which of those may still carry a sign-in."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from authproxy.crosssite import foreign, navigation, plainly_own, refused

OWN = "https://dns.example.com"


def h(**headers: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})


@pytest.mark.parametrize(("headers", "expected"), [
    (h(), False),                                                        # a script, curl, an old client
    (h(Sec_Fetch_Site="same-origin"), False),
    (h(Sec_Fetch_Site="none"), False),                                   # typed into the address bar
    (h(Sec_Fetch_Site="cross-site"), True),
    (h(Sec_Fetch_Site="same-site"), True),                               # a sibling subdomain
    (h(Sec_Fetch_Site="same-origin", Origin="https://evil.example"), False),  # the browser's word wins
    (h(Origin="https://dns.example.com"), False),
    (h(Origin="https://DNS.example.com"), False),
    (h(Origin="http://dns.example.com"), True),                          # another scheme: another origin
    (h(Origin="https://dns.example.com:8443"), True),
    (h(Origin="null"), True),
    (h(Origin="https://evil.example"), True),
    (h(Referer="https://dns.example.com/page?x=1"), False),
    (h(Referer="https://user@dns.example.com/"), False),
    (h(Referer="https://dns.example.com.evil.example/"), True),
    (h(Referer="not a url"), True),
])
def test_foreign(headers: CIMultiDict[str], expected: bool) -> None:
    assert foreign(headers, OWN) is expected


def test_navigation_is_a_get_that_opens_a_page() -> None:
    assert navigation("GET", h(Sec_Fetch_Mode="navigate"))
    assert navigation("HEAD", h(Sec_Fetch_Mode="navigate"))
    assert not navigation("POST", h(Sec_Fetch_Mode="navigate"))          # a form posted from elsewhere
    assert not navigation("GET", h(Sec_Fetch_Mode="no-cors"))            # <img src>, <script src>
    assert not navigation("GET", h(Sec_Fetch_Mode="cors"))
    assert not navigation("GET", h(Sec_Fetch_Mode="websocket"))
    assert navigation("GET", h(Accept="text/html,application/xhtml+xml"))   # no Sec-Fetch-Mode: by Accept
    assert not navigation("GET", h(Accept="image/avif,image/webp"))


def test_refused_unless_a_navigation_to_a_page() -> None:
    def api(path: str) -> bool:
        return path.startswith("/api/")

    cross_nav = h(Sec_Fetch_Site="cross-site", Sec_Fetch_Mode="navigate")
    assert not refused("GET", cross_nav, OWN, "/", api)
    assert refused("GET", cross_nav, OWN, "/api/zones/delete", api)
    assert not refused("GET", cross_nav, OWN, "/api/zones/delete", None)   # an adapter without such GETs
    assert refused("POST", cross_nav, OWN, "/", api)
    assert refused("GET", h(Sec_Fetch_Site="cross-site", Sec_Fetch_Mode="no-cors"), OWN, "/", api)
    assert not refused("POST", h(Sec_Fetch_Site="same-origin", Sec_Fetch_Mode="cors"), OWN, "/api/x", api)
    assert not refused("POST", h(), OWN, "/api/zones/delete", api)   # no browser headers: not a browser


def test_plainly_own_never_says_own_when_foreign_could() -> None:
    cases = [h(), h(Sec_Fetch_Site="same-origin"), h(Sec_Fetch_Site="none"), h(Sec_Fetch_Site="cross-site"),
             h(Sec_Fetch_Site="same-site"), h(Origin="https://evil.example"), h(Origin=OWN),
             h(Referer="https://evil.example/"), h(Referer=OWN + "/x"), h(Origin="null")]
    for headers in cases:
        if plainly_own(headers):
            assert not foreign(headers, OWN), headers
    assert plainly_own(h()) and plainly_own(h(Sec_Fetch_Site="same-origin"))
    assert not plainly_own(h(Origin=OWN))   # needs the comparison
