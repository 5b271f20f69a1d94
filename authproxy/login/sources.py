"""Identity sources: who the person is.

A source signs a person in, possibly in steps (a password, then a one-time code), and answers with
an `Identity` (name, display name, groups as roles) and, when it got one on the way, the upstream
credential for the site. `PassthroughLogin` (login/passthrough.py) wraps every source the same way:
throttling before it is asked, the audit line after, a new session on success. The other half, what
the upstream is sent, is the site's credential policy (policy.py).

    UpstreamAccounts  the site's own login API, through its adapter: the person's account there, and
                      the upstream token it hands out
    LocalAccounts     authproxy's own accounts (login/local.py), for sites with auth = "local"

Next sources (authproxy's own accounts, one-time codes by webhook) answer the same `LoginResult`:
`ok`, `totp_required` (the next step: send the code too), `invalid` or `blocked`.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from authproxy.routing import Site
from authproxy.upstreams.base import LoginResult


class IdentitySource(abc.ABC):
    """Proves who a person is; `name` is recorded as the session's `auth_method`."""

    name: ClassVar[str]

    @abc.abstractmethod
    async def verify(self, site: Site, username: str, password: str, totp: str | None,
                     client_ip: str) -> LoginResult:
        """One step of signing in at `site`; raises UpstreamError when the source cannot be asked."""


class UpstreamAccounts(IdentitySource):
    """Sign in with the upstream's own login API: the person's account there is who they are."""

    name: ClassVar[str] = "passthrough"

    async def verify(self, site: Site, username: str, password: str, totp: str | None,
                     client_ip: str) -> LoginResult:
        return await site.adapter.login(username, password, totp, client_ip)
