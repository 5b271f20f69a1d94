"""Streaming HTTP reverse proxy: authenticate, strip, inject, forward, stream back.

Bodies are streamed both ways (no buffering), except a bounded peek at small JSON answers the
adapter must read to spot "token expired" envelopes, form bodies up to 1 MiB that must be cleaned of
client-supplied credential fields before anything goes upstream (proxy/forms.py; longer ones are
cleaned as they stream), and answers of at most SMALL_BODY bytes with a Content-Length, which are
read whole so that headers and body leave in one write.

Cost matters here (every proxied request pays it; see bench/proxy.py): the client's headers are
filtered in one pass, per-upstream values (URL, timeouts) are computed once, and requests without a
body to plain-http upstreams go through the lean client in proxy/upstream.py rather than
`aiohttp.ClientSession` (which still carries uploads and https upstreams).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from authproxy import authz, crosssite, keys
from authproxy.accounts.claims import KIND as LOCAL_KIND
from authproxy.bodies import read_up_to
from authproxy.config.schema import ECHO_METHODS
from authproxy.errors import UpstreamError
from authproxy.log import log
from authproxy.proxy import truenas_socket, websocket
from authproxy.proxy.common import build_upstream_request, credential_died, signed_out
from authproxy.proxy.forms import Checked, Refused, checked_body
from authproxy.proxy.headers import (
    downstream_response_headers,
    drop_carrying,
    location_without,
    private_cache_control,
    set_forwarded,
)
from authproxy.proxy.upstream import UpstreamPool, UpstreamResponse
from authproxy.routing import Site, has_dot_segments
from authproxy.sessions.manager import LoadedSession
from authproxy.sessions.model import Credential
from authproxy.upstreams.base import BodyRefused, UpstreamAdapter, UpstreamRequest
from authproxy.upstreams.substitute import ReplacerChain, StreamReplacer, scrubber
from authproxy.web import local, uicalls
from authproxy.web.bearer import bearer_credential
from authproxy.web.common import client_ip, current_session, error_response, no_endpoint
from authproxy.web.service import service_credential

CHUNK = 64 * 1024
MAX_PEEK = 1 << 20
# Answers up to this size (with a Content-Length) are read whole and sent on in one write: headers and
# body together, one send() instead of two; bigger or open-ended ones stream.
SMALL_BODY = 64 * 1024
_EMPTY_BODY_STATUS = frozenset({204, 304})
_SLASHES = re.compile(r"/{2,}")
_ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"   # what a 405 for TRACE & co. names


# Body-less requests to plain-http upstreams go through this lean client (see proxy/upstream.py).
POOL: web.AppKey[UpstreamPool] = web.AppKey("authproxy.upstream_pool", UpstreamPool)
_Answer = aiohttp.ClientResponse | UpstreamResponse


@dataclass(frozen=True, slots=True)
class _Upstream:
    """What every request to one upstream needs, computed once rather than per request."""

    base: str                      # the configured upstream URL, as the request URL's start
    parts: SplitResult
    url: URL
    lean: bool                     # UpstreamPool speaks to it (plain http, no userinfo or query)
    timeout: aiohttp.ClientTimeout  # sock_read: the wait for the answer's headers
    idle: float | None             # then: the longest silence between body chunks (a long-poll's wait)


@functools.lru_cache(maxsize=256)
def _upstream(url: str, connect_timeout: float | None, read_timeout: float | None,
              idle_timeout: float | None = None) -> _Upstream:
    parsed = URL(url, encoded=True)
    parts = urlsplit(url)
    return _Upstream(
        base=url,
        parts=parts,
        url=parsed,
        lean=UpstreamPool.handles(parsed) and not parts.query and not parts.fragment,
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout),
        idle=idle_timeout if idle_timeout != read_timeout else None,
    )


def setup(app: web.Application) -> None:
    """The lean upstream pool, closed with the app."""
    app[POOL] = UpstreamPool()

    async def close(app: web.Application) -> None:
        await app[POOL].close()

    app.on_cleanup.append(close)


def _upstream_of(site: Site) -> _Upstream:
    config = site.config
    return _upstream(config.upstream_url, config.connect_timeout, config.timeout, config.idle_timeout)


async def credential_for(request: web.Request, site: Site) -> tuple[LoadedSession | None, Credential | None]:
    app = request.app
    if not app[keys.CONFIG].session_mode:
        return None, site.policy.credential(None, site.name)
    loaded = await current_session(request)
    if loaded is None:
        return None, None
    return loaded, site.policy.credential(loaded.session, site.name)


def merged_slashes(request: web.Request) -> web.Request:
    """The request with `//` in its path merged into `/`, as most servers read it: `//api/x` is the
    API to the upstream, so it must be to every rule here (routing, the adapter's path checks, the
    cross-site rule), and the upstream gets the path these rules judged. `%2F` stays as it is."""
    rel = request.rel_url
    path = _SLASHES.sub("/", rel.raw_path)
    url = URL.build(path=path, query_string=rel.raw_query_string, encoded=True)
    # What the trusted-proxy rules set (middleware.amend) is carried over; clone would drop it.
    if request.remote is None:
        return request.clone(rel_url=url, scheme=request.scheme, host=request.host)
    return request.clone(rel_url=url, scheme=request.scheme, host=request.host, remote=request.remote)


async def forward(request: web.Request) -> web.StreamResponse:  # noqa: C901 - hot path, kept flat
    if "//" in request.rel_url.raw_path:
        request = merged_slashes(request)
    app = request.app
    prefix = app[keys.CONFIG].server.prefix
    path = request.rel_url.path
    if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
        # The reserved prefix is authproxy's own: an unknown path or method there is not the upstream's.
        return no_endpoint(request)
    if has_dot_segments(path):
        return error_response(
            request,
            400,
            "bad_path",
            "The path has '.' or '..' segments; send it resolved, as browsers do.",
            title="Bad request",
        )
    site = app[keys.ROUTER].match(request.host, path)
    if site is None:
        return error_response(request, 404, "unknown_site", "No site is configured for this address.",
                              title="Not found")
    if (method := request.method.upper()) in ECHO_METHODS and method not in site.config.allow_methods:
        return _method_refused(request, site)
    # Some UIs' own login/session calls are answered by authproxy (web/uicalls.py, upstreams/ui.py).
    answered = await uicalls.answer(request, site)
    if answered is not None:
        return answered
    if not crosssite.plainly_own(request.headers):   # cheap first: most requests stop here
        # WebSocket handshakes too: one from another origin's page is never a navigation.
        refusal = crosssite.refused(request.method, request.headers, crosssite.own_origin(request),
                                    site.upstream_path(request.rel_url.raw_path),
                                    site.adapter.gets_change_state)
        if refusal is not None:
            return _cross_site_refused(request, site, refusal)
    loaded, credential = await credential_for(request, site)
    # A product whose session is the socket itself answers its sockets message by message, signed in
    # or not (the client may sign in in band): proxy/truenas_socket.py.
    in_band = request.headers.get("Upgrade", "").lower() == "websocket" and site.adapter.in_band(
        site.upstream_path(request.rel_url.raw_path))
    if credential is None:
        if loaded is None:   # nobody signed in: a service client's (hybrid), or an anonymous request
            credential, refused = await service_credential(request, site, client_ip=client_ip(request),
                                                     method=request.method, path=request.rel_url.path)
            if refused is not None:
                return refused
            if credential is None and app[keys.TOKENS] is not None:   # a JWT bearer's (web/bearer.py)
                credential, refused = await bearer_credential(
                    request, site, client_ip=client_ip(request), method=request.method,
                    path=request.rel_url.path)
                if refused is not None:
                    return refused
        # Without a credential only the calls the product answers for anyone (its adapter declares
        # them) go on, without one: the UI gets the product's own answer.
        if credential is None and not in_band and (
            request.headers.get("Upgrade", "").lower() == "websocket"
            or not site.adapter.public_call(method, site.upstream_path(request.rel_url.raw_path))
        ):
            return signed_out(request, site)
    if (loaded is not None and (site.config.allowed_users or site.config.allowed_groups)
            and authz.decide(loaded.session, site.config, session_mode=True) == "deny"):
        # The same per-site allow lists as forward auth (authz.decide), for HTTP and WebSocket alike.
        return error_response(
            request,
            403,
            "forbidden",
            f"You are signed in, but this account may not use {site.name}.",
            title="Not allowed",
        )
    gated: local.Passed | None = None
    # Roles and keys of authproxy's own accounts: the session's, or the account a local JWT stands for.
    gate_session = loaded.session if loaded is not None else request.get(keys.LOCAL_BEARER)
    if (site.config.local_accounts and gate_session is not None
            and not local.plain_read(site, gate_session, method)):
        passed = await local.gate_proxied(request, site, gate_session)
        if not isinstance(passed, local.Passed):
            return passed
        gated = passed
    if in_band:
        return await truenas_socket.bridge(request, site, loaded, credential)
    if request.headers.get("Upgrade", "").lower() == "websocket" and credential is not None:
        # A local sign-in's marker carries no secret: the handshake goes with none (or the service one).
        return await websocket.bridge(request, site, loaded,
                                      None if credential.kind == LOCAL_KIND else credential,
                                      key=gated.key if gated is not None else None)

    ureq = build_upstream_request(request, site)
    checked: Checked | None = None
    if gated is not None and gated.head is not None:   # read to find JSON-RPC methods: it goes on whole
        checked = Checked(_chained(gated.head, request.content))
    elif request.body_exists:
        try:
            checked = await checked_body(request.content, request.headers.getall("Content-Type", []),
                                         request.headers.get("Content-Encoding", ""),
                                         site.adapter.credential_fields())
        except Refused as exc:
            return _body_refused(request, site, exc)
        if not checked.same_length:
            ureq.headers.popall("Content-Length", None)
    site.adapter.prepare_request(ureq, None if credential is not None and credential.kind == LOCAL_KIND
                                 else credential)
    if gated is not None:
        ureq.raw_query = local.strip_and_inject(site.config.local, ureq.headers, ureq.raw_query, gated.key)
    body = checked.data if checked is not None else None
    if checked is not None and credential is not None and site.adapter.restores_body(ureq):
        try:
            body = await _restored(request, site, ureq, credential, body)
        except BodyRefused as exc:
            return _body_refused(request, site, Refused(exc.status, exc.code, exc.message))
        except UpstreamError:
            return error_response(request, 502, "upstream_unavailable",
                                  f"{site.name} is not answering right now; try again in a moment.",
                                  title="Upstream unavailable")
    headers = ureq.headers
    set_forwarded(headers, client_ip=client_ip(request), proto="https" if request.secure else "http",
                  host=request.host)

    target = _upstream_of(site)
    path_qs = ureq.raw_path + ("?" + ureq.raw_query if ureq.raw_query else "")
    pool = app.get(POOL) if body is None and target.lean else None
    upstream: _Answer
    started = time.perf_counter()
    try:
        if pool is not None:
            timeout = target.timeout
            upstream = await pool.request(ureq.method, target.url, target.parts.path + path_qs, headers,
                                          connect_timeout=timeout.connect, read_timeout=timeout.sock_read)
        else:
            upstream = await app[keys.HTTP].request(
                ureq.method, URL(target.base + path_qs, encoded=True), headers=headers, data=body,
                allow_redirects=False, timeout=target.timeout, auto_decompress=False)
    except (aiohttp.ClientError, TimeoutError, UpstreamError) as exc:
        if checked is not None and checked.refused is not None:
            return _body_refused(request, site, checked.refused)  # the body was broken off on purpose
        if (metrics := app.get(keys.METRICS)) is not None:
            metrics.on_upstream_error(site.name, exc)
        log.warning(
            "upstream unreachable", extra={"fields": {"site": site.name, "error": type(exc).__name__}}
        )
        return error_response(request, 502, "upstream_unavailable",
                              f"{site.name} is not answering right now; try again in a moment.",
                              title="Upstream unavailable")
    if (metrics := app.get(keys.METRICS)) is not None:
        metrics.on_upstream(site.name, upstream.status, time.perf_counter() - started)
    if loaded is not None:
        app[keys.KEEPALIVE].note_use(loaded, site.name)  # the upstream just saw the token
    if target.idle is not None:
        _idle_timeout(upstream, target.idle)
    try:
        return await _relay(request, site, ureq, upstream, loaded, credential)
    finally:
        upstream.release()


async def _restored(request: web.Request, site: Site, ureq: UpstreamRequest, credential: Credential,
                    body: object) -> object:
    """A JSON write that may carry fields authproxy blanked in an answer, with their real values back
    (the adapter's `restore_body`); a body over MAX_PEEK goes on as sent."""
    if not isinstance(body, aiohttp.StreamReader):
        return body
    head = await read_up_to(body, MAX_PEEK + 1)
    if len(head) > MAX_PEEK:
        return _chained(head, body)
    ureq.headers.popall("Content-Length", None)
    ureq.headers.popall("Transfer-Encoding", None)
    return await site.adapter.restore_body(ureq, head, credential)


async def _chained(head: bytes, rest: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    yield head
    async for chunk in rest.iter_chunked(CHUNK):
        yield chunk


def _idle_timeout(upstream: _Answer, seconds: float) -> None:
    """The headers are in: from now on the read timeout is the idle time allowed between body chunks
    (`idle_timeout`), so a long-poll or an event stream is not cut while the upstream keeps it open.
    A body already read to its end needs no timer (one set now would outlive it)."""
    if upstream.content.is_eof():
        return
    if isinstance(upstream, UpstreamResponse):
        upstream.idle_timeout(seconds)
        return
    connection = upstream.connection
    if connection is not None and connection.protocol is not None:
        connection.protocol.read_timeout = seconds
        connection.protocol.start_timeout()


async def _relay(request: web.Request, site: Site, ureq: UpstreamRequest, upstream: _Answer,
                 loaded: LoadedSession | None, credential: Credential | None) -> web.StreamResponse:
    adapter = site.adapter
    status = upstream.status
    up_headers = upstream.headers
    peeked: bytes | None = None
    rewritten = False
    # A HEAD answer has no body to peek at, and peeking would replace its Content-Length with 0.
    if request.method != "HEAD" and adapter.wants_body(ureq, status, up_headers):
        try:
            peeked = await read_up_to(upstream.content, MAX_PEEK + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Nothing sent yet, and a body that must be checked or rewritten cannot go out in part.
            log.warning(
                "upstream answer broke off",
                extra={"fields": {"site": site.name, "error": type(exc).__name__}},
            )
            return error_response(request, 502, "upstream_unavailable",
                                  f"{site.name} broke off its answer; try again in a moment.",
                                  title="Upstream unavailable")
        if (
            len(peeked) <= MAX_PEEK
            and credential is not None
            and not site.config.local_accounts   # a local sign-in is not the upstream's to end
            and adapter.is_expired(status, up_headers, peeked)
        ):
            return await credential_died(request, site, loaded)
        if len(peeked) <= MAX_PEEK:
            # Token fields in JSON answers become this session's placeholder (upstreams/ decides which).
            peeked = adapter.rewrite_body(ureq, peeked, loaded)
            rewritten = True
    elif (request.method != "HEAD" and status not in _EMPTY_BODY_STATUS
          and (length := upstream.content_length) is not None and length <= SMALL_BODY):
        content = upstream.content
        try:
            # Usually all of it is already in: take it without a round through the reader's waiters.
            peeked = content.read_nowait() if content.is_eof() else await content.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Nothing sent yet; what streaming would have done: the headers, then the dropped connection.
            response = web.StreamResponse(status=status, reason=upstream.reason)
            _answer_headers(response, request, site, upstream, credential, drop_length=False)
            return await _stream(request, site, upstream, response, b"", exc)
    # An answer that may carry the token but was not rewritten whole (too large) is scrubbed as it goes.
    scrub = None if rewritten or request.method == "HEAD" else _scrubber(adapter, ureq, up_headers, loaded)
    if peeked is not None and len(peeked) <= MAX_PEEK and upstream.content.at_eof():
        # The whole body is in hand: headers and body leave in one write, Content-Length is its own.
        if scrub is not None:
            peeked = scrub.feed(peeked) + scrub.flush()
        whole = web.Response(status=status, reason=upstream.reason, body=peeked)
        _answer_headers(whole, request, site, upstream, credential, drop_length=True)
        return whole
    response = web.StreamResponse(status=status, reason=upstream.reason)
    _answer_headers(response, request, site, upstream, credential,
                    drop_length=peeked is not None or (scrub is not None and not scrub.keeps_length))
    return await _stream(request, site, upstream, response, peeked or b"", None, scrub)


def _scrubber(adapter: UpstreamAdapter, ureq: UpstreamRequest, headers: CIMultiDictProxy[str],
              loaded: LoadedSession | None) -> StreamReplacer | ReplacerChain | None:
    pair = adapter.answer_secret(ureq, headers, loaded)
    return scrubber(*pair) if pair is not None and pair[0] else None


def _answer_headers(response: web.StreamResponse, request: web.Request, site: Site, upstream: _Answer,
                    credential: Credential | None, *, drop_length: bool) -> None:
    """The upstream's answer headers as the browser may see them, written straight into `response`.

    Every answer here was made with an injected credential, so no shared cache may keep it: without a
    Cache-Control it gets `private`, and one that would let a shared cache store it is made private
    (`private_cache_control`). On HTTPS, authproxy's Strict-Transport-Security (the upstream's own
    never passes, see proxy/headers.py); the value is built once at start-up."""
    headers = response.headers
    downstream_response_headers(upstream.headers, headers, drop_length=drop_length)
    cache = headers.getall("Cache-Control", None)
    if cache is None:
        headers["Cache-Control"] = "private"
    else:
        value = cache[0] if len(cache) == 1 else ", ".join(cache)
        private = private_cache_control(value)
        if len(cache) > 1 or private != value:
            headers["Cache-Control"] = private
    hsts = request.app[keys.HSTS]
    if hsts and request.secure:
        headers["Strict-Transport-Security"] = hsts
    site.adapter.filter_response_headers(headers)
    if "Location" in headers:
        _rewrite_location(headers, site, request)
        if credential is not None:
            headers["Location"] = location_without(headers["Location"], credential.secret)
    if credential is not None:
        drop_carrying(
            headers, credential.secret
        )  # anything else that echoes it (a Location left holding it too)
    if "Set-Cookie" in headers:
        _rewrite_set_cookie_paths(headers, site)


async def _stream(request: web.Request, site: Site, upstream: _Answer, response: web.StreamResponse,  # noqa: C901 - hot path
                  first: bytes, broke: BaseException | None,
                  scrub: StreamReplacer | ReplacerChain | None = None) -> web.StreamResponse:
    """Send `first`, then the rest of the upstream body as it comes; `broke`: the upstream already failed.
    `scrub`: the secret replaced in all of it on the way."""
    await response.prepare(request)
    try:
        if scrub is not None:
            first = scrub.feed(first)
        if first:
            await response.write(first)
        if broke is not None:
            raise broke
        if request.method != "HEAD":
            if scrub is None:
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await response.write(chunk)
            else:
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    if out := scrub.feed(chunk):
                        await response.write(out)
                if tail := scrub.flush():
                    await response.write(tail)
        await response.write_eof()
    except ConnectionResetError:
        # The client went away mid-body (a cancelled download): nobody to answer, nothing went wrong here.
        log.debug("client closed the connection mid-answer", extra={"fields": {"site": site.name}})
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The upstream broke off mid-body. The status line is already sent, so the only honest signal
        # left is to drop the client's connection: a clean end would pass the truncated body off as whole.
        log.warning("upstream broke off its answer", extra={"fields": {"site": site.name,
                                                                       "error": type(exc).__name__}})
        if request.transport is not None:
            request.transport.close()
    return response


def _method_refused(request: web.Request, site: Site) -> web.StreamResponse:
    """TRACE & co. make an upstream echo the request back, injected credential included."""
    return error_response(request, 405, "method_not_allowed",
                          f"{request.method} is not forwarded to {site.name}: the answer would echo the "
                          "credential authproxy adds.", title="Method not allowed", headers={"Allow": _ALLOW})


def _body_refused(request: web.Request, site: Site, refused: Refused) -> web.StreamResponse:
    log.info("request body refused", extra={"fields": {"site": site.name, "code": refused.code}})
    return error_response(request, refused.status, refused.code, refused.message)


def _cross_site_refused(request: web.Request, site: Site, refusal: crosssite.Refusal) -> web.StreamResponse:
    log.info("cross-site request refused", extra={"fields": {"site": site.name, "method": request.method,
                                                             "path": request.rel_url.path, "why": refusal}})
    return error_response(request, 403, "cross_site", crosssite.explain(refusal, site.name),
                          title="Request from another site refused")


def _public_path(upstream_path: str, site: Site) -> str | None:
    """Where an upstream path is served publicly: the upstream URL's own path off, the site prefix on.

    None when the path lies outside the upstream URL's path (nothing public maps to it).
    """
    base = _upstream_of(site).parts.path.rstrip("/")
    path = upstream_path or "/"
    if base:
        if path != base and not path.startswith(base + "/"):
            return None
        path = path[len(base):] or "/"
    return site.config.path_prefix.rstrip("/") + path


def _rewrite_location(headers: CIMultiDict[str], site: Site, request: web.Request) -> None:
    """Redirects to the upstream's own address or paths become the public address and paths.

    An absolute URL naming the upstream's host:port, or an absolute path, is mapped through
    `_public_path` (e.g. upstream `/login.html` under prefix `/agh/` -> `/agh/login.html`); relative
    references and other hosts are left alone (the browser resolves the former against the public URL).
    """
    location = headers.get("Location")
    if not location:
        return
    base = _upstream_of(site).parts
    target = urlsplit(location)
    if target.scheme and target.netloc:
        if target.scheme.lower() not in ("http", "https") or target.netloc.lower() != base.netloc.lower():
            return
        path = _public_path(target.path, site)
        if path is None:
            return
        proto = "https" if request.secure else "http"
        new = f"{proto}://{request.host}{path}"
    elif location.startswith("/") and not location.startswith("//") and not location.startswith("/\\"):
        path = _public_path(target.path, site)
        if path is None or path == target.path:
            return
        new = path
    else:
        return
    if target.query:
        new += f"?{target.query}"
    if target.fragment:
        new += f"#{target.fragment}"
    headers["Location"] = new


def _rewrite_set_cookie_paths(headers: CIMultiDict[str], site: Site) -> None:
    """Upstream cookies that reach the browser get public paths, and lose a Domain naming the upstream.

    (`Set-Cookie`s carrying the upstream session were already dropped by the adapter.)
    """
    values = headers.getall("Set-Cookie", ())
    if not values:
        return
    upstream_host = (_upstream_of(site).parts.hostname or "").lower()
    out = []
    for value in values:
        parts = value.split(";")
        kept = [parts[0]]
        for attr in parts[1:]:
            name, _, val = attr.strip().partition("=")
            low = name.strip().lower()
            if low == "path" and val.strip().startswith("/"):
                public = _public_path(val.strip(), site)
                if public is not None:
                    public = public.rstrip("/") or "/"
                    attr = f" {name.strip()}={public}"
            elif low == "domain" and val.strip().lstrip(".").lower() == upstream_host:
                continue
            kept.append(attr)
        out.append(";".join(kept))
    if out != values:
        headers.popall("Set-Cookie", None)
        for value in out:
            headers.add("Set-Cookie", value)


