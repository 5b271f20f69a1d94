"""A FakeTechnitium (v15, user alice / alice-pass) for the Compose tests, run in a container of the
stack: `python -m tests.deploy.fake_upstream PORT`. It listens on every address of its own container
(the stack's network), which is how the app of a real deployment is reached.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from tests.fakes.technitium import FakeTechnitium

ALICE = ("alice", "alice-pass")  # as in tests/support/technitium.py (which needs pytest)


async def serve(port: int) -> None:
    fake = FakeTechnitium(api_version=15)
    fake.add_user(*ALICE, display_name="Alice Example")
    runner = web.AppRunner(fake.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    print(f"fake technitium listening on {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
