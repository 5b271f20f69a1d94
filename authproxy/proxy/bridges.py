"""The open WebSocket bridges, by session: what closes them when a session ends on any replica.

`BridgeRegistry` (app[keys.WEBSOCKETS]) indexes open bridges by the session's store key. It listens on
the session manager's invalidation channel, which every replica publishes on destroy and save, so a
sign-out anywhere closes the sockets here within one store round trip. Upstream WebSocket
connections are opened apart from the HTTP client's pool (proxy/ws_upstream.py): they are held for
hours and must not count against its limits.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field

from authproxy.sessions.manager import LoadedSession

CLOSE_TIMEOUT = 5.0          # how long a close handshake may wait for the peer's CLOSE
RECHECK_INTERVAL = 5.0       # the session is looked up at least this often
SESSION_ENDED = (4001, "session ended")
SHUTDOWN = (1001, "server shutting down")


@dataclass(eq=False, slots=True)
class Bridge:
    """One open client<->upstream pair, as the registry sees it."""

    store_key: str | None          # None in AUTH_MODE=none (service credential, no session)
    site: str
    expires_at: float | None       # the session's absolute end
    loaded: LoadedSession | None = None
    slide_every: float = 60.0      # a busy socket slides the session's idle timeout this often at most
    slide: bool = False            # the client sent frames: the watch should slide the idle timeout
    sign_out: bool = False         # the UI signed out in a message (the adapter's ws_sign_out_text)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stop: tuple[int, str] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, code: int, reason: str) -> None:
        """Ask the bridge to close both sides (client gets `code`); returns at once."""
        if self.stop is None:
            self.stop = (code, reason)
        self.wake.set()


class BridgeRegistry:
    """Open bridges by session store key, the invalidation listener, and the upstream WS client."""

    def __init__(self, *, recheck_interval: float = RECHECK_INTERVAL) -> None:
        self.recheck_interval = recheck_interval
        self._by_key: dict[str | None, set[Bridge]] = {}
        self._ssl: ssl.SSLContext | None = None

    def __len__(self) -> int:
        return sum(len(group) for group in self._by_key.values())

    def __iter__(self) -> Iterator[Bridge]:
        return iter([b for group in self._by_key.values() for b in group])

    def add(self, bridge: Bridge) -> None:
        self._by_key.setdefault(bridge.store_key, set()).add(bridge)

    def remove(self, bridge: Bridge) -> None:
        group = self._by_key.get(bridge.store_key)
        if group is not None:
            group.discard(bridge)
            if not group:
                del self._by_key[bridge.store_key]

    def invalidated(self, store_key: str) -> None:
        """Store callback: this session was destroyed or saved somewhere; its bridges re-check it."""
        for bridge in self._by_key.get(store_key, ()):
            bridge.wake.set()

    def close_all(self, code: int = SHUTDOWN[0], reason: str = SHUTDOWN[1]) -> None:
        """Ask every bridge to close (client gets `code`); returns at once. At shutdown aiohttp then waits
        for their handlers together with every other request in flight, all within SHUTDOWN_TIMEOUT,
        so slow close handshakes and a slow request do not add up."""
        for bridge in list(self):
            bridge.end(code, reason)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """For wss upstreams: the default verifying context, made once (it costs milliseconds)."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def aclose(self) -> None:
        self._ssl = None
