"""Sign-in: validate, throttle, ask the identity source (login/sources.py), audit, open a session."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from yarl import URL

from authproxy.crypto import b64e
from authproxy.errors import AuthError, StoreError
from authproxy.log import audit
from authproxy.login.keepalive import UpstreamKeepalive
from authproxy.login.regulation import Regulator
from authproxy.login.sources import IdentitySource, UpstreamAccounts
from authproxy.routing import Site
from authproxy.sessions.manager import LoadedSession, SessionManager
from authproxy.upstreams.base import LoginResult

MAX_USERNAME = 256
MAX_PASSWORD = 1024
# Technitium's UI tries admin/admin by itself when it has no token; the upstream does not count it.
UNCOUNTED_DEFAULTS = {("admin", "admin")}
# A one-time code that opened a session is refused for this long (RFC 6238 5.2: a verifier must not
# accept the same code twice), in the store, so every worker and replica agrees. It must outlast the
# widest window an upstream accepts a code in: Technitium takes +/-10 periods of 30 s, 630 s in all.
TOTP_REPLAY_WINDOW = 660.0
BAD_CODE = "Invalid username, password or code."   # what a wrong code gets (upstreams/technitium.py)


_UNPAIRED = "is not valid text (it holds an unpaired UTF-16 surrogate, such as \\ud800)"


def _encodable(text: str) -> bool:
    """Whether `text` is real Unicode: JSON's `\\ud800` escape gives a string no encoder accepts, and the
    throttle key, the audit line and the upstream's request would each fail on it later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text_problem(name: str) -> str | None:
    """What is wrong with a user name, said once here for every later use (throttle key, upstream form,
    audit log): an unpaired surrogate, or a control character (C0, DEL, C1: a line break or an escape
    sequence in someone's log)."""
    if not _encodable(name):
        return _UNPAIRED
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "contains a control character"
    return None


def verifier(site: Site) -> str:
    """The upstream that checks a site's one-time codes, as one string: its URL's scheme, host
    (lower case), port and path (no trailing slash)."""
    url = URL(site.config.upstream_url)
    path = url.path.rstrip("/")
    return f"{url.scheme.lower()}://{(url.host or '').lower()}:{url.port}{path}"


@dataclass(frozen=True, slots=True)
class LoginInput:
    username: str
    password: str
    totp: str | None

    @classmethod
    def parse(cls, data: object) -> LoginInput:
        if not isinstance(data, dict):
            raise AuthError("Send username and password.", code="bad_request", status=400)
        username, password, totp = (
            data.get("username", data.get("user")),
            data.get("password", data.get("pass")),
            data.get("totp"),
        )
        if (
            not isinstance(username, str)
            or not isinstance(password, str)
            or not username.strip()
            or not password
        ):
            raise AuthError("Send username and password.", code="bad_request", status=400)
        if len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
            raise AuthError("Username or password is too long.", code="bad_request", status=400)
        problem = _text_problem(username)
        if problem:
            raise AuthError(f"The username {problem}.", code="bad_request", status=400)
        if not _encodable(password):
            raise AuthError(f"The password {_UNPAIRED}.", code="bad_request", status=400)
        if totp is not None and not isinstance(totp, (str, int)):
            raise AuthError("The code must be digits.", code="bad_request", status=400)
        totp_text = str(totp).strip() if totp not in (None, "") else None
        if totp_text is not None and not (
            totp_text.isascii() and totp_text.isdigit() and len(totp_text) <= 10
        ):
            raise AuthError("The code must be digits.", code="bad_request", status=400)
        return cls(username=username.strip(), password=password, totp=totp_text)


