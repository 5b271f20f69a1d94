"""Request-wide rules: who the client is (trusted proxies only), and no 500 with a trace."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from typing import cast

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp_remotes import XForwardedFiltered

from authproxy import crosssite
from authproxy.config.schema import IPNetwork
from authproxy.errors import StoreError
from authproxy.log import log
from authproxy.web.common import HSTS, error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TrustedPeers:
    """Is this TCP peer one of TRUSTED_PROXIES? Remembered per address: parsing the address and testing
    every network costs more than the rest of a session check, and a gateway sees few distinct peers."""

    def __init__(self, trusted: tuple[IPNetwork, ...]) -> None:
        self.trusted = trusted
        self._verdicts: dict[str, bool] = {}

    def __call__(self, request: web.Request) -> bool:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if not peer:
            return False
        address = str(peer[0])
        verdict = self._verdicts.get(address)
        if verdict is None:
            verdict = peer_in(address, self.trusted)
            if len(self._verdicts) >= 4096:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict


def peer_in(peer: str | None, trusted: tuple[IPNetwork, ...]) -> bool:
    """Whether an address (IPv4, IPv6, IPv4-mapped, with a zone) lies in one of the networks."""
    if not peer:
        return False
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in trusted)


class TrustedForwarded:
    """X-Forwarded-Proto/For/Host through aiohttp-remotes, but only when the TCP peer is a trusted proxy.

    aiohttp-remotes' filtered mode walks X-Forwarded-For but never looks at the peer itself, so a
    direct client could claim `https`; this checks the peer first and ignores the headers otherwise.
    The forward-auth endpoints read the proxies' headers themselves, so they skip this.

    aiohttp-remotes applies what it found with `request.clone(...)`, a full copy of the request (about
    16 us, a seventh of a proxied request's CPU). It is handed the request behind `_AmendInPlace`, whose
    `clone` writes the same overrides into the request itself (`amend`).
    """

    def __init__(self, peers: TrustedPeers, *, skip_prefix: str) -> None:
        self.peers = peers
        self.filtered = XForwardedFiltered(set(peers.trusted))
        self.skip_prefix = skip_prefix

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(self.skip_prefix) or not self.peers(
            request
        ):  # verify checks its peer itself
            return await handler(request)
        headers = request.headers
        proto = headers.get("X-Forwarded-Proto", "")
        if proto.lower() in crosssite.WS_SCHEMES:
            # Traefik says ws/wss for WebSocket upgrades: read as http/https from a copy of the headers.
            # Not request.clone(headers=...): it re-encodes every header and fails on bytes that are no UTF-8.
            headers = _replace(request, "X-Forwarded-Proto", crosssite.WS_SCHEMES[proto.lower()])
        if "X-Forwarded-For" not in headers:
            scheme = headers["X-Forwarded-Proto"].split(",")[-1].strip() if proto else None
            host = headers.get("X-Forwarded-Host", "").split(",")[-1].strip() or None
            if scheme or host:
                peer = request.transport.get_extra_info("peername") if request.transport else None
                amend(
                    request, remote=str(peer[0]) if peer else request.remote or "", scheme=scheme, host=host
                )
            return await handler(request)
        return await self.filtered.middleware(cast(web.Request, _AmendInPlace(request, headers)), handler)


def amend(request: web.Request, *, scheme: str | None = None, host: str | None = None,
          remote: str | None = None) -> web.Request:
    """What `request.clone(scheme=..., host=..., remote=...)` answers, without copying the request.

    aiohttp's own constructor keeps such overrides in the request's cache of computed properties;
    this puts them in the same place (and drops `url`, computed from scheme and host). Tested by
    tests/integration/test_forwarding.py and tests/unit/test_trusted_forwarded.py.
    """
    cache = request._cache
    if scheme is not None:
        cache["scheme"] = scheme
    if host is not None:
        cache["host"] = host
    if remote is not None:
        cache["remote"] = remote
    cache.pop("url", None)
    return request


class _AmendInPlace:
    """The request as aiohttp-remotes sees it: everything as is (but `headers`, which may be a copy that
    reads ws/wss as http/https), and `clone` amends in place."""

    __slots__ = ("_request", "headers")

    def __init__(self, request: web.Request, headers: object) -> None:
        self._request = request
        self.headers = headers

    def __getattr__(self, name: str) -> object:
        return getattr(self._request, name)

    def clone(self, *, scheme: str | None = None, host: str | None = None,
              remote: str | None = None) -> web.Request:
        return amend(self._request, scheme=scheme, host=host, remote=remote)


def _replace(request: web.Request, name: str, value: str):  # type: ignore[no-untyped-def]
    from multidict import CIMultiDict

    headers = CIMultiDict(request.headers)
    headers[name] = value
    return headers


def request_rules(forwarded: TrustedForwarded | None, *, hsts: str = "",
                  verify_prefix: str = "") -> Middleware:
    """The one middleware: forwarded headers from trusted proxies (when TRUST_PROXY), then the handler,
    with errors turned into clear pages. One layer rather than two: aiohttp wraps every middleware in
    a coroutine of its own, about 2 us per request each on the bench machine.

    `hsts` (built at start-up, "" = off) goes on every HTTPS answer not sent yet: authproxy's pages, API,
    errors and redirects (the proxy puts it on the answers it streams itself, see proxy/http.py). Not on
    the forward-auth answers under `verify_prefix`: they answer the front proxy, which owns the public
    host's headers."""

    @web.middleware
    async def rules(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if forwarded is not None:
                response = await forwarded.handle(request, handler)
            else:
                response = await handler(request)
        except web.HTTPException as exc:
            if hsts and request.secure:
                _strict(request, exc.headers, hsts, verify_prefix)
            raise
        except Exception as exc:  # noqa: BLE001
            response = failure_page(request, exc)
        # Cheapest first: this runs on every answer (a proxied one has it already, see proxy/http.py).
        if hsts and request.secure and not response.prepared and HSTS not in response.headers:
            _strict(request, response.headers, hsts, verify_prefix)
        return response

    return rules


def _strict(request: web.Request, headers: MutableMapping[str, str], hsts: str, verify_prefix: str) -> None:
    if not (verify_prefix and request.path.startswith(verify_prefix)):
        headers[HSTS] = hsts


def failure_page(request: web.Request, exc: Exception) -> web.StreamResponse:
    """Store down -> a clear 503 (fail closed); anything unexpected -> a plain 500 page. Never a trace:
    the log gets the type, not the details."""
    if isinstance(exc, StoreError):
        log.error("session store unavailable", extra={"fields": {"error": str(exc)}})
        return error_response(request, 503, "store_unavailable",
                              "The session store is not reachable; try again in a moment.",
                              title="Temporarily unavailable", headers={"Retry-After": "5"})
    log.error(
        "unhandled error",
        extra={"fields": {"path": request.rel_url.path, "error": type(exc).__name__}},
        exc_info=exc,
    )
    return error_response(request, 500, "internal_error", "Something went wrong inside authproxy.",
                          title="Internal error")
