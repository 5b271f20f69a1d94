"""What every fake upstream shares: a real aiohttp app on 127.0.0.1, port chosen by the kernel."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Self

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve a small test-only app on a free port of `host`; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    try:
        yield f"http://{host}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class LoopbackServer:
    """Mixin: `self.app` served on a free loopback port; `async with Fake(...) as fake:` works."""

    app: web.Application
    _runner: web.AppRunner | None = None
    _port: int = 0

    async def start(self) -> Self:
        """Listen on 127.0.0.1, port chosen by the kernel."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self._port}"
