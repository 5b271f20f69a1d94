"""Logged-in TrueNAS sockets kept a little while for their person's next client socket.

TrueNAS rate-limits unauthenticated calls (logins among them) per method and address, 20 a minute,
and everyone behind authproxy shares authproxy's address. A UI reload closes its socket and opens
another at once: instead of a new `TOKEN_PLAIN` login, the new one takes the upstream socket the old
one left, still logged in as the same person. Sockets wait `seconds` (then close), at most `most` per
key; the key says whose they are (a token chain's id, or a hash of the service key).
"""

from __future__ import annotations

import asyncio

from authproxy.upstreams.truenas_rpc import RpcSocket


class SocketPark:
    def __init__(self, *, seconds: float, most: int) -> None:
        self.seconds = seconds
        self.most = most
        self._parked: dict[str, list[tuple[RpcSocket, asyncio.TimerHandle]]] = {}

    def park(self, key: str, sock: RpcSocket) -> bool:
        """Keep `sock` under `key`; False (the caller closes it): no key, closed, or the key is full."""
        parked = self._parked.setdefault(key, []) if key else None
        if parked is None or sock.closed or len(parked) >= self.most:
            return False
        sock.on_message = None
        parked.append((sock, asyncio.get_running_loop().call_later(self.seconds, self._expire, key, sock)))
        return True

    def take(self, key: str) -> RpcSocket | None:
        """A parked socket of `key` still open, or None."""
        parked = self._parked.get(key, [])
        while parked:
            sock, timer = parked.pop()
            timer.cancel()
            if not sock.closed:
                return sock
            asyncio.ensure_future(sock.close())
        self._parked.pop(key, None)
        return None

    def _expire(self, key: str, sock: RpcSocket) -> None:
        kept = [(s, t) for s, t in self._parked.get(key, []) if s is not sock]
        if kept:
            self._parked[key] = kept
        else:
            self._parked.pop(key, None)
        asyncio.ensure_future(sock.close())

    async def close(self, key: str) -> None:
        """Close every socket parked under `key` (its person signed out)."""
        for sock, timer in self._parked.pop(key, []):
            timer.cancel()
            await sock.close()

    async def close_all(self) -> None:
        for key in list(self._parked):
            await self.close(key)
