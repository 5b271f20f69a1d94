"""Requests another site made the browser send, and which of them may still carry a credential.

authproxy turns an upstream token into something the browser sends by itself (the session cookie),
so the upstream's own defence against cross-site requests, "the caller must know the token", is
gone: Technitium takes every API call as a GET, and a page on any site could navigate the browser to
`/api/zones/delete?zone=...` (SameSite=Lax still sends the cookie on a top-level GET). So:

* `foreign()` says whether another origin's page is behind a request: the browser's `Sec-Fetch-Site`
  when it sends one (`same-site` counts, a sibling subdomain is another origin), else `Origin`, else
  `Referer`. A request with none of them comes from a script or an old client and is not foreign.
* `refused()` lets a foreign request through only as a plain navigation (GET/HEAD that opens a page:
  a link from a dashboard, a bookmark) to a path the adapter does not mark as its API, and refuses
  everything else: form posts, scripted calls, and navigations into the API.

Login and logout endpoints apply `foreign()` themselves (login CSRF, forced logout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from multidict import CIMultiDictProxy, MultiMapping

if TYPE_CHECKING:
    from aiohttp import web

FOREIGN_FETCH_SITES = ("cross-site", "same-site")
SAFE_METHODS = ("GET", "HEAD")


def _origin_of(url: str) -> str | None:
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # `https://[::1`: no origin anyone could be at (and urlsplit raises, a 500)
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}".lower()


def plainly_own(headers: MultiMapping[str] | CIMultiDictProxy[str]) -> bool:
    """True when no other site can be behind the request, told from the headers alone: the browser
    says same-origin (or typed), or nothing says anything (a script). The proxy asks this first, on
    every request, before it builds what `refused` compares against."""
    fetch_site = headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site.strip().lower() in ("same-origin", "none")
    return "Origin" not in headers and "Referer" not in headers


def foreign(headers: MultiMapping[str] | CIMultiDictProxy[str], own_origin: str) -> bool:
    """Whether a page of another origin than `own_origin` (`scheme://host[:port]`) made this request."""
    fetch_site = headers.get("Sec-Fetch-Site")
    if fetch_site:
        return fetch_site.strip().lower() in FOREIGN_FETCH_SITES
    origin = headers.get("Origin")
    if origin is not None:
        return origin.strip() == "null" or _origin_of(origin) != own_origin.lower()
    referer = headers.get("Referer")
    if referer:
        return _origin_of(referer) != own_origin.lower()
    return False


def own_origin(request: web.Request) -> str:
    """This request's own origin as the browser names it (scheme and host as trusted proxies said)."""
    return f"{request.scheme}://{request.host}"


def from_other_site(request: web.Request) -> bool:
    """`foreign` for a request authproxy answers itself (sign-in, sign-out, a UI's own login call)."""
    return foreign(request.headers, own_origin(request))


def navigation(method: str, headers: MultiMapping[str] | CIMultiDictProxy[str]) -> bool:
    """A GET/HEAD that opens a page (a link, a bookmark, a redirect), not a script's or a form's call.
    Browsers without Sec-Fetch-Mode are judged by what they accept."""
    if method not in SAFE_METHODS:
        return False
    mode = headers.get("Sec-Fetch-Mode")
    if mode:
        return mode.strip().lower() == "navigate"
    return "text/html" in headers.get("Accept", "")


def refused(method: str, headers: MultiMapping[str] | CIMultiDictProxy[str], own_origin: str,
            upstream_path: str, api_path: Callable[[str], bool] | None) -> bool:
    """A foreign request that is not a navigation to one of the upstream's pages."""
    if not foreign(headers, own_origin):
        return False
    if not navigation(method, headers):
        return True
    return api_path is not None and api_path(upstream_path)
