"""Background work with each site's background token, and the check that keeps it least-privileged.

At start and every BACKGROUND_CHECK_INTERVAL (5 minutes) authproxy reads each background token's own
session upstream and judges its effective permissions (the adapter's `check_background`; for
Technitium: DnsClient can view, nothing can be modified or deleted, Administration cannot be seen).
An unsafe or unreadable token disables the background work and the service clients of that site,
with the reason (logged, audited with `actor: service`, and shown in `/me`), never with the token.

The work that proves the path: reverse (PTR) names for client addresses (the session answer, the
audit lines of sign-in and sign-out), asked with the background token, cached (an hour; a miss five
minutes), bounded (MAX_NAMES addresses, one lookup per address at a time, LOOKUP_TIMEOUT each), and
skipped entirely while no token is safe.

Background tokens are checked in AUTH_MODE=session and hybrid (in none the service credential is
every request's, so there is no background token to keep apart), and in none too for adapters that
ask (`checks_service_key`: TrueNAS, whose key is validated at start in every mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from authproxy.errors import UpstreamError
from authproxy.log import audit, log
from authproxy.routing import Site
from authproxy.sessions.model import Credential
from authproxy.upstreams.base import TokenCheck

MAX_NAMES = 1024
NAME_TTL = 3600.0
MISS_TTL = 300.0
LOOKUP_TIMEOUT = 2.0
CHECK_TIMEOUT = 10.0
STARTUP_WAIT = 3.0  # how long the start waits for the first check (it goes on after that)
NOT_CONFIGURED = "no background token is configured (TECHNITIUM_BACKGROUND_TOKEN)"
NOT_CHECKED = "not checked yet"
# A PTR answer is whatever the zone's owner wrote; it goes into audit lines and JSON. Only a host name
# (LDH labels, `_` tolerated as in service names, 1-63 each, 253 in all) is shown; anything else
# (a line break, an escape sequence, spaces, an overlong name) counts as no name.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
MAX_DNS_NAME = 253


def dns_name(value: object) -> str | None:
    """`value` as a lower-case host name without the final dot, or None when it is not one."""
    if not isinstance(value, str) or not value.isascii():
        return None
    name = value.lower().removesuffix(".")
    if not name or len(name) > MAX_DNS_NAME:
        return None
    return name if all(_LABEL.fullmatch(label) for label in name.split(".")) else None


@dataclass(frozen=True, slots=True)
class TokenState:
    """The last verdict on one site's background token, as `/me` reports it."""

    configured: bool
    check: TokenCheck
    checked_at: float = 0.0

    @property
    def usable(self) -> bool:
        return self.configured and self.check.ok

    def summary(self) -> dict[str, object]:
        """`backgroundPtrToken` of /me (the names existing scripts query)."""
        return {
            "configured": self.configured,
            "validated": self.check.validated,
            "okForPtr": self.usable,
            "okForBackground": self.usable,
            "reason": self.check.reason,
            "tooPrivilegedSections": list(self.check.too_privileged),
        }


UNCONFIGURED = TokenState(
    configured=False, check=TokenCheck(validated=False, ok=False, reason=NOT_CONFIGURED)
)


