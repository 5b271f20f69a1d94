"""Credential policies: what a site's upstream is sent, decided per site.

The other half of who-is-who (login/sources.py says *who the person is*): whoever signed in, the
site's policy picks the credential authproxy injects on the way to the upstream.

    OwnCredential      the person's own upstream credential for the site, from their session
                       (AUTH_MODE=session)
    HybridCredential   people as in OwnCredential; the site's service credential only for a service
                       client (an authproxy API key with the service role), never for an anonymous
                       request (AUTH_MODE=hybrid)
    ServiceCredential  the site's service credential, whoever asks (AUTH_MODE=none)
    SignedInService    the site's service credential, for whoever signed in (a one-time code, or a JWT
                       bearer token); nothing for anyone else (AUTH_MODE=otp)

The proxy and forward auth ask `site.policy.credential(session, site.name)` and nothing else, so a
new policy (a resource credential a person may use, say) never touches them.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from authproxy.sessions.model import Credential, Session


class CredentialPolicy(abc.ABC):
    """Which credential a site's upstream gets for a request."""

    @abc.abstractmethod
    def credential(self, session: Session | None, site: str) -> Credential | None:
        """The credential to inject for `session` (None: nobody signed in) at `site`; None: none."""

    def for_service(self) -> Credential | None:
        """The credential an authenticated service client's request gets (None: service clients are
        not served here)."""
        return None

    def for_token(self, roles: Sequence[str]) -> Credential | None:
        """The credential a request with a valid JWT bearer token (and these roles) gets; None: a
        token is not enough here (a person's own upstream credential cannot travel in a token)."""
        return None


class OwnCredential(CredentialPolicy):
    """The person's own upstream credential, obtained when they signed in to this site."""

    def credential(self, session: Session | None, site: str) -> Credential | None:
        return session.credentials.get(site) if session is not None else None


@dataclass(frozen=True, slots=True)
class ServiceCredential(CredentialPolicy):
    """The site's service credential (built once, by the adapter, from the configured token)."""

    service: Credential | None

    def credential(self, session: Session | None, site: str) -> Credential | None:
        return self.service


@dataclass(frozen=True, slots=True)
class HybridCredential(OwnCredential):
    """People with their own credential; the service credential only for service clients."""

    service: Credential | None

    def for_service(self) -> Credential | None:
        return self.service

    def for_token(self, roles: Sequence[str]) -> Credential | None:
        return self.service if "service" in roles else None


@dataclass(frozen=True, slots=True)
class SignedInService(CredentialPolicy):
    """The service credential for whoever proved who they are to authproxy here (the session's marker
    for the site: a one-time code's sign-in, which carries no secret); none for anyone else."""

    service: Credential | None

    def credential(self, session: Session | None, site: str) -> Credential | None:
        marker = session.credentials.get(site) if session is not None else None
        return self.service if marker is not None and marker.kind == OTP_KIND else None

    def for_token(self, roles: Sequence[str]) -> Credential | None:
        return self.service


OWN = OwnCredential()
# The kind of the marker credential a one-time code's sign-in leaves for each site it opens (no secret;
# login/otp.py makes it): the site's own "credential" is then the service credential.
OTP_KIND = "otp"


def policy_for(auth_mode: str, service: Credential | None, *, otp: bool = False) -> CredentialPolicy:
    """The policy AUTH_MODE implies for a site (`service`: its service credential, if configured;
    `otp`: the site signs in with one-time codes, `auth = "otp"`)."""
    if auth_mode == "none":
        return ServiceCredential(service)
    if auth_mode == "otp" or otp:
        return SignedInService(service)
    return HybridCredential(service) if auth_mode == "hybrid" else OWN
