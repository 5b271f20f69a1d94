"""Requests another site made the browser send, and which of them may still carry a credential.

authproxy turns an upstream token into something the browser sends by itself (the session cookie),
so the upstream's own defence against cross-site requests, "the caller must know the token", is
gone: Technitium takes every API call as a GET, and a page on any site could navigate the browser to
`/api/zones/delete?zone=...` (SameSite=Lax still sends the cookie on a top-level GET). So:

* `same_origin()` is the one origin comparison (HTTP requests, WebSocket handshakes, forward auth,
  sign-in and sign-out): scheme, host and port all count, as browsers compare origins (`http://host`
  is not `https://host`), with the scheme's default port dropped (`https://host:443` is `https://host`).
* `foreign()` says whether another origin's page is behind a request: the browser's `Sec-Fetch-Site`
  when it sends one (`same-site` counts, a sibling subdomain is another origin), else `Origin`, else
  `Referer`. Chromium sends no `Sec-Fetch-*` on a WebSocket handshake, so there `Origin` decides.
* `refused()` lets a foreign request through only as a plain navigation (GET/HEAD that opens a page:
  a link from a dashboard, a bookmark) to a path the adapter does not mark as its API, and refuses
  everything else: form posts, scripted calls, WebSocket handshakes, and navigations into the API.
  A request that nothing marks as foreign is the site's own, or a script's -- except on an API whose
  GETs change state (the adapter's `gets_change_state`), where something that looks like a browser
  loading a page must also show that it came from the site itself (`Sec-Fetch-Site: same-origin`, or
  the site's own `Origin`/`Referer`). Without that, a browser without Fetch Metadata (Safari before
  16.4) following a link from a `no-referrer` page, or any browser opening a link from outside it (a
  mail, a chat: `Sec-Fetch-Site: none`), would act on the API with the cookie. Scripts (no
  `Sec-Fetch-*`, no HTML `Accept`, no `Upgrade-Insecure-Requests`) pass as before.

`plainly_own()` answers the common case from the headers alone, so the proxy and `/verify` build and
compare origins only when a browser could be acting for someone else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from multidict import CIMultiDictProxy, MultiMapping, istr

if TYPE_CHECKING:
    from aiohttp import web

Headers = MultiMapping[str] | CIMultiDictProxy[str]
Refusal = Literal["cross_site", "api_page_load"]
"""Why `refused`: another origin's page, or a page load of a state-changing API that no same-origin
signal vouches for (a link from a `no-referrer` page in a browser without Fetch Metadata, or from
outside the browser)."""

FOREIGN_FETCH_SITES = ("cross-site", "same-site")
SAFE_METHODS = ("GET", "HEAD")
DEFAULT_PORTS = {"http": 80, "https": 443}
# A WebSocket URL's scheme as the page's origin has it (Traefik also says ws/wss in X-Forwarded-Proto).
WS_SCHEMES = {"ws": "http", "wss": "https"}
NAVIGATION_MODES = ("navigate", "nested-navigate")     # nested-navigate: Chromium 76-79's frames
_OWN, _FOREIGN = 1, -1
# Pre-folded names: `plainly_own` runs on every request, and istr lookups skip the case folding.
SEC_FETCH_SITE, SEC_FETCH_MODE = istr("Sec-Fetch-Site"), istr("Sec-Fetch-Mode")
ORIGIN, REFERER, ACCEPT, UPGRADE = istr("Origin"), istr("Referer"), istr("Accept"), istr("Upgrade")
UPGRADE_INSECURE = istr("Upgrade-Insecure-Requests")


def origin_of(url: str) -> str | None:
    """The origin of an http(s) URL, an `Origin` value or `scheme://Host` as browsers compare them:
    lower case, no user info, no default port. None for anything else (`null`, junk, a bad port)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port is None or port == DEFAULT_PORTS[scheme] else f"{scheme}://{host}:{port}"


def same_origin(url: str, own_origin: str) -> bool:
    """Whether `url` (an Origin or Referer value) is of `own_origin` (`scheme://host[:port]`)."""
    own = origin_of(own_origin)
    return own is not None and origin_of(url) == own


