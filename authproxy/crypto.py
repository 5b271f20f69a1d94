"""Secrets that cannot print, a rotating signing keyring, and AES-GCM sealing.

The cookie carries a per-session key; the store holds only what that key seals. So a dump of the
store yields neither a cookie (no signature key) nor a token (no sealing key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class Secret:
    """A string that never shows itself in repr/str/logs; `.reveal()` is the one way out."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._value.encode()).digest())


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    """Strict url-safe base64 without padding; raises ValueError on anything else."""
    if not text or len(text) > 4096 or _B64_URL.fullmatch(text) is None:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# The same check as `all(c in _B64_ALPHABET for c in text)`, done in C with fullmatch (a per-character
# generator was most of the cost of decoding a session ticket on every request).
_B64_URL = re.compile(r"[A-Za-z0-9_-]+")


class Keyring:
    """HMAC keys for signing: the first signs, every one verifies (rotation without logouts)."""

    def __init__(self, secrets_: Sequence[Secret]) -> None:
        if not secrets_:
            raise ValueError("a keyring needs at least one secret")
        # Derive fixed-size keys so short or long operator secrets behave the same.
        self._keys = [hashlib.sha256(b"authproxy-sign\x00" + s.reveal().encode()).digest() for s in secrets_]

    def sign(self, message: bytes) -> bytes:
        return hmac.new(self._keys[0], message, hashlib.sha256).digest()

    def verify(self, message: bytes, signature: bytes) -> bool:
        ok = False
        for key in self._keys:
            # No early exit: every key is tried so timing does not reveal which one matched.
            ok |= hmac.compare_digest(hmac.new(key, message, hashlib.sha256).digest(), signature)
        return ok

    def derive(self, purpose: str) -> bytes:
        """A stable sub-key of the newest secret for another purpose (e.g. the used-TOTP keys)."""
        return hmac.new(self._keys[0], purpose.encode(), hashlib.sha256).digest()

    def derive_all(self, purpose: str) -> list[bytes]:
        """`derive` under every secret, newest first: what was sealed before a rotation still opens."""
        return [hmac.new(key, purpose.encode(), hashlib.sha256).digest() for key in self._keys]


NONCE_SIZE = 12


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, blob: bytes, aad: bytes) -> bytes | None:
    """Plaintext, or None when the blob was not sealed with this key and aad."""
    if len(blob) <= NONCE_SIZE + 16:
        return None
    try:
        return AESGCM(key).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
    except (InvalidTag, ValueError):
        return None
