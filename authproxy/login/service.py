"""Service clients: automation that authenticates to authproxy as a service, not as a person.

In AUTH_MODE=hybrid a request without a session may still be a service client's: one of the keys in
SERVICE_API_KEYS (each configured as `name:sha256:<hex>`; the key is sent as `X-API-Key: <key>` or
`Authorization: Bearer <key>`). Its requests use the site's service credential, and each one is
audited with `actor: service` and the key's name. Keys are compared by their SHA-256 against every
configured digest in constant time (hmac.compare_digest, no early exit), so neither a key nor how
much of one matched can be timed.

Other ways to prove a service identity (a JWT with the `service` role) are further
`ServiceAuthenticator`s in the same `ServiceGate`; the proxy and forward auth ask only the gate.

    authenticate(headers) -> ServiceClient   a known service
                          -> REFUSED         it said it is one (X-API-Key) but is not: 401
                          -> None            no service credential presented: an anonymous request
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from authproxy.config.schema import ServiceKey

API_KEY_HEADER = "X-API-Key"
KEY_PREFIX = "apk_"


@dataclass(frozen=True, slots=True)
class ServiceClient:
    """Who the service is (the key's configured name) and how it proved it."""

    name: str
    via: str


Refused = Literal["refused"]
REFUSED: Final[Refused] = "refused"
Outcome = ServiceClient | Refused | None


class ServiceAuthenticator(abc.ABC):
    """One way a service proves who it is."""

    @abc.abstractmethod
    def authenticate(self, headers: Mapping[str, str]) -> Outcome:
        """The service client the headers prove, REFUSED for a wrong one, None when none is presented."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class ApiKeys(ServiceAuthenticator):
    """SERVICE_API_KEYS: `X-API-Key`, or a Bearer value that is one of the keys."""

    def __init__(self, keys: Sequence[ServiceKey]) -> None:
        self.keys = tuple(keys)

    def _match(self, presented: str) -> ServiceKey | None:
        given = digest(presented)
        found: ServiceKey | None = None
        for key in self.keys:  # every digest compared, whichever matches
            if hmac.compare_digest(given, key.digest) and found is None:
                found = key
        return found

    def authenticate(self, headers: Mapping[str, str]) -> Outcome:
        if not self.keys:
            return None
        explicit = headers.get(API_KEY_HEADER)
        if explicit is not None:
            key = self._match(explicit.strip())
            return ServiceClient(key.name, "api_key") if key is not None else REFUSED
        auth = headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            # A Bearer that is no key may be a UI's own placeholder: then this is not a service request.
            key = self._match(auth[7:].strip())
            return ServiceClient(key.name, "api_key") if key is not None else None
        return None


class ServiceGate:
    """Every configured way to prove a service identity, asked in order."""

    def __init__(self, authenticators: Sequence[ServiceAuthenticator]) -> None:
        self.authenticators = tuple(authenticators)

    def __bool__(self) -> bool:
        return bool(self.authenticators)

    def authenticate(self, headers: Mapping[str, str]) -> Outcome:
        for authenticator in self.authenticators:
            outcome = authenticator.authenticate(headers)
            if outcome is not None:
                return outcome
        return None


def new_key(name: str) -> tuple[str, str]:
    """A new key and its SERVICE_API_KEYS entry (`name:sha256:<hex>`); the key is shown once."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, f"{name}:sha256:{digest(key).hex()}"
