"""What an adapter declares about its UI's own sign-in calls: data and pure functions, no web, no I/O.

A UI behind authproxy still runs its own sign-in page and sign-out button. The adapter says which of
its calls are which (`UpstreamAdapter.ui_call`) and how the product words each outcome
(`UpstreamAdapter.ui_words`); web/uicalls.py answers them, with the same sign-in and sign-out code as
the JSON API. The calls:

    sign_in    the UI's login form: authproxy signs in with what it sends (Technitium)
    signed_in  the UI's login call while the person is signed in already: answered, never forwarded
               (the login API is only ever called by authproxy, throttled and audited); without a
               session it goes upstream as usual (qBittorrent, generic)
    sign_out   the UI's logout: ends the authproxy session, and through it the upstream ones
    session    the UI's "who is signed in" call (Technitium's session/get)
    entry      a page load of the UI's start page (Technitium: hand the UI its placeholder)

The outcomes a product may word (`None` from `ui_words`: authproxy's own answer):

    ok             done (sign_in: the UI's login answer; signed_in: "you are signed in")
    totp_required  the upstream wants the one-time code
    failed         refused (bad input, wrong password, throttled, upstream down, plain HTTP)
    refused        a call another site made the browser send
    no_session     nobody is signed in (for sign_out in AUTH_MODE=none: `ok`)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

UiCall = Literal["sign_in", "signed_in", "sign_out", "session", "entry"]
Outcome = Literal["ok", "totp_required", "failed", "refused", "no_session"]

# In Credential.extra: the UI already got its placeholder (in its login answer or by the entry handoff).
HANDOFF_FLAG = "ui_placeholder_sent"
# Methods that `ui_foreign_writes` (a product's own answer to cross-site writes) never applies to.
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@dataclass(frozen=True, slots=True)
class UiAnswer:
    """A product's answer as data (status, headers with the Content-Type, body); web/ sends it."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, doc: Any, *, status: int = 200, compact: bool = False,
             headers: dict[str, str] | None = None) -> UiAnswer:
        text = json.dumps(doc, separators=(",", ":")) if compact else json.dumps(doc)
        return cls(
            status, text.encode(), {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        )

    @classmethod
    def text(cls, text: str, *, status: int = 200, content_type: str = "text/plain; charset=utf-8",
             headers: dict[str, str] | None = None) -> UiAnswer:
        return cls(status, text.encode(), {"Content-Type": content_type, **(headers or {})})


@dataclass(frozen=True, slots=True)
class Handoff:
    """A UI that reads its token from a cookie on load (Technitium's SSO handoff): once per credential,
    a page load gets this short-lived, script-readable cookie holding the session's placeholder."""

    cookie: str
    max_age: int
