"""`authproxy sessions list|revoke` and `authproxy version`: the operator's commands.

They read the same configuration as `authproxy run` (environment, --config), so they open the same
store with the same SESSION_SECRET (or the one generated into the data directory): run them where the
server runs (`docker compose exec authproxy authproxy sessions list`, or with the unit's EnvironmentFile).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

from authproxy.config.schema import Config
from authproxy.crypto import Keyring
from authproxy.sessions.admin import SessionAdmin, SessionInfo
from authproxy.sessions.manager import MARKER_PURPOSE
from authproxy.sessions.registry import create_store

MIN_PREFIX = 4


def version_text() -> str:
    import aiohttp

    from authproxy.metrics import version as authproxy_version

    return (f"authproxy {authproxy_version()} (Python {platform.python_version()}, "
            f"aiohttp {aiohttp.__version__})")


def _admin(config: Config) -> SessionAdmin:
    keys = Keyring(config.session.secrets).derive_all(MARKER_PURPOSE) if config.session.secrets else []
    return SessionAdmin(create_store(config), keys)


async def sessions(config: Config, args: argparse.Namespace) -> int:
    database = config.server.data_dir / "sessions.sqlite3"
    if config.session.redis_url is None and not database.exists():   # never create one by looking
        print(f"authproxy sessions: no session store at {database} (AUTHPROXY_DATA_DIR); nothing has "
              "signed in there yet, or this is not the server's data directory", file=sys.stderr)
        return 1
    admin = _admin(config)
    await admin.store.start()
    try:
        if args.sessions_command == "list":
            return await _list(config, admin, args)
        return await _revoke(config, admin, args)
    finally:
        await admin.store.close()


async def _list(config: Config, admin: SessionAdmin, args: argparse.Namespace) -> int:
    found = await admin.sessions(args.user, tuple(s.name for s in config.sites))
    if args.json:
        print(json.dumps([s.as_json() for s in found], indent=2))
        return 0
    if not found:
        print("no live sessions" + (f" for {args.user!r}" if args.user else ""))
        return 0
    rows: list[tuple[str, ...]] = [
        ("ID", "USER", "SITE", "SIGNED IN", "CLIENT", "CREATED (UTC)", "IDLE ENDS", "ENDS AT THE LATEST")]
    rows += [_row(s) for s in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    print(f"{len(found)} session(s)")
    return 0


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t is not None else "?"


def _row(s: SessionInfo) -> tuple[str, ...]:
    return (s.id, s.user, s.site, s.auth_method, s.client_ip, _when(s.created_at), _when(s.idle_expires_at),
            _when(s.expires_at))


async def _revoke(config: Config, admin: SessionAdmin, args: argparse.Namespace) -> int:
    if args.all:
        ids = [s.id for s in await admin.sessions()]
    elif args.user is not None:
        ended = await admin.revoke_user(args.user, tuple(s.name for s in config.sites))
        print(f"revoked {ended} session(s); they are signed out on every worker and replica now")
        return 0
    else:
        prefix = args.id.strip().lower()
        if len(prefix) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in prefix):
            print(f"authproxy sessions revoke: give a session ID as `sessions list` shows it (at least "
                  f"{MIN_PREFIX} hex digits), --user NAME or --all", file=sys.stderr)
            return 2
        ids = await admin.find(prefix)
        if len(ids) > 1:
            print(f"authproxy sessions revoke: {prefix!r} matches {len(ids)} sessions; give more digits",
                  file=sys.stderr)
            return 2
        if not ids:
            print(f"authproxy sessions revoke: no live session {prefix!r}", file=sys.stderr)
            return 1
    ended = await admin.revoke(ids)
    print(f"revoked {ended} session(s); they are signed out on every worker and replica now")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], config_help: str) -> None:
    """The `sessions` and `version` subcommands."""
    sub.add_parser("version", help="print authproxy's version (and Python's, aiohttp's)")
    sessions_ = sub.add_parser("sessions", help="list or revoke sessions in the configured store")
    sessions_sub = sessions_.add_subparsers(dest="sessions_command", required=True)
    list_ = sessions_sub.add_parser("list", help="the live sessions (ID, user, site, client, times)")
    list_.add_argument("--user", help="only this user's sessions")
    list_.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    revoke = sessions_sub.add_parser("revoke", help="sign sessions out, on every worker and replica")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="a session ID from `sessions list` (or a unique prefix)")
    which.add_argument("--user", help="every session of this user")
    which.add_argument("--all", action="store_true", help="every session")
    for p in (list_, revoke):
        p.add_argument("--config", type=_path, help=config_help)


def _path(text: str) -> object:
    from pathlib import Path

    return Path(text)