class PassthroughLogin:
    """Every sign-in, whatever the identity source: throttled before it is asked, audited after."""

    def __init__(self, sessions: SessionManager, regulator: Regulator,
                 keepalive: UpstreamKeepalive | None = None, *, source: IdentitySource | None = None,
                 names: Callable[[str], Awaitable[str | None]] | None = None) -> None:
        self.sessions = sessions
        self.names = names   # the reverse name of a client address (login/background.py), for the audit
        self.regulator = regulator
        self.keepalive = keepalive
        self.source = source if source is not None else UpstreamAccounts()
        self._totp_hash_key = sessions.keyring.derive("authproxy-totp-used")

    def _totp_key(self, site: Site, username: str, code: str) -> str:
        """Where a one-time code that opened a session is remembered: a keyed hash of the upstream that
        checks it, the user and the code (six digits hash to one of a million values, so an unkeyed hash
        would give the code away). The upstream is its URL, not the site's name: two sites in front of
        one upstream share its accounts (a code used at one is spent at the other), while two
        deployments sharing a store may both call their site `default` for different upstreams."""
        message = f"{verifier(site)}\x00{username.lower()}\x00{code}".encode("utf-8", "surrogatepass")
        return "totp:" + b64e(hmac.new(self._totp_hash_key, message, hashlib.sha256).digest()[:18])

    async def step_up(self, site: Site, form: LoginInput, client_ip: str) -> LoginResult:
        """A signed-in person proves again, with their upstream password (and code), that they are at
        the keyboard before a sensitive step (the background-token migration). Throttled, replay-guarded
        and audited (`step_up`) exactly as a sign-in, sharing its budget; opens no session. The result
        carries a fresh upstream credential, which the caller signs out when done."""
        return await self._verified(site, form, client_ip, event="step_up")

    async def _verified(self, site: Site, form: LoginInput, client_ip: str, *, event: str) -> LoginResult:
        """The identity source's "ok" for these credentials, or AuthError (audited as `event`)."""
        counted = (form.username.lower(), form.password) not in UNCOUNTED_DEFAULTS
        attempt = await self.regulator.begin(site.name, form.username, client_ip)
        if attempt.retry_after is not None:
            audit(event, outcome="throttled", user=form.username, site=site.name, client_ip=client_ip)
            raise AuthError(
                "Too many failed sign-ins. Try again later.",
                code="too_many_attempts",
                status=429,
                retry_after=attempt.retry_after,
            )
        used = None if form.totp is None else self._totp_key(site, form.username, form.totp)
        try:
            if used is not None and not await self.sessions.store.set_if_absent(used, b"1",
                                                                                TOTP_REPLAY_WINDOW):
                used = None  # another sign-in holds it: not this one's to give back
                if counted:
                    attempt.failed()
                audit(event, outcome="totp_reused", user=form.username, site=site.name, client_ip=client_ip,
                      totp=True)
                raise AuthError(BAD_CODE, code="invalid_credentials", status=401)
            result = await self.source.verify(site, form.username, form.password, form.totp, client_ip)
            if result.status == "totp_required":
                audit(
                    event, outcome="totp_required", user=form.username, site=site.name, client_ip=client_ip
                )
                raise AuthError(
                    result.message or "Enter your one-time code.", code="totp_required", status=401
                )
            if result.status == "blocked":
                audit(event, outcome="upstream_blocked", user=form.username, site=site.name,
                      client_ip=client_ip)
                raise AuthError(result.message, code="upstream_blocked", status=429,
                                retry_after=result.retry_after)
            if result.status != "ok" or result.credential is None or result.identity is None:
                if counted:
                    attempt.failed()
                audit(event, outcome="failure", user=form.username, site=site.name, client_ip=client_ip,
                      totp=form.totp is not None)
                raise AuthError(result.message or "Invalid username or password.", code="invalid_credentials",
                                status=401)
            await attempt.succeeded()
            used = None  # spent: it stays remembered for the window
        finally:
            await (
                attempt.refund()
            )  # neither failed nor succeeded: the upstream down, a prompt, a default probe
            if used is not None:  # it opened no session (wrong password, upstream down): a retry may use it
                with contextlib.suppress(StoreError):
                    await self.sessions.store.delete(used)
        return result

    async def sign_in(self, site: Site, form: LoginInput, client_ip: str) -> tuple[LoadedSession, str]:
        """A new session and its cookie value, or AuthError saying why not (already audited)."""
        result = await self._verified(site, form, client_ip, event="login")
        assert result.credential is not None and result.identity is not None
        loaded, cookie = await self.sessions.create(user=result.identity.username, site=site.name,
                                                    identity=result.identity, credential=result.credential,
                                                    client_ip=client_ip, auth_method=self.source.name)
        if self.keepalive is not None:
            self.keepalive.note_use(loaded, site.name)
        named = await self.names(client_ip) if self.names is not None else None
        audit("login", outcome="success", user=result.identity.username, site=site.name, client_ip=client_ip,
              session=loaded.public_id, **({"client_name": named} if named else {}))
        return loaded, cookie
