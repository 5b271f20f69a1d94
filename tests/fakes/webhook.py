"""WebhookReceiver: a real aiohttp app that takes webhook posts the way Discord's execute-webhook endpoint
does, and tells the test what arrived.

Discord (https://discord.com/developers/docs/resources/webhook#execute-webhook): `POST
/api/webhooks/{id}/{token}` with a JSON body holding `content`; `204 No Content` on success; when rate
limited, `429` with a `Retry-After` header (seconds) and a JSON body `{"message": "You are being rate
limited.", "retry_after": <seconds>, "global": false}`
(https://discord.com/developers/docs/topics/rate-limits). Any other path takes a generic JSON post
(Slack, ntfy, Gotify) and answers `200 {}`.

The test steers the next answers: `fail_next(500)`, `rate_limit_next(times, retry_after)`, `delay = 5`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.fakes.server import LoopbackServer

__all__ = ["Post", "WebhookReceiver", "webhook_receiver"]

DISCORD_PATH = "/api/webhooks/1234567890/wh-token-SECRET-d1sc0rd"


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: Any
    answered: int


@dataclass
class WebhookReceiver(LoopbackServer):
    posts: list[Post] = field(default_factory=list)
    delay: float = 0.0
    _failures: list[int] = field(default_factory=list)
    _limits: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_post("/{tail:.*}", self._post)

    @property
    def discord_url(self) -> str:
        return self.url + DISCORD_PATH

    def fail_next(self, status: int, times: int = 1) -> None:
        self._failures.extend([status] * times)

    def rate_limit_next(self, times: int, retry_after: float) -> None:
        self._limits.extend([retry_after] * times)

    def delivered(self) -> list[Post]:
        return [p for p in self.posts if 200 <= p.answered < 300]

    def code(self) -> str:
        """The code in the last delivered message that holds one (Discord's `content`, or anywhere in a
        generic body); system notices, which hold none, are passed over."""
        for post in reversed(self.delivered()):
            found = re.findall(r"\b\d{6}\b", json.dumps(post.body))
            if found:
                return str(found[0])
        raise AssertionError(f"no code was delivered: {[p.body for p in self.posts]!r}")

    def notices(self) -> list[str]:
        """The texts of the system notices delivered (messages that start with `authproxy: `)."""
        texts = [str(p.body.get("content") or p.body.get("text") or p.body.get("message") or "")
                 for p in self.delivered()]
        return [t for t in texts if t.startswith("authproxy: ")]

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        if self.delay:
            await asyncio.sleep(self.delay)
        status, extra = 204 if request.path.startswith("/api/webhooks/") else 200, None
        if self._limits:
            wait = self._limits.pop(0)
            status = 429
            extra = web.json_response(
                {"message": "You are being rate limited.", "retry_after": wait, "global": False},
                status=429, headers={"Retry-After": f"{wait:g}", "X-RateLimit-Scope": "user"})
        elif self._failures:
            status = self._failures.pop(0)
        self.posts.append(Post(request.path, dict(request.headers), body, status))
        if extra is not None:
            return extra
        if status == 204:
            return web.Response(status=204)
        return web.json_response({} if status < 300 else {"message": "error"}, status=status)


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.close()
