"""The command line's hybrid-mode helpers: `authproxy service-key NAME` and `authproxy technitium migrate`.

Both print a secret exactly once, on stdout, with the line to put in the env file, and nowhere else
(no log line carries it). Explanations go to stderr, so `... > line.env` captures only the line.
"""

from __future__ import annotations

import re
import sys

from authproxy.app import upstream_client
from authproxy.config.schema import Config
from authproxy.errors import UpstreamError
from authproxy.login.service import new_key
from authproxy.upstreams.technitium import TechnitiumAdapter
from authproxy.upstreams.technitium_admin import MigrationError

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def service_key(name: str) -> int:
    """A new service API key: the key (give it to the client) and its SERVICE_API_KEYS entry."""
    if not _NAME.match(name):
        print("authproxy: the name may use letters, digits and _ . @ - (at most 64)", file=sys.stderr)
        return 2
    key, entry = new_key(name)
    print(
        f"the key for {name!r}, shown once: give it to the client (X-API-Key: <key>, or "
        "Authorization: Bearer <key>); add the second line to SERVICE_API_KEYS (comma-separated)",
        file=sys.stderr,
    )
    print(key)
    print(entry)
    return 0


async def technitium_migrate(config: Config, site_name: str | None) -> int:
    """With TECHNITIUM_CLUSTER_TOKEN (an administrator's token), make the dedicated background user
    and its DnsClient-View-only token, checked; print `TECHNITIUM_BACKGROUND_TOKEN=...` once."""
    # Pending means what /me's migrationRequired says: a cluster token where people sign in.
    sites = [
        s
        for s in config.sites
        if config.session_mode
        and s.type == "technitium"
        and s.cluster_token is not None
        and (site_name is None or s.name == site_name)
    ]
    if len(sites) != 1:
        print(
            "authproxy: no migration is pending (migration_not_pending): no Technitium site"
            + (f" named {site_name!r}" if site_name else "")
            + " has TECHNITIUM_CLUSTER_TOKEN (the shared admin token the migration replaces)",
            file=sys.stderr,
        )
        return 2
    site = sites[0]
    assert site.cluster_token is not None
    http = upstream_client(config)
    try:
        adapter = TechnitiumAdapter(site, http)
        admin = adapter.service_credential(site.cluster_token.reveal())
        if not await adapter.may_administer(admin):
            print(
                "authproxy: TECHNITIUM_CLUSTER_TOKEN may not administer users (Administration: View, Modify "
                "and Delete), or Technitium refused it",
                file=sys.stderr,
            )
            return 1
        made = await adapter.create_background_token(admin)
    except MigrationError as exc:
        print(f"authproxy: migration failed: {exc}", file=sys.stderr)
        return 1
    except UpstreamError as exc:
        print(
            f"authproxy: Technitium is not answering ({type(exc).__name__}); nothing was changed",
            file=sys.stderr,
        )
        return 1
    finally:
        await http.close()
    print(
        f"created Technitium user {made.username!r} (DnsClient: View only; check: {made.check.reason}).\n"
        "Put the next line into the env file, remove TECHNITIUM_CLUSTER_TOKEN, and restart authproxy "
        "(Compose: docker compose up -d --force-recreate; systemd: systemctl restart authproxy). "
        "The token is shown this once.",
        file=sys.stderr,
    )
    print(f"TECHNITIUM_BACKGROUND_TOKEN={made.token}")
    return 0
