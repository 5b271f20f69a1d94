"""What a TrueNAS client holds instead of a TrueNAS token: its authproxy session, sealed, with an end.

`auth.generate_token` and `reconnect_token` answer a placeholder: the session's cookie value and an
expiry, sealed (AES-GCM) under a key derived from authproxy's session secret, bound to the site's name.
`TOKEN_PLAIN` with it on any socket, until then, is that session again (the UI's reload, a client
library a person handed it to); it reveals nothing, and opens nothing once the session has ended.
"""

from __future__ import annotations

import json

from authproxy.crypto import Keyring, b64d, b64e, seal, unseal
from authproxy.sessions.manager import LoadedSession

PREFIX = "authproxy_"
DEFAULT_SECONDS = 600    # unless the client asks for another ttl (60 s to a day)
MAX_LENGTH = 2048


def _key(keyring: Keyring) -> bytes:
    return keyring.derive("authproxy-truenas-handoff")


def issue(loaded: LoadedSession, keyring: Keyring, site: str, now: float, ttl: object = None) -> str:
    """A placeholder for `loaded` at `site`, good for `ttl` seconds (never past the session's end)."""
    seconds = min(max(ttl if isinstance(ttl, int) else DEFAULT_SECONDS, 60), 86400)
    until = min(now + seconds, loaded.session.expires_at)
    plain = json.dumps([loaded.ticket.encode(keyring), until]).encode()
    return PREFIX + b64e(seal(_key(keyring), plain, site.encode()))


def cookie_of(token: str, keyring: Keyring, site: str, now: float) -> str | None:
    """The session cookie value a placeholder stands for (None: not ours, tampered, or expired)."""
    if not token.startswith(PREFIX) or len(token) > MAX_LENGTH:
        return None
    try:
        plain = unseal(_key(keyring), b64d(token[len(PREFIX):]), site.encode())
        cookie, until = json.loads(plain) if plain is not None else (None, 0)
    except ValueError:
        return None
    if not isinstance(cookie, str) or not isinstance(until, (int, float)) or now > until:
        return None
    return cookie