def _says(headers: Headers, own_origin: str) -> int:
    """_OWN, _FOREIGN, or 0 when no header says (a script, a typed URL: `Sec-Fetch-Site: none`)."""
    fetch_site = headers.get(SEC_FETCH_SITE)
    if fetch_site:   # the browser's own word wins over Origin/Referer
        site = fetch_site.strip().lower()
        return _OWN if site == "same-origin" else _FOREIGN if site in FOREIGN_FETCH_SITES else 0
    origin = headers.get(ORIGIN)
    if origin is not None:
        return _OWN if same_origin(origin, own_origin) else _FOREIGN
    referer = headers.get(REFERER)
    if referer:
        return _OWN if same_origin(referer, own_origin) else _FOREIGN
    return 0


def foreign(headers: Headers, own_origin: str) -> bool:
    """Whether a page of another origin than `own_origin` (`scheme://host[:port]`) made this request."""
    return _says(headers, own_origin) == _FOREIGN


def own_origin(request: web.Request) -> str:
    """This request's own origin as the browser names it (scheme and host as trusted proxies said)."""
    return f"{request.scheme}://{request.host}"


def from_other_site(request: web.Request) -> bool:
    """`foreign` for a request authproxy answers itself (sign-in, sign-out)."""
    return foreign(request.headers, own_origin(request))


def opens_page(headers: Headers) -> bool:
    """Whether a browser is loading a document (a link, a bookmark, a typed URL, a redirect, a form),
    not running a script's call: its Sec-Fetch-Mode when it sends one (browsers send it with
    Sec-Fetch-Site and -Dest: `navigate` goes with `document`/`iframe`), else what it accepts
    (`text/html`) or asks for (`Upgrade-Insecure-Requests: 1`, sent with navigations only)."""
    mode = headers.get(SEC_FETCH_MODE)
    if mode is not None:
        return mode.strip().lower() in NAVIGATION_MODES
    return "text/html" in headers.get(ACCEPT, "") or headers.get(UPGRADE_INSECURE) == "1"


def navigation(method: str, headers: Headers) -> bool:
    """A GET/HEAD that opens a page (a link, a bookmark, a redirect), not a script's, a form's or a
    WebSocket's request."""
    return method in SAFE_METHODS and UPGRADE not in headers and opens_page(headers)


def plainly_own(headers: Headers) -> bool:
    """True when `refused` cannot refuse the request, told from the headers alone: the browser says
    same-origin, or nothing says anything and nothing looks like a browser loading a page (a script).
    The proxy asks this first, on every request, before it builds what `refused` compares against."""
    fetch_site = headers.get(SEC_FETCH_SITE)
    if fetch_site is not None:
        return fetch_site == "same-origin" or fetch_site.strip().lower() == "same-origin"
    return ORIGIN not in headers and REFERER not in headers and not opens_page(headers)


def refused(method: str, headers: Headers, own_origin: str, upstream_path: str,
            api_path: Callable[[str], bool] | None) -> Refusal | None:
    """Why the request may not carry the sign-in, or None. `api_path` is the adapter's
    `gets_change_state` (None: no GET of this upstream changes anything)."""
    says = _says(headers, own_origin)
    if says == _FOREIGN:
        if not navigation(method, headers) or (api_path is not None and api_path(upstream_path)):
            return "cross_site"
        return None
    if says == _OWN or api_path is None or not opens_page(headers) or not api_path(upstream_path):
        return None
    return "api_page_load"


def explain(refusal: Refusal, site: str) -> str:
    """The 403 page's text for a refusal."""
    if refusal == "api_page_load":
        return (f"This opens {site}'s API as a page, with nothing to show that {site}'s own pages asked "
                "for it (a link on another site or outside the browser looks the same), and that API "
                f"acts on a plain link. Use {site}'s own pages, or call the API from a script.")
    return (f"This request to {site} came from another site, and authproxy does not let other sites "
            "act with your sign-in. Open the page directly instead.")


def request_refused(request: web.Request, upstream_path: str,
                    api_path: Callable[[str], bool] | None) -> Refusal | None:
    """`refused` for a request authproxy answers for its upstream (a UI's own sign-in or sign-out)."""
    if plainly_own(request.headers):
        return None
    return refused(request.method, request.headers, own_origin(request), upstream_path, api_path)
