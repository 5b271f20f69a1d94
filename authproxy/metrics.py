"""Prometheus metrics: one `Metrics` per application (app[keys.METRICS]), fed by a few small hooks.

Why it looks like this:
- No global registry: each application owns a `CollectorRegistry`, so test gateways in one process
  never collide, and the metrics leave with the application.
- Labels are bounded by configuration only (site names, proxy kinds, outcomes, status classes, store
  operations): never a user name, an address or a path, so a scraper's memory cannot be grown from
  outside.
- Several workers (WORKERS > 1): prometheus-client's multiprocess mode. `authproxy run` gives each run a
  directory of its own (PROMETHEUS_MULTIPROC_DIR, set before the workers fork), every worker writes its
  values to memory-mapped files there, and a scrape, whichever worker takes it, adds them all up.
- The hottest counts (session-cache hits and misses, open WebSockets) stay plain integers on the objects
  that own them; `flush` moves them into the registry once a second and before each scrape, so the
  request path pays an integer increment, not a lock.
- What is a property of the whole deployment rather than of one process (live sessions, the background
  tokens' state, build info) is read when a scrape asks, by the worker that answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from importlib import metadata
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from authproxy import keys

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FLUSH_INTERVAL = 1.0
LIVE_SESSIONS_TTL = 15.0   # seconds a live-sessions count is reused (it walks the store's keys)

# Upstream answers: from a LAN box's milliseconds to a slow API's seconds.
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The session store: SQLite on a local disk and Redis on a LAN answer in well under a millisecond.
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

SIGN_IN_OUTCOMES = frozenset({"success", "failure", "totp_required", "throttled", "upstream_blocked",
                              "revoked", "upstream_unavailable", "store_unavailable", "error"})
# AuthError codes (login/passthrough.py, sessions/manager.py) -> the sign-in outcome they are counted as.
_SIGN_IN_CODES = {"invalid_credentials": "failure", "too_many_attempts": "throttled",
                  "signed_out_everywhere": "revoked", "invalid_otp": "failure"}
VERIFY_OUTCOMES = ("allow", "sign_in", "deny", "bad_request", "not_found", "error")
PROXY_KINDS = frozenset({"caddy", "traefik", "nginx"})


def version() -> str:
    try:
        return metadata.version("authproxy")
    except metadata.PackageNotFoundError:   # run from a checkout that was never installed
        return "unknown"


def multiprocess() -> bool:
    """Whether this process writes its values for a multiprocess scrape: prometheus-client decides it
    when first imported, from PROMETHEUS_MULTIPROC_DIR (`authproxy run` sets it before the workers fork
    and before anything imports prometheus-client)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


def verify_outcome(status: int) -> str:
    """What a /verify answer decided, from its status (forward_auth.py documents each)."""
    if status == 200:
        return "allow"
    if status in (301, 302, 303, 307, 401):
        return "sign_in"
    if status == 403:
        return "deny"
    if status in (400, 405):
        return "bad_request"
    if status == 404:
        return "not_found"
    return "error"


def sign_in_outcome(code: str) -> str:
    """An AuthError/StoreError/UpstreamError code as a (bounded) sign-in outcome."""
    outcome = _SIGN_IN_CODES.get(code, code)
    return outcome if outcome in SIGN_IN_OUTCOMES else "error"


