"""One access decision, pure (no I/O): allow, ask to sign in, or deny.

The upstream stays the source of truth for what a person may do inside it; this only decides who
may reach it at all (optional per-site user and group lists).
"""

from __future__ import annotations

from typing import Literal

from authproxy.config.schema import SiteConfig
from authproxy.sessions.model import Session

Decision = Literal["allow", "login", "deny"]


def decide(session: Session | None, site: SiteConfig, *, session_mode: bool) -> Decision:
    if not session_mode:
        return "allow" if site.service_token is not None else "deny"
    if session is None or site.name not in session.credentials:
        return "login"
    if site.allowed_users and session.user.lower() not in site.allowed_users:
        return "deny"
    if site.allowed_groups and not set(site.allowed_groups) & set(session.identity.groups):
        return "deny"
    return "allow"
