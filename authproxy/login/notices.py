"""System notices over the one-time-code webhook: a sign-in from a new address, a lockout, a service
credential found too privileged or unreadable (also at start-up).

They are read off the audit log (`authproxy.audit`, whose lines by design never hold a secret), so no
sign-in path has to know about them, and the text is built from a few named fields only. Rate-limited
in the store, so replicas agree: one notice per kind and subject every NOTICE_INTERVAL, and at most
MAX_PER_HOUR in all. Sending never delays a request (a task), and a failed send is only logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

from authproxy.crypto import b64e
from authproxy.errors import StoreError
from authproxy.login.regulation import client_network
from authproxy.login.webhook import DeliveryError, Webhook
from authproxy.sessions.store import SessionStore

NOTICE_INTERVAL = 600.0
MAX_PER_HOUR = 20
SEEN_FOR = 180 * 86400.0   # how long an address stays "known" for a user
log = logging.getLogger("authproxy")


def _key(*parts: str) -> str:
    return b64e(hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).digest()[:18])


def shown(text: str, limit: int = 64) -> str:
    """A name as a notice shows it: whoever typed it chose it (a throttled sign-in's user name), so no
    markup reaches the chat (inline code: Discord and Slack render no link or mention in it), no line
    break, no more than `limit` characters."""
    clean = "".join(c for c in text if c.isprintable() and c != "`")[:limit]
    return f"`{clean}`"


def notice_for(fields: dict[str, Any]) -> tuple[str, str, str] | None:
    """(kind, subject, text) for an audit line that deserves a notice; None for the rest."""
    event, outcome = fields.get("event"), fields.get("outcome")
    user, ip = str(fields.get("user", "")), str(fields.get("client_ip", ""))
    site = str(fields.get("site", ""))
    if event == "login" and outcome == "success":
        return "new_address", f"{user}\x00{client_network(ip)}", (
            f"New sign-in for {shown(user)} from {shown(ip)}" + (f" at {shown(site)}." if site else "."))
    if event in ("login", "otp_request") and outcome == "throttled":
        return "lockout", f"{user}\x00{client_network(ip)}", (
            f"Lockout: too many attempts for {shown(user)} from {shown(ip)}; refused for now.")
    if event == "background_token" and outcome in ("unsafe", "unreadable"):
        why = "too privileged" if outcome == "unsafe" else "unreadable"
        return "service_credential", site, (
            f"The service credential of {shown(site)} is {why}: background work and service clients there "
            "are off until it is fixed (see /me).")
    return None


class Notices(logging.Handler):
    """A handler on the audit logger that turns some lines into webhook notices."""

    def __init__(self, webhook: Webhook, store: SessionStore) -> None:
        super().__init__(logging.INFO)
        self.webhook = webhook
        self.store = store
        self._tasks: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()   # set once the store runs; notices heard before wait for it

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        found = notice_for(fields) if isinstance(fields, dict) else None
        if found is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._send(*found))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _due(self, kind: str, subject: str) -> bool:
        if kind == "new_address":   # only a first sign-in from this network
            if not await self.store.set_if_absent(f"notice:seen:{_key(subject)}", b"1", SEEN_FOR):
                return False
        elif not await self.store.set_if_absent(f"notice:{kind}:{_key(subject)}", b"1", NOTICE_INTERVAL):
            return False
        return await self.store.incr("notice:hour", 3600.0) <= MAX_PER_HOUR

    async def _send(self, kind: str, subject: str, text: str) -> None:
        await self.ready.wait()
        try:
            if not await self._due(kind, subject):
                return
            await self.webhook.send({"message": f"authproxy: {text}", "code": "", "minutes": "", "time": "",
                                     "username": "", "client_ip": ""})
        except (DeliveryError, StoreError) as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("notice not sent", extra={"fields": {"kind": kind, "reason": reason}})

    async def drain(self) -> None:
        """Let the notices in flight finish (briefly), then stop."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)
