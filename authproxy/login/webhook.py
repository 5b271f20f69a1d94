"""Messages to a chat channel by webhook: one-time codes, and system notices (login/notices.py).

    DiscordWebhook   DISCORD_WEBHOOK_URL: Discord's execute-webhook JSON (`{"content": ...}`), with its
                     `429` + `Retry-After` honoured (waited out and tried again, within the timeout)
    TemplateWebhook  OTP_WEBHOOK_URL: any service that takes a JSON POST (Slack, ntfy, Gotify, ...), the
                     body built from OTP_WEBHOOK_TEMPLATE by putting the fields into its strings (after
                     parsing, so a field can never change the JSON's shape)

A webhook URL is a secret (Discord's carries the webhook's token in its path): it is never logged,
and a failure is told by kind only (`status 500`, `timeout`, `ClientConnectorError`).
"""

from __future__ import annotations

import abc
import asyncio
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from authproxy.config.passwordless import DEFAULT_TEMPLATE
from authproxy.config.schema import OtpConfig
from authproxy.crypto import Secret

MAX_TRIES = 3
_FIELD = re.compile(r"\{\{(\w+)\}\}")


class DeliveryError(Exception):
    """The message did not reach the webhook; the text says how, never where."""


class Webhook(abc.ABC):
    """One configured webhook. `sent` is what the code request answers once the code is delivered."""

    kind: str
    sent: str

    def __init__(self, url: Secret, http: Callable[[], aiohttp.ClientSession], timeout: float) -> None:
        self._url = url
        self._http = http
        self.timeout = timeout

    @abc.abstractmethod
    def payload(self, fields: Mapping[str, str]) -> Any:
        """The JSON body for a message with these fields (`message` is the whole text)."""

    async def send(self, fields: Mapping[str, str]) -> None:
        """Deliver, waiting out 429s within the timeout; DeliveryError when it did not arrive."""
        body = json.dumps(self.payload(fields)).encode()
        try:
            async with asyncio.timeout(self.timeout):
                await self._post(body)
        except TimeoutError:
            raise DeliveryError("timeout") from None
        except aiohttp.ClientError as exc:
            # Only the exception's kind: its text can quote the URL.
            raise DeliveryError(type(exc).__name__) from None

    async def _post(self, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        for _ in range(MAX_TRIES):
            async with self._http().post(self._url.reveal(), data=body, allow_redirects=False,
                                         headers={"Content-Type": "application/json"}) as resp:
                if 200 <= resp.status < 300:
                    return
                if resp.status != 429:
                    raise DeliveryError(f"status {resp.status}")
                wait = _retry_after(resp.headers.get("Retry-After"), await _json_or_none(resp))
            if wait is None or loop.time() + wait > deadline:
                raise DeliveryError("status 429 (rate limited longer than the timeout)")
            await asyncio.sleep(wait)
        raise DeliveryError("status 429 (still rate limited)")


async def _json_or_none(resp: aiohttp.ClientResponse) -> Any:
    try:
        return json.loads(await resp.content.read(16384))
    except ValueError:
        return None


def _retry_after(header: str | None, body: Any) -> float | None:
    """Seconds to wait: the Retry-After header (seconds; Discord sends fractions too), else Discord's
    `retry_after` in the JSON body; None when neither says."""
    for value in (header, body.get("retry_after") if isinstance(body, dict) else None):
        try:
            seconds = float(value) if value is not None else math.nan
        except (TypeError, ValueError):
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


class DiscordWebhook(Webhook):
    kind = "discord"
    sent = "OTP sent to Discord webhook"

    def payload(self, fields: Mapping[str, str]) -> Any:
        # allowed_mentions: a user name like "@everyone" must not ping the channel.
        return {"content": fields["message"], "username": "authproxy", "allowed_mentions": {"parse": []}}


def fill(template: Any, fields: Mapping[str, str]) -> Any:
    """The parsed template with {{field}} replaced inside every string (keys and values)."""
    if isinstance(template, str):
        return _FIELD.sub(lambda m: fields.get(m.group(1), m.group(0)), template)
    if isinstance(template, list):
        return [fill(item, fields) for item in template]
    if isinstance(template, dict):
        return {fill(k, fields): fill(v, fields) for k, v in template.items()}
    return template


class TemplateWebhook(Webhook):
    kind = "webhook"
    sent = "OTP sent"

    def __init__(self, url: Secret, http: Callable[[], aiohttp.ClientSession], timeout: float,
                 template: str) -> None:
        super().__init__(url, http, timeout)
        self.template = json.loads(template or DEFAULT_TEMPLATE)

    def payload(self, fields: Mapping[str, str]) -> Any:
        return fill(self.template, fields)


def webhook_for(config: OtpConfig, http: Callable[[], aiohttp.ClientSession]) -> Webhook | None:
    if config.discord_webhook_url is not None:
        return DiscordWebhook(config.discord_webhook_url, http, config.webhook_timeout)
    if config.webhook_url is not None:
        return TemplateWebhook(config.webhook_url, http, config.webhook_timeout, config.webhook_template)
    return None
