"""Login throttling in authproxy itself, shared through the store so replicas agree.

Upstreams ban by client network (Technitium blocks a /32 for 5 minutes after 5 failures, and sees
the proxy's address unless told otherwise), so one person's typos would lock everyone out.
Counting here, per user and per client IP, stops the attempt before the upstream is asked.

An attempt is counted *before* the upstream is asked and refunded when it turns out not to be a
failure: checking first and counting after the answer let a burst of parallel guesses all pass the
check while none had failed yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import math
from dataclasses import dataclass

from authproxy.config.schema import ThrottleConfig
from authproxy.crypto import b64e
from authproxy.errors import StoreError
from authproxy.sessions.store import SessionStore


def _key(kind: str, site: str, value: str) -> str:
    return f"t:{kind}:" + b64e(hashlib.sha256(f"{site}\x00{value}".encode()).digest()[:18])


def client_network(client_ip: str) -> str:
    """What the per-address limit counts: an IPv4 address, or an IPv6 address's /64 (one subscriber
    usually holds a whole /64 and can pick any address in it; counting single addresses would let
    one person rotate through them). IPv4-mapped IPv6 counts as the IPv4 address; anything that
    does not parse counts as itself."""
    try:
        ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return client_ip
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class Attempt:
    """One sign-in attempt, already counted as a failure against its user and its client network.

    `retry_after` set means the attempt was refused and nothing stays counted. Otherwise settle it:
    `failed()` keeps the count, `succeeded()` clears the user's count and refunds the address,
    `refund()` (anything that is neither: the upstream down, a TOTP prompt) takes it back."""

    regulator: Regulator
    user_key: str
    ip_key: str
    retry_after: int | None = None
    settled: bool = False

    def failed(self) -> None:
        self.settled = True

    async def succeeded(self) -> None:
        self.settled = True
        await self.regulator.store.delete(self.user_key)
        await self._give_back(self.ip_key)

    async def refund(self) -> None:
        if not self.settled:
            self.settled = True
            await self._give_back(self.user_key, self.ip_key)

    async def _give_back(self, *keys: str) -> None:
        # Best effort: a store that fails here has failed the sign-in already, and the count expires.
        with contextlib.suppress(StoreError):
            for key in keys:
                await self.regulator.store.incr(key, self.regulator.config.window, -1)


class Regulator:
    def __init__(self, store: SessionStore, config: ThrottleConfig) -> None:
        self.store = store
        self.config = config

    def _keys(self, site: str, user: str, client_ip: str) -> tuple[str, str]:
        return _key("u", site, user.strip().lower()), _key("ip", "", client_network(client_ip))

    async def begin(self, site: str, user: str, client_ip: str) -> Attempt:
        """Count an attempt, or refuse it (`retry_after` set, nothing counted) when either budget is spent."""
        user_key, ip_key = self._keys(site, user, client_ip)
        attempt = Attempt(self, user_key, ip_key)
        over = [key for key in (user_key, ip_key)
                 if await self.store.incr(key, self.config.window) > self.config.max_failures]
        if not over:
            return attempt
        await attempt.refund()
        worst = 0.0
        for key in over:
            left = await self.store.ttl(key)
            worst = max(worst, self.config.window if left is None else left)
        attempt.retry_after = max(1, math.ceil(min(worst, self.config.window)))
        return attempt

    # ---- wrong service API keys (hybrid) ------------------------------------------------------------
    # A wrong `X-API-Key` is a guess like a wrong password: counted per client network with the
    # sign-in's budget and window, and refused (429) before any key is compared once the budget is spent.

    def _key_guesses(self, client_ip: str) -> str:
        return _key("k", "", client_network(client_ip))

    async def api_key_retry_after(self, client_ip: str) -> int | None:
        """Seconds until this address may present an API key again, or None when it may now."""
        key = self._key_guesses(client_ip)
        raw = await self.store.get(key)
        try:
            count = int(raw) if raw is not None else 0
        except ValueError:
            count = 0
        if count < self.config.max_failures:
            return None
        left = await self.store.ttl(key)
        return max(1, math.ceil(min(self.config.window if left is None else left, self.config.window)))

    async def api_key_failed(self, client_ip: str) -> None:
        await self.store.incr(self._key_guesses(client_ip), self.config.window)

