"""After setup_logging, nothing the process writes to stderr bypasses authproxy's redacting handler.

Each way Python or a library reports a problem by itself is triggered in a fresh interpreter (logging
configuration is process-wide, so not in the test process) with a secret in the exception text or the
message; its stderr must hold a line for each, and neither the secret nor a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-7f1c9a2b4d6e8f00"

SCRIPT = textwrap.dedent(f"""
    import asyncio, gc, logging, sys, threading, warnings
    from authproxy.log import setup_logging

    setup_logging(level="INFO", fmt=sys.argv[1])
    SECRET = {SECRET!r}

    # aiohttp's server: a refused request, logged with the exception that quotes the raw line
    try:
        raise ValueError(f"Bad status line: b'GET /x?k={{SECRET}} HTTP/1.1 junk'")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")
    # a logger that stopped propagating and has no handler: Python's fallback handler
    lost = logging.getLogger("somelib")
    lost.propagate = False
    try:
        raise RuntimeError(SECRET)
    except RuntimeError:
        lost.error("somelib failed", exc_info=True)
    # a record that cannot be formatted: logging prints the message and its arguments
    logging.getLogger("aiohttp.client").warning("%d requests", SECRET)
    # asyncio's default exception handler: a task's exception never retrieved
    async def fail():
        raise OSError(SECRET)
    async def main():
        asyncio.get_running_loop().create_task(fail())
        await asyncio.sleep(0.01)
    asyncio.run(main())
    gc.collect()
    # a warning (a message, not an exception: redacted like every message)
    warnings.warn(f"deprecated: GET /x?token={{SECRET}} with Bearer {{SECRET}}")
    # an exception in another thread
    t = threading.Thread(target=lambda: (_ for _ in ()).throw(KeyError(SECRET)))
    t.start(); t.join()
    # an exception in __del__ (unraisable)
    class Leaky:
        def __del__(self):
            raise LookupError(SECRET)
    Leaky()
    gc.collect()
    # and at last an uncaught exception in the main thread
    raise SystemError(SECRET)
""")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_every_report_goes_through_the_redacting_handler(fmt: str) -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT, fmt], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=False, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    err = result.stderr
    assert result.returncode == 1, err  # the uncaught exception still ends the process with 1
    assert SECRET not in err and SECRET[:12] not in err, err
    assert "Traceback" not in err and 'File "' not in err and "--- Logging error ---" not in err, err
    for what in (
        "Error handling request from 127.0.0.1",
        "somelib failed",
        "Task exception was never retrieved",
        "deprecated",
        "unexpected error in a thread",
        "exception ignored (unraisable)",
        "authproxy stopped on an unexpected error",
        "ValueError",
        "RuntimeError",
        "OSError",
        "KeyError",
        "LookupError",
        "SystemError",
    ):
        assert what in err, f"{what!r} missing from:\n{err}"
    if fmt == "json":
        for line in err.splitlines():
            json.loads(line)  # one JSON object per line, nothing else
