"""TOTP for local accounts (pyotp, RFC 6238) and its recovery codes; the enrolment QR code (segno).

Recovery codes are ten digits (the sign-in form's code field takes digits), ten of them, each good
once: only their SHA-256 is kept, inside the sealed account. A TOTP code that opened a session is
refused again for the replay window by the sign-in itself (login/passthrough.py).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import pyotp
import segno

from authproxy.accounts.model import Totp

ISSUER = "authproxy"
RECOVERY_CODES = 10


def new_secret() -> str:
    return pyotp.random_base32()


def uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)


def qr_svg(text: str) -> str:
    """The QR code of `text` as an inline SVG element (no script, no external image)."""
    return str(segno.make(text, error="m").svg_inline(scale=4, title="TOTP enrolment QR code"))


def code_ok(secret: str, code: str) -> bool:
    return bool(secret) and pyotp.TOTP(secret).verify(code, valid_window=1)


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def new_recovery_codes(state: Totp) -> list[str]:
    """Ten fresh codes (shown once); the state keeps only their hashes."""
    codes = [f"{secrets.randbelow(10**10):010d}" for _ in range(RECOVERY_CODES)]
    state.recovery = [_digest(c) for c in codes]
    return codes


def check(state: Totp, code: str) -> bool | None:
    """None: neither a valid TOTP code nor an unused recovery code. False: a TOTP code. True: a
    recovery code, now used up (the caller saves the state)."""
    if len(code) == 6 and code_ok(state.secret, code):
        return False
    digest = _digest(code)
    for i, stored in enumerate(state.recovery):
        if hmac.compare_digest(stored, digest):
            del state.recovery[i]
            return True
    return None
