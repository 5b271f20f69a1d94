"""Login throttling in authproxy itself, shared through the store so replicas agree.

Upstreams ban by client network (Technitium blocks a /32 for 5 minutes after 5 failures, and sees
the proxy's address unless told otherwise), so one person's typos would lock everyone out.
Counting here, per user and per client IP, stops the attempt before the upstream is asked.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math

from authproxy.config.schema import ThrottleConfig
from authproxy.crypto import b64e
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


class Regulator:
    def __init__(self, store: SessionStore, config: ThrottleConfig) -> None:
        self.store = store
        self.config = config

    def _keys(self, site: str, user: str, client_ip: str) -> tuple[str, str]:
        return _key("u", site, user.strip().lower()), _key("ip", "", client_network(client_ip))

    async def retry_after(self, site: str, user: str, client_ip: str) -> int | None:
        """Seconds until another attempt is allowed, or None when one is allowed now."""
        worst: float | None = None
        for key in self._keys(site, user, client_ip):
            raw = await self.store.get(key)
            if raw is None:
                continue
            try:
                count = int(raw)
            except ValueError:
                continue
            if count >= self.config.max_failures:
                left = await self.store.ttl(key)
                left = self.config.window if left is None else left
                worst = left if worst is None else max(worst, left)
        return None if worst is None else max(1, math.ceil(worst))

    async def failed(self, site: str, user: str, client_ip: str) -> None:
        for key in self._keys(site, user, client_ip):
            await self.store.incr(key, self.config.window)

    async def succeeded(self, site: str, user: str, client_ip: str) -> None:
        await self.store.delete(self._keys(site, user, client_ip)[0])
