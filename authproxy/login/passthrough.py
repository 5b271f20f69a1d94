"""Sign-in with the upstream's own credentials: validate, throttle, ask the upstream, open a session."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from authproxy.errors import AuthError
from authproxy.log import audit
from authproxy.login.keepalive import UpstreamKeepalive
from authproxy.login.regulation import Regulator
from authproxy.routing import Site
from authproxy.sessions.manager import LoadedSession, SessionManager

MAX_USERNAME = 256
MAX_PASSWORD = 1024
# Technitium's UI tries admin/admin by itself when it has no token; the upstream does not count it.
UNCOUNTED_DEFAULTS = {("admin", "admin")}


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


@dataclass(frozen=True, slots=True)
class LoginInput:
    username: str
    password: str
    totp: str | None

    @classmethod
    def parse(cls, data: object) -> LoginInput:
        if not isinstance(data, dict):
            raise AuthError("Send username and password.", code="bad_request", status=400)
        username, password, totp = data.get("username", data.get("user")), data.get("password", data.get("pass")), \
            data.get("totp")
        if not isinstance(username, str) or not isinstance(password, str) or not username.strip() or not password:
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
        if totp_text is not None and not (totp_text.isascii() and totp_text.isdigit() and len(totp_text) <= 10):
            raise AuthError("The code must be digits.", code="bad_request", status=400)
        return cls(username=username.strip(), password=password, totp=totp_text)


class PassthroughLogin:
    def __init__(self, sessions: SessionManager, regulator: Regulator,
                 keepalive: UpstreamKeepalive | None = None) -> None:
        self.sessions = sessions
        self.regulator = regulator
        self.keepalive = keepalive

    async def sign_in(self, site: Site, form: LoginInput, client_ip: str) -> tuple[LoadedSession, str]:
        """A new session and its cookie value, or AuthError saying why not (already audited)."""
        counted = (form.username.lower(), form.password) not in UNCOUNTED_DEFAULTS
        attempt = await self.regulator.begin(site.name, form.username, client_ip)
        if attempt.retry_after is not None:
            audit("login", outcome="throttled", user=form.username, site=site.name, client_ip=client_ip)
            raise AuthError("Too many failed sign-ins. Try again later.", code="too_many_attempts", status=429,
                            retry_after=attempt.retry_after)
        try:
            result = await site.adapter.login(form.username, form.password, form.totp, client_ip)
            if result.status == "totp_required":
                audit("login", outcome="totp_required", user=form.username, site=site.name, client_ip=client_ip)
                raise AuthError(result.message or "Enter your one-time code.", code="totp_required", status=401)
            if result.status == "blocked":
                audit("login", outcome="upstream_blocked", user=form.username, site=site.name,
                      client_ip=client_ip)
                raise AuthError(result.message, code="upstream_blocked", status=429,
                                retry_after=result.retry_after)
            if result.status != "ok" or result.credential is None or result.identity is None:
                if counted:
                    attempt.failed()
                audit("login", outcome="failure", user=form.username, site=site.name, client_ip=client_ip,
                      totp=form.totp is not None)
                raise AuthError(result.message or "Invalid username or password.", code="invalid_credentials",
                                status=401)
            await attempt.succeeded()
        finally:
            await attempt.refund()  # neither failed nor succeeded: the upstream down, a prompt, a default probe
        loaded, cookie = await self.sessions.create(user=result.identity.username, site=site.name,
                                                    identity=result.identity, credential=result.credential,
                                                    client_ip=client_ip)
        if self.keepalive is not None:
            self.keepalive.note_use(loaded, site.name)
        audit("login", outcome="success", user=result.identity.username, site=site.name, client_ip=client_ip,
              session=loaded.public_id)
        return loaded, cookie