class BackgroundWork:
    """The verdicts per site, the periodic check, and the PTR names."""

    def __init__(
        self, sites: list[Site], *, interval: float, enabled: bool, clock: Callable[[], float] = time.time
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._credentials: dict[str, Credential] = {}
        self._adapters = {site.name: site.adapter for site in sites}
        for site in sites:
            token = site.config.service_token
            if (enabled or site.adapter.checks_service_key) and token is not None:
                self._credentials[site.name] = site.adapter.service_credential(token.reveal())
        self._states: dict[str, TokenState] = {
            name: TokenState(configured=True, check=TokenCheck(validated=False, ok=False, reason=NOT_CHECKED))
            for name in self._credentials
        }
        self._names: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[str | None]] = {}
        self._task: asyncio.Task[None] | None = None

    # ---- the check ---------------------------------------------------------------------------------

    def state(self, site: str) -> TokenState:
        return self._states.get(site, UNCONFIGURED)

    def usable(self, site: str) -> bool:
        """Whether the site's background token may be used now (background work, service clients)."""
        state = self._states.get(site)
        return state is not None and state.usable

    async def check(self, site: str) -> TokenState:
        """Read the site's token's privileges now; the new verdict (audited when it changed)."""
        credential = self._credentials.get(site)
        if credential is None:
            return UNCONFIGURED
        try:
            verdict = await asyncio.wait_for(self._adapters[site].check_background(credential), CHECK_TIMEOUT)
        except (UpstreamError, TimeoutError) as exc:
            verdict = TokenCheck(validated=False, ok=False, reason=f"unreadable: {type(exc).__name__}")
        if verdict is None:  # the product cannot tell: used as configured
            verdict = TokenCheck(validated=False, ok=True, reason="not checked: this upstream cannot tell")
        before = self._states.get(site)
        self._states[site] = TokenState(configured=True, check=verdict, checked_at=self.clock())
        if before is None or before.check != verdict:
            outcome = "safe" if verdict.ok else ("unsafe" if verdict.validated else "unreadable")
            audit(
                "background_token",
                outcome=outcome,
                actor="service",
                user="background",
                site=site,
                reason=verdict.reason,
                too_privileged=list(verdict.too_privileged),
            )
            if not verdict.ok:
                log.warning(
                    "background work disabled: the background token is not safe to use",
                    extra={"fields": {"site": site, "reason": verdict.reason}},
                )
        return self._states[site]

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(site) for site in self._credentials))

    async def start(self, *, wait: float | None = None) -> None:
        """The first check now (waited for up to `wait` seconds, so a hung upstream cannot hold up the
        start), then one every `interval`."""
        if not self._credentials or self._task is not None:
            return
        first = asyncio.ensure_future(self.check_all())
        await asyncio.wait([first], timeout=STARTUP_WAIT if wait is None else wait)
        self._task = asyncio.get_running_loop().create_task(self._every_interval(first))

    async def _every_interval(self, first: asyncio.Future[None]) -> None:
        with contextlib.suppress(Exception):
            await first
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_all()
            except Exception:  # noqa: BLE001 - the loop must outlive any one round
                log.exception("background token check failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for pending in self._inflight.values():
            pending.cancel()

    # ---- PTR names ---------------------------------------------------------------------------------

    def _resolver(self) -> str | None:
        return next((site for site in self._credentials if self.usable(site)), None)

    async def name_for(self, address: str) -> str | None:
        """The reverse name of a client address, or None (none, not an address, or no safe token:
        then nothing is asked at all)."""
        site = self._resolver()
        if site is None or not address:
            return None
        try:
            canonical = str(ipaddress.ip_address(address))
        except ValueError:
            return None
        now = self.clock()
        cached = self._names.get(canonical)
        if cached is not None and cached[1] > now:
            self._names.move_to_end(canonical)
            return cached[0]
        pending = self._inflight.get(canonical)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(site, canonical))
            self._inflight[canonical] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(canonical, None))
        try:
            return await asyncio.shield(pending)
        except (UpstreamError, TimeoutError, asyncio.CancelledError):
            return None

    async def _lookup(self, site: str, address: str) -> str | None:
        try:
            name = await asyncio.wait_for(
                self._adapters[site].reverse_name(self._credentials[site], address), LOOKUP_TIMEOUT
            )
        except (UpstreamError, TimeoutError):
            return None  # not cached: the next request may try again
        name = dns_name(name)
        self._names[address] = (name, self.clock() + (NAME_TTL if name else MISS_TTL))
        self._names.move_to_end(address)
        while len(self._names) > MAX_NAMES:
            self._names.popitem(last=False)
        return name
