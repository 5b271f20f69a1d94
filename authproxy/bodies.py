"""Reading a body up to a limit: the one loop every bounded read goes through.

aiohttp's `StreamReader.read(n)` returns as soon as *anything* is buffered, so a single call can stop
at the first TCP segment or chunk: a login body, a form to rewrite or an upstream's JSON envelope
would then be silently cut short. `read_up_to` keeps reading until the body ends or `limit` bytes are in.
"""

from __future__ import annotations

import aiohttp


async def read_up_to(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body's first `limit` bytes, or all of it when it is shorter. Callers that must tell
    "too long" apart ask for `limit + 1`."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)
