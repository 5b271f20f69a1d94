"""A small TCP relay for fault tests: put it between authproxy and Redis (or an upstream) and make the
network slow, silent or gone, without touching either side.

    relay = await TcpRelay("127.0.0.1", target_port).start()   # relay.port: where to connect instead
    relay.delay = 0.1   # each chunk, both ways, waits 100 ms (a slow link)
    relay.hang()        # bytes stop flowing both ways, connections stay open (a black hole)
    relay.flow()        # bytes flow again (what was held back is delivered)
    await relay.down()  # connections reset, new ones refused (a dead host or process)
    await relay.up()    # accepting again on the same port
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.support.procs import free_port


class TcpRelay:
    def __init__(self, host: str, port: int, *, listen_port: int | None = None) -> None:
        self.target = (host, port)
        self.port = listen_port or free_port()
        self.delay = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpRelay:
        await self.up()
        return self

    async def up(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port,
                                                      reuse_address=True)

    async def down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    def hang(self) -> None:
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        self.flow()
        await self.down()
        for task in list(self._tasks):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                await self._flowing.wait()
                if self.delay:
                    await asyncio.sleep(self.delay)
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(dst)
            with contextlib.suppress(Exception):
                dst.close()
