"""One exception tree for the whole gateway.

    AuthProxyError
    ├── ConfigError            start-up: every problem at once, each naming the variable and the fix
    ├── StoreError             the session store cannot be reached (→ 503, fail closed)
    ├── UpstreamError
    │   ├── UpstreamUnavailable   connection refused, timeout, 5xx (→ 502, transient)
    │   └── UpstreamProtocolError the upstream answered something we cannot read (→ 502)
    └── AuthError              a login decision that the user must see (bad credentials, TOTP, throttled)

Messages never contain secrets: callers pass only names and public facts.
"""

from __future__ import annotations


class AuthProxyError(Exception):
    """Base class; `code` is the stable machine-readable error code used in JSON answers."""

    code = "internal_error"


class ConfigError(AuthProxyError):
    code = "config_error"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StoreError(AuthProxyError):
    code = "store_unavailable"


class UpstreamError(AuthProxyError):
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class AuthError(AuthProxyError):
    """A login outcome shown to the person; `status` is the HTTP status to answer with."""

    code = "auth_error"
    status = 401

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after


class ListenError(AuthProxyError):
    """A listener could not open its address (port busy, no permission): one line names it and the fix."""

    code = "listen_error"
