"""Which requests another site made the browser send, and which of those may still carry a sign-in."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from authproxy.crosssite import foreign, navigation, opens_page, origin_of, plainly_own, refused, same_origin

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
    (h(Origin="https://dns.example.com:443"), False),                    # the default port, spelled out
    (h(Origin="http://dns.example.com:443"), True),                      # port 443, but plain http
    (h(Referer="https://dns.example.com:443/x"), False),
])
def test_foreign(headers: CIMultiDict[str], expected: bool) -> None:
    assert foreign(headers, OWN) is expected


@pytest.mark.parametrize(("url", "origin"), [
    ("https://dns.example.com", "https://dns.example.com"),
    ("HTTPS://DNS.Example.COM/", "https://dns.example.com"),
    ("https://dns.example.com:443/a?b#c", "https://dns.example.com"),
    ("http://dns.example.com:80", "http://dns.example.com"),
    ("http://dns.example.com:443", "http://dns.example.com:443"),
    ("https://dns.example.com:80", "https://dns.example.com:80"),
    ("https://dns.example.com:8443", "https://dns.example.com:8443"),
    ("https://user:pw@dns.example.com/", "https://dns.example.com"),
    ("https://[::1]:443", "https://[::1]"),
    ("https://[::1]:8443/x", "https://[::1]:8443"),
    (" https://dns.example.com ", "https://dns.example.com"),
    ("null", None),
    ("https://dns.example.com:99999", None),                             # no such port
    ("https://dns.example.com:x", None),
    ("wss://dns.example.com", None),                                     # not a page's origin
    ("file:///etc/passwd", None),
    ("dns.example.com", None),
    ("", None),
])
def test_origin_of_is_scheme_host_and_port_as_browsers_compare_them(url: str, origin: str | None) -> None:
    assert origin_of(url) == origin


def test_same_origin_needs_scheme_host_and_port_to_match() -> None:
    assert same_origin("https://dns.example.com", "https://dns.example.com:443")   # Host: with the port
    assert same_origin("https://dns.example.com:443", "https://DNS.example.com")
    assert not same_origin("http://dns.example.com", "https://dns.example.com")
    assert not same_origin("https://dns.example.com:8443", "https://dns.example.com")
    assert not same_origin("https://dns.example.com", "https://dns.example.com:8443")
    assert not same_origin("null", "null")                                       # nothing is "null"'s own
    assert not same_origin("junk", "junk")


def test_navigation_is_a_get_that_opens_a_page() -> None:
    assert navigation("GET", h(Sec_Fetch_Mode="navigate"))
    assert navigation("HEAD", h(Sec_Fetch_Mode="navigate"))
    assert not navigation("POST", h(Sec_Fetch_Mode="navigate"))          # a form posted from elsewhere
    assert not navigation("GET", h(Sec_Fetch_Mode="no-cors"))            # <img src>, <script src>
    assert not navigation("GET", h(Sec_Fetch_Mode="cors"))
    assert not navigation("GET", h(Sec_Fetch_Mode="websocket"))
    assert navigation("GET", h(Accept="text/html,application/xhtml+xml"))   # no Sec-Fetch-Mode: by Accept
    assert not navigation("GET", h(Accept="image/avif,image/webp"))
    assert navigation("GET", h(Upgrade_Insecure_Requests="1"))                 # sent with navigations only
    assert navigation("GET", h(Sec_Fetch_Mode="nested-navigate"))              # Chromium 76-79's frames
    # A WebSocket handshake is never one, whatever it accepts (Chromium sends no Sec-Fetch-* there).
    assert not navigation("GET", h(Upgrade="websocket", Accept="text/html"))


def test_opens_page_whatever_the_method() -> None:
    assert opens_page(h(Sec_Fetch_Mode="navigate", Sec_Fetch_Dest="document"))
    assert opens_page(h(Accept="text/html"))
    assert not opens_page(h(Sec_Fetch_Mode="cors", Accept="text/html"))       # the browser's word wins
    assert not opens_page(h(Accept="*/*"))                                    # curl
    assert not opens_page(h(Accept="application/json, text/javascript, */*; q=0.01"))   # jQuery's XHR
    assert not opens_page(h())


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


def api(path: str) -> bool:
    return path.startswith("/api/")


PAGE = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"  # what browsers accept on a page load
)


@pytest.mark.parametrize(("method", "headers", "expected"), [
    # Scripts: no Sec-Fetch-*, no HTML Accept, no Upgrade-Insecure-Requests (the README's curl).
    ("GET", h(), None),
    ("GET", h(Accept="*/*"), None),
    ("GET", h(Accept="application/json", Authorization="Bearer x"), None),
    ("POST", h(Accept="*/*", Content_Type="application/x-www-form-urlencoded"), None),
    # A browser without Fetch Metadata (Safari < 16.4), nothing telling where from (a no-referrer page).
    ("GET", h(Accept=PAGE, Upgrade_Insecure_Requests="1"), "api_page_load"),
    ("GET", h(Accept=PAGE), "api_page_load"),
    ("GET", h(Upgrade_Insecure_Requests="1"), "api_page_load"),
    ("POST", h(Accept=PAGE, Upgrade_Insecure_Requests="1"), "api_page_load"),
    # ... and with a same-origin signal: the UI's own link or form.
    ("GET", h(Accept=PAGE, Referer=OWN + "/index.html"), None),
    ("GET", h(Accept=PAGE, Referer="https://dns.example.com:443/"), None),
    ("POST", h(Accept=PAGE, Origin=OWN), None),
    # ... or a foreign one: refused as before.
    ("GET", h(Accept=PAGE, Referer="http://dns.example.com/"), "cross_site"),
    ("GET", h(Accept=PAGE, Origin="null"), "cross_site"),
    # A browser with Fetch Metadata: a link from outside it (mail, chat) or a typed URL says `none`.
    ("GET", h(Sec_Fetch_Site="none", Sec_Fetch_Mode="navigate", Sec_Fetch_Dest="document", Accept=PAGE),
     "api_page_load"),
    ("GET", h(Sec_Fetch_Site="same-origin", Sec_Fetch_Mode="navigate", Accept=PAGE), None),  # window.open
    ("GET", h(Sec_Fetch_Site="same-origin", Sec_Fetch_Mode="cors"), None),                    # the UI's fetch
    ("GET", h(Sec_Fetch_Site="none", Sec_Fetch_Mode="cors"), None),          # an extension's call: no page
    ("GET", h(Sec_Fetch_Site="cross-site", Sec_Fetch_Mode="navigate", Accept=PAGE), "cross_site"),
    ("GET", h(Sec_Fetch_Site="same-site", Sec_Fetch_Mode="navigate", Accept=PAGE), "cross_site"),
])
def test_page_loads_of_a_state_changing_api_need_a_same_origin_signal(
        method: str, headers: CIMultiDict[str], expected: str | None) -> None:
    assert refused(method, headers, OWN, "/api/zones/delete", api) == expected
    # Not the API, or an adapter whose GETs change nothing: only another site's page is refused.
    elsewhere = "cross_site" if foreign(headers, OWN) and not navigation(method, headers) else None
    assert refused(method, headers, OWN, "/index.html", api) == elsewhere
    assert refused(method, headers, OWN, "/api/zones/delete", None) == elsewhere


def test_plainly_own_never_says_own_when_refused_could() -> None:
    values = {"Sec-Fetch-Site": [None, "same-origin", "none", "cross-site", "same-site"],
              "Sec-Fetch-Mode": [None, "navigate", "cors", "websocket"],
              "Origin": [None, OWN, "http://dns.example.com", "https://evil.example", "null"],
              "Referer": [None, OWN + "/x", "https://evil.example/"],
              "Accept": [None, "*/*", PAGE],
              "Upgrade-Insecure-Requests": [None, "1"],
              "Upgrade": [None, "websocket"]}
    combos: list[dict[str, str]] = [{}]
    for name, options in values.items():
        combos = [{**c, name: v} if v is not None else c for c in combos for v in options]
    checked = 0
    for combo in combos:
        headers = CIMultiDict(combo)
        if plainly_own(headers):
            checked += 1
            for method in ("GET", "POST", ""):
                assert refused(method, headers, OWN, "/api/zones/delete", api) is None, combo
                assert not foreign(headers, OWN), combo
    assert checked > 100
    assert plainly_own(h()) and plainly_own(h(Accept="*/*")) and plainly_own(h(Sec_Fetch_Site="same-origin"))
    assert not plainly_own(h(Origin=OWN))                                   # needs the comparison
    assert not plainly_own(h(Accept=PAGE))                                  # a page load: needs the path
    assert not plainly_own(h(Sec_Fetch_Site="none"))
