"""One access decision, pure (no I/O): allow, ask to sign in, or deny.

The upstream stays the source of truth for what a person may do inside it; this only decides who
may reach it at all (optional per-site user and group lists: ALLOWED_USERS / ALLOWED_GROUPS, or
`allowed_users` / `allowed_groups` in a `[[sites]]` table).

One session can hold credentials for several sites, each signed in with that site's own account
(alice on dns.example.com, bob on nas.example.com). The allow lists of a site are checked against the
account that holds *that site's* credential (sessions/model.py `site_identity`), never against whoever
signed in last.

    decide(None, site)                       -> "login"
    decide(session without site's cred)      -> "login"   (sign in to this site, keep the others)
    decide(session, site with allow lists)   -> "allow" | "deny"   ("deny" is final: no login loop)
"""

from __future__ import annotations

from typing import Literal

from authproxy.config.schema import SiteConfig
from authproxy.sessions.model import Session, site_identity

Decision = Literal["allow", "login", "deny"]

def decide(session: Session | None, site: SiteConfig, *, session_mode: bool) -> Decision:
    if not session_mode:
        return "allow" if site.service_token is not None else "deny"
    if session is None:
        return "login"
    identity = site_identity(session, site.name)
    if identity is None:
        return "login"
    if site.allowed_users and identity.username.lower() not in {u.lower() for u in site.allowed_users}:
        return "deny"
    if site.allowed_groups:
        wanted = {g.lower() for g in site.allowed_groups}
        if not wanted & {g.lower() for g in identity.groups}:
            return "deny"
    return "allow"