class Metrics:
    """The application's metrics; each `on_*` method is one hook, called from where it happens."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sign_ins = Counter("authproxy_sign_ins", "Sign-in attempts, by site and outcome.",
                                ("site", "outcome"), registry=r)
        self.throttled = Counter("authproxy_sign_ins_throttled",
                                 "Sign-ins refused by the throttle (429) before the upstream was asked.",
                                 ("site",), registry=r)
        self.verify = Counter("authproxy_verify_decisions",
                              "Forward-auth (/verify) answers, by proxy kind and decision.",
                              ("proxy", "outcome"), registry=r)
        self.proxied = Counter("authproxy_proxied_requests",
                               "Requests the transparent proxy forwarded and the upstream answered, by site "
                               "and the upstream's status class.", ("site", "code"), registry=r)
        self.upstream_latency = Histogram("authproxy_upstream_latency_seconds",
                                          "Time until the upstream's answer headers arrived, by site.",
                                          ("site",), buckets=UPSTREAM_BUCKETS, registry=r)
        self.upstream_errors = Counter("authproxy_upstream_errors",
                                       "Proxied requests the upstream did not answer (502), by site, kind.",
                                       ("site", "kind"), registry=r)
        self.store_latency = Histogram("authproxy_store_latency_seconds",
                                       "Session store calls (SQLite or Redis), by operation.",
                                       ("op",), buckets=STORE_BUCKETS, registry=r)
        self.store_errors = Counter("authproxy_store_errors",
                                    "Session store calls that failed (the request got 503), by operation.",
                                    ("op",), registry=r)
        self.cache_hits = Counter("authproxy_session_cache_hits",
                                  "Session checks answered from the in-process cache.", registry=r)
        self.cache_misses = Counter("authproxy_session_cache_misses",
                                    "Session checks that read the store.", registry=r)
        self.websockets = Gauge("authproxy_websockets_open", "WebSocket bridges open now.",
                                registry=r, multiprocess_mode="livesum")
        self._verify_children: dict[tuple[str, int], Any] = {}
        self._flushed_hits = 0
        self._flushed_misses = 0
        self._live: tuple[float, int] | None = None

    # ---- hooks -----------------------------------------------------------------------------------

    def on_sign_in(self, site: str, code: str) -> None:
        """`code`: "success", or the AuthError/UpstreamError/StoreError code the sign-in ended with."""
        outcome = sign_in_outcome(code)
        self.sign_ins.labels(site, outcome).inc()
        if outcome == "throttled":
            self.throttled.labels(site).inc()

    def on_verify(self, proxy: str | None, status: int) -> None:
        child = self._verify_children.get((proxy or "auto", status))
        if child is None:
            kind = proxy if proxy in PROXY_KINDS else ("auto" if proxy is None else "other")
            child = self.verify.labels(kind, verify_outcome(status))
            if len(self._verify_children) < 256:
                self._verify_children[(proxy or "auto", status)] = child
        child.inc()

    def on_upstream(self, site: str, status: int, seconds: float) -> None:
        self.proxied.labels(site, status_class(status)).inc()
        self.upstream_latency.labels(site).observe(seconds)

    def on_upstream_error(self, site: str, exc: BaseException) -> None:
        self.upstream_errors.labels(site, "timeout" if isinstance(exc, TimeoutError) else "unreachable").inc()

    async def timed(self, op: str, call: Awaitable[Any]) -> Any:
        """Await a store call, timing it; a failure is counted and re-raised."""
        start = time.perf_counter()
        try:
            return await call
        except Exception:
            self.store_errors.labels(op).inc()
            raise
        finally:
            self.store_latency.labels(op).observe(time.perf_counter() - start)

    # ---- moving plain counts in, and the scrape --------------------------------------------------

    def flush(self, app: web.Application) -> None:
        sessions = app.get(keys.SESSIONS)
        if sessions is not None:
            hits, misses = sessions.cache_hits, sessions.cache_misses
            if hits > self._flushed_hits:
                self.cache_hits.inc(hits - self._flushed_hits)
            if misses > self._flushed_misses:
                self.cache_misses.inc(misses - self._flushed_misses)
            self._flushed_hits, self._flushed_misses = hits, misses
        bridges = app.get(keys.WEBSOCKETS)
        self.websockets.set(len(bridges) if bridges is not None else 0)

    async def exposition(self, app: web.Application) -> bytes:
        """The text a scrape gets: every worker's values (multiprocess mode) or this one's, and what is
        read at scrape time."""
        self.flush(app)
        if multiprocess():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry = self.registry
        scraped = _Scraped(await self._scrape_time(app))
        registry.register(scraped)
        try:
            return generate_latest(registry)
        finally:
            registry.unregister(scraped)

    async def _scrape_time(self, app: web.Application) -> list[Metric]:
        info = GaugeMetricFamily("authproxy_build_info", "Always 1; the labels say what is running.",
                                 labels=("version", "python"))
        info.add_metric((version(), platform.python_version()), 1)
        found: list[Metric] = [info]
        live = await self._live_sessions(app)
        if live is not None:
            gauge = GaugeMetricFamily(
                "authproxy_sessions_live", f"Sessions in the store (counted every {LIVE_SESSIONS_TTL:g} s).")
            gauge.add_metric((), live)
            found.append(gauge)
        found.append(_background(app))
        return found

    async def _live_sessions(self, app: web.Application) -> int | None:
        now = time.monotonic()
        if self._live is not None and now - self._live[0] < LIVE_SESSIONS_TTL:
            return self._live[1]
        store = app.get(keys.STORE)
        if store is None:
            return None
        try:
            count = len(await store.keys("s:"))
        except Exception:   # noqa: BLE001 - the store's trouble shows in authproxy_store_errors_total
            return None
        self._live = (now, count)
        return count


BACKGROUND_STATES = ("safe", "unsafe", "unreadable", "not_checked")


def _background(app: web.Application) -> Metric:
    family = GaugeMetricFamily("authproxy_background_token_state",
                               "1 for the state each configured background token is in (safe: usable).",
                               labels=("site", "state"))
    work, router = app.get(keys.BACKGROUND), app.get(keys.ROUTER)
    if work is None or router is None:
        return family
    for site in router.sites:
        state = work.state(site.name)
        if not state.configured:
            continue
        if state.usable:
            now = "safe"
        elif state.checked_at == 0:
            now = "not_checked"
        else:
            now = "unsafe" if state.check.validated else "unreadable"
        for name in BACKGROUND_STATES:
            family.add_metric((site.name, name), 1 if name == now else 0)
    return family


class _Scraped:
    """A collector of metrics computed for one scrape."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


async def flushing(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: move the plain counts into the registry every FLUSH_INTERVAL."""
    metrics = app[keys.METRICS]

    async def every_interval() -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            metrics.flush(app)

    task = asyncio.get_running_loop().create_task(every_interval(), name="authproxy-metrics-flush")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    metrics.flush(app)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def observe_verify(handler: Handler, metrics: Metrics) -> Handler:
    """Count each /verify answer by proxy kind and decision."""
    count = metrics.on_verify

    async def observed(request: web.Request) -> web.StreamResponse:
        response = await handler(request)
        count(request.match_info.get("proxy"), response.status)
        return response

    return observed
