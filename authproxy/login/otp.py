"""One-time codes by webhook (AUTH_MODE=otp): the identity source of a single-owner box.

A request makes a 6-digit code (`secrets`), keeps only a keyed hash of it with its expiry and a nonce
in the store under the user's key (a new request replaces it: the previous code stops working), and
sends the code to the webhook. Nothing tells a known user from an unknown one: both get the same
answer, both are counted, only a known one gets a code.

A verify is throttled per user and address (the sign-in budget, login/regulation.py), counts an
attempt against the code itself (OTP_MAX_ATTEMPTS wrong guesses and the code is gone), compares in
constant time, and spends the code with `set_if_absent` on its nonce: of two concurrent verifies of
one code, on any replicas sharing the store, exactly one wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from authproxy.config.schema import OtpConfig
from authproxy.crypto import b64d, b64e
from authproxy.errors import AuthError, StoreError
from authproxy.log import audit, log
from authproxy.login.regulation import Regulator, client_network
from authproxy.login.webhook import DeliveryError, Webhook
from authproxy.sessions.model import Identity
from authproxy.sessions.store import SessionStore

INVALID = "Invalid or expired OTP"
DIGITS = 6
MAX_USERNAME = 256
DEFAULT_USER = "admin"
ROLES = ("admin",)   # the owner of a single-owner box
_RANDOM = secrets.SystemRandom()


class DeliveryFailed(Exception):
    """The code could not be delivered (none is left usable)."""


@dataclass(frozen=True, slots=True)
class CodeRequest:
    username: str
    client_ip: str


def _invalid() -> AuthError:
    return AuthError(INVALID, code="invalid_otp", status=401)


def parse_username(value: object) -> str:
    if value is None or value == "":
        return DEFAULT_USER
    if (not isinstance(value, str) or len(value) > MAX_USERNAME or not value.strip()
            or not value.isprintable()):
        raise AuthError("`username` must be a user name.", code="bad_request", status=400)
    return value.strip().lower()


def parse_code(value: object) -> str:
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not text:
        raise AuthError("Send the code: {\"otp\": \"123456\"}.", code="bad_request", status=400)
    return text


class OneTimeCodes:
    """Request, deliver, verify. `clock` is wall-clock seconds (tests move it)."""

    def __init__(self, store: SessionStore, regulator: Regulator, hash_key: bytes, config: OtpConfig,
                 webhook: Webhook, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.regulator = regulator
        self.config = config
        self.webhook = webhook
        self.clock = clock
        self._key = hash_key
        self._delivery_time = 0.3   # seconds a delivery takes, a moving average (unknown users wait as long)

    def _user_key(self, username: str) -> str:
        return "otp:code:" + b64e(hmac.new(self._key, username.encode(), hashlib.sha256).digest()[:18])

    def _hash(self, username: str, nonce: str, code: str) -> bytes:
        return hmac.new(self._key, f"{username}\x00{nonce}\x00{code}".encode(), hashlib.sha256).digest()

    def known(self, username: str) -> bool:
        return username in self.config.users

    async def request(self, req: CodeRequest) -> str:
        """Make and send a code for a known user (unknown: nothing is sent, the same answer); the
        answer's message. AuthError 429 when over the budget; DeliveryFailed when the webhook failed."""
        retry_after = await self._over_request_budget(req)
        if retry_after is not None:
            audit("otp_request", outcome="throttled", user=req.username, client_ip=req.client_ip)
            raise AuthError("Too many code requests. Try again later.", code="too_many_attempts", status=429,
                            retry_after=retry_after)
        if not self.known(req.username):
            audit("otp_request", outcome="unknown_user", user=req.username, client_ip=req.client_ip)
            # As long as a delivery takes, give or take: the answer's time does not tell who exists.
            await asyncio.sleep(self._delivery_time * _RANDOM.uniform(0.8, 1.2))
            return self.webhook.sent
        code = f"{secrets.randbelow(10**DIGITS):0{DIGITS}d}"
        nonce = secrets.token_urlsafe(12)
        now = self.clock()
        expires = now + self.config.expiration
        record = json.dumps({"n": nonce, "h": b64e(self._hash(req.username, nonce, code)), "exp": expires})
        key = self._user_key(req.username)
        await self.store.set(key, record.encode(), self.config.expiration)
        minutes = round(self.config.expiration / 60)
        when = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        message = (f"authproxy sign-in code for {req.username}: {code}\n"
                   f"It expires in {minutes} minutes. Requested at {when} from {req.client_ip or 'unknown'}.")
        fields = {"code": code, "minutes": str(minutes), "time": when, "username": req.username,
                  "client_ip": req.client_ip, "message": message}
        started = time.monotonic()
        try:
            await self.webhook.send(fields)
            self._delivery_time += (min(time.monotonic() - started, 5.0) - self._delivery_time) / 4
        except DeliveryError as exc:
            await self._withdraw(key, nonce)
            log.warning("otp: the code could not be delivered; it was withdrawn",
                        extra={"fields": {"webhook": self.webhook.kind, "reason": str(exc)}})
            audit("otp_request", outcome="delivery_failed", user=req.username, client_ip=req.client_ip)
            raise DeliveryFailed(str(exc)) from None
        audit("otp_request", outcome="sent", user=req.username, client_ip=req.client_ip,
              webhook=self.webhook.kind)
        return self.webhook.sent

    async def _over_request_budget(self, req: CodeRequest) -> int | None:
        """Every request counts (each one may post to the channel), per user and per address, apart from
        the sign-in failures (asking for codes must not lock anyone out of using one). Seconds to wait
        when either budget is spent, else None."""
        window = self.regulator.config.window
        worst = None
        for kind, value in (("u", req.username), ("ip", client_network(req.client_ip))):
            key = f"otp:req:{kind}:" + b64e(hashlib.sha256(value.encode()).digest()[:18])
            if await self.store.incr(key, window) > self.config.max_requests:
                left = await self.store.ttl(key)
                worst = max(worst or 1, math.ceil(left if left is not None else window))
        return worst

    async def _withdraw(self, key: str, nonce: str) -> None:
        """No usable code is left behind: spend its nonce, then drop it unless a newer one replaced it."""
        with contextlib.suppress(StoreError):
            await self.store.set_if_absent(f"otp:used:{nonce}", b"1", self.config.expiration)
            current = await self.store.get(key)
            if current is not None and json.loads(current).get("n") == nonce:
                await self.store.delete(key)

    async def verify(self, username: str, code: str, client_ip: str) -> Identity:
        """The identity the code proves, or AuthError (401 invalid_otp, 429 too_many_attempts)."""
        attempt = await self.regulator.begin("otp", username, client_ip)
        if attempt.retry_after is not None:
            audit("login", outcome="throttled", user=username, client_ip=client_ip, method="otp")
            raise AuthError("Too many failed sign-ins. Try again later.", code="too_many_attempts",
                            status=429, retry_after=attempt.retry_after)
        try:
            outcome = await self._check(username, code)
        except BaseException:
            await attempt.refund()   # the store failed: not the person's failure
            raise
        if outcome != "ok":
            attempt.failed()
            audit("login", outcome=outcome, user=username, client_ip=client_ip, method="otp")
            raise _invalid()
        await attempt.succeeded()
        return Identity(username=username, display_name=username, groups=ROLES)

    async def _check(self, username: str, code: str) -> str:
        key = self._user_key(username)
        raw = await self.store.get(key) if self.known(username) else None
        if raw is None:
            return "failure"
        record = json.loads(raw)
        nonce, stored, expires = str(record["n"]), b64d(str(record["h"])), float(record["exp"])
        if self.clock() >= expires:
            await self.store.delete(key)
            return "expired"
        tries = await self.store.incr(f"otp:tries:{nonce}", self.config.expiration)
        if tries > self.config.max_attempts:
            await self._withdraw(key, nonce)
            return "too_many_tries"
        if not (len(code) == DIGITS and code.isascii() and code.isdigit()):
            return "failure"
        if not hmac.compare_digest(self._hash(username, nonce, code), stored):
            return "failure"
        if not await self.store.set_if_absent(f"otp:used:{nonce}", b"1", self.config.expiration):
            return "reused"
        current = await self.store.get(key)
        if current is None or json.loads(current).get("n") != nonce:
            return "replaced"   # a newer request (or the expiry) ended this code while it was checked
        await self.store.delete(key)
        return "ok"
