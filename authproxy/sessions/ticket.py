"""The cookie value: `v1.<id>.<key>.<sig>` — an opaque, signed, versioned ticket.

`id` names the session (the store sees only a hash of it), `key` is the per-session AES-GCM key
(never stored server-side) and `sig` is an HMAC over both under the keyring, so a forged or
truncated cookie is rejected before any store round trip.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from authproxy.crypto import Keyring, b64d, b64e

VERSION = "v1"
MAX_TICKET_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Ticket:
    session_id: bytes
    key: bytes

    @property
    def store_key(self) -> str:
        """What the store is keyed by: a hash, so a store dump cannot be turned back into cookies."""
        return "s:" + b64e(hashlib.sha256(b"authproxy-session\x00" + self.session_id).digest())

    def encode(self, keyring: Keyring) -> str:
        body = f"{VERSION}.{b64e(self.session_id)}.{b64e(self.key)}"
        return f"{body}.{b64e(keyring.sign(body.encode()))}"


def new_ticket() -> Ticket:
    return Ticket(session_id=secrets.token_bytes(18), key=secrets.token_bytes(32))


def decode_ticket(value: str | None, keyring: Keyring) -> Ticket | None:
    """The ticket, or None for anything malformed, oversized or not signed by one of our keys."""
    if not value or len(value) > MAX_TICKET_LENGTH:
        return None
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != VERSION:
        return None
    try:
        session_id, key, sig = b64d(parts[1]), b64d(parts[2]), b64d(parts[3])
    except ValueError:
        return None
    if len(session_id) != 18 or len(key) != 32 or len(sig) != 32:
        return None
    if not keyring.verify(f"{parts[0]}.{parts[1]}.{parts[2]}".encode(), sig):
        return None
    return Ticket(session_id=session_id, key=key)
