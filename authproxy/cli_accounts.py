"""`authproxy users ...` and `authproxy keys ...`: local accounts and upstream keys on the configured store
(the SQLite file in the data directory, or Redis with REDIS_URL), for every running replica at once.

A password or key is read from stdin (`--password-stdin`, and always for a key's secret), never from the
command line (where `ps` and the shell history would show it). Without one, `users add` and
`users reset-password` make a random password, print it once on stdout, and the person must change it
at the first sign-in. A change of role, status or password ends that person's sessions everywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from authproxy.accounts import passwords
from authproxy.accounts.model import KEY_NAME, ROLES, USERNAME, Account, Resource, new_id
from authproxy.accounts.store import AccountStore, NameTaken
from authproxy.config.schema import Config
from authproxy.crypto import Keyring
from authproxy.log import audit
from authproxy.sessions.manager import SessionManager
from authproxy.sessions.registry import create_store


class CliError(Exception):
    """A problem to print as one line (exit 2)."""


def add_parsers(sub: Any, config_arg: Callable[[argparse.ArgumentParser], object]) -> None:
    users = sub.add_parser("users", help="authproxy's own accounts (AUTH_MODE=local)")
    u = users.add_subparsers(dest="users_command", required=True)
    add = u.add_parser("add", help="make an account (a random password is printed once unless "
                                   "--password-stdin)")
    add.add_argument("username")
    add.add_argument("--role", choices=ROLES, default="viewer")
    add.add_argument("--email", default="")
    add.add_argument("--keys", default="", help="comma-separated key ids or names the person may use")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    u.add_parser("list", help="every account (no secrets)")
    role = u.add_parser("set-role", help="change a role (ends the person's sessions)")
    role.add_argument("username")
    role.add_argument("role", choices=ROLES)
    reset = u.add_parser("reset-password", help="a new password, to be changed at the next sign-in")
    reset.add_argument("username")
    reset.add_argument("--password-stdin", action="store_true")
    for name, help_ in (("disable", "refuse the account's sign-in and end its sessions"),
                        ("enable", "allow the account's sign-in again"),
                        ("delete", "remove the account and end its sessions"),
                        ("reset-totp", "turn the account's TOTP off (it may enrol again)")):
        u.add_parser(name, help=help_).add_argument("username")
    imp = u.add_parser("import", help="accounts from a users.json (bcrypt hashes are upgraded at sign-in)")
    imp.add_argument("file", type=Path)
    exp = u.add_parser("export", help="accounts as JSON (with password hashes; no TOTP secrets)")
    exp.add_argument("file", type=Path, nargs="?")
    keys = sub.add_parser("keys", help="upstream keys (resources) local accounts may use")
    k = keys.add_subparsers(dest="keys_command", required=True)
    kadd = k.add_parser("add", help="add a key; its secret is read from stdin and never shown again")
    kadd.add_argument("name")
    kadd.add_argument("--algorithm", default="")
    kadd.add_argument("--site", default="", help="the site it is for (default: any local site)")
    k.add_parser("list", help="every key: id, name, algorithm, site (never the secret)")
    kdel = k.add_parser("delete", help="remove a key")
    kdel.add_argument("key", help="its id or name")
    for parser in (*u.choices.values(), *k.choices.values()):
        config_arg(parser)


def _read_stdin(what: str) -> str:
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"{what}: ")
    return sys.stdin.readline().rstrip("\r\n")


async def _with_store(config: Config, work: Callable[[AccountStore, SessionManager], Awaitable[int]]) -> int:
    store = create_store(config)
    await store.start()
    keyring = Keyring(config.session.secrets)
    try:
        return await work(AccountStore(store, keyring), SessionManager(store=store, keyring=keyring,
                                                                       config=config.session))
    except CliError as exc:
        print(f"authproxy: {exc}", file=sys.stderr)
        return 2
    finally:
        await store.close()


async def _account(accounts: AccountStore, username: str) -> Account:
    found = await accounts.by_name(username)
    if found is None:
        raise CliError(f"no account named {username!r}")
    return found


async def _end_sessions(config: Config, manager: SessionManager, username: str) -> int:
    return sum([await manager.end_account(s.name, username) for s in config.sites if s.local_accounts])


async def _not_last_admin(accounts: AccountStore, account: Account) -> None:
    if account.role == "admin" and not account.disabled and not any(
            a.id != account.id for a in await accounts.admins()):
        raise CliError(f"{account.username!r} is the last admin; make another admin first")


def _password(args: argparse.Namespace, username: str) -> tuple[str, bool]:
    """The new password and whether it was generated (then printed once, and must be changed)."""
    if args.password_stdin:
        password = _read_stdin("password")
        problem = passwords.problem(password, username)
        if problem is not None:
            raise CliError(problem)
        return password, False
    return secrets.token_urlsafe(18), True


async def _resolve_keys(accounts: AccountStore, wanted: str) -> list[str]:
    known = await accounts.keys()
    ids = []
    for item in (w.strip() for w in wanted.split(",") if w.strip()):
        match = [k.id for k in known if item in (k.id, k.name)]
        if not match:
            raise CliError(f"no key {item!r}; see `authproxy keys list`")
        ids.extend(match)
    return list(dict.fromkeys(ids))


async def _add(accounts: AccountStore, args: argparse.Namespace) -> int:
    if USERNAME.fullmatch(args.username) is None:
        raise CliError("the user name may use letters, digits and . _ @ - (at most 64)")
    password, generated = _password(args, args.username)
    account = Account(id=new_id(), username=args.username, role=args.role, email=args.email,
                      password_hash=passwords.hash_password(password),
                      allowed_key_ids=await _resolve_keys(accounts, args.keys),
                      must_change_password=generated)
    try:
        await accounts.create(account)
    except NameTaken:
        raise CliError(f"there is already an account named {args.username!r}") from None
    _audit("user_created", account, role=account.role)
    _said(f"created {account.username!r} ({account.role}, id {account.id})", password if generated else None)
    return 0


def users(config: Config, args: argparse.Namespace) -> int:
    command = args.users_command

    async def work(accounts: AccountStore, manager: SessionManager) -> int:
        if command == "list":
            for a in await accounts.all():
                print(f"{a.id}  {a.username:<24} {a.role:<7} {'disabled' if a.disabled else 'enabled ':<8} "
                      f"totp={'on' if a.totp.enabled else 'off'} keys={','.join(a.allowed_key_ids) or '-'}")
            return 0
        if command == "add":
            return await _add(accounts, args)
        if command == "import":
            return await _import(accounts, args.file)
        if command == "export":
            return _export([a.to_dict() for a in await accounts.all()], args.file)
        return await _change(config, accounts, manager, args)

    return asyncio.run(_with_store(config, work))


async def _change(config: Config, accounts: AccountStore, manager: SessionManager,
                  args: argparse.Namespace) -> int:
    """set-role, disable, enable, delete, reset-password, reset-totp: then the person's sessions end."""
    command = args.users_command
    account = await _account(accounts, args.username)
    shown: str | None = None
    if command == "set-role":
        if args.role != "admin":
            await _not_last_admin(accounts, account)
        account.role = args.role
    elif command in ("disable", "delete"):
        await _not_last_admin(accounts, account)
        account.disabled = True
    elif command == "enable":
        account.disabled = False
    elif command == "reset-password":
        password, generated = _password(args, account.username)
        account.password_hash = passwords.hash_password(password)
        account.must_change_password = True
        shown = password if generated else None
    elif command == "reset-totp":
        account.totp = type(account.totp)()
    if command == "delete":
        await accounts.delete(account)
    else:
        await accounts.save(account)
    ended = await _end_sessions(config, manager, account.username)
    _audit(f"user_{command.replace('-', '_')}", account, sessions_ended=ended)
    _said(f"{command}: {account.username!r} done; {ended} session(s) ended", shown)
    return 0


def _audit(outcome: str, account: Account, **extra: Any) -> None:
    audit("admin", outcome=outcome, user=os.environ.get("USER", "cli"), actor="service", via="cli",
          target=account.username, **extra)


def _said(message: str, password: str | None) -> None:
    """The message on stderr; a generated password once on stdout (and nowhere else)."""
    if password is None:
        print(message, file=sys.stderr)
        return
    print(f"{message}; the password, shown once (it must be changed at the first sign-in):", file=sys.stderr)
    print(password)


async def _import(accounts: AccountStore, path: Path) -> int:
    """A users.json of another tool: a list of users, or {"users": [...]}, with bcrypt (or argon2) hashes."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {str(path)!r} as JSON ({exc.__class__.__name__})") from None
    items = data.get("users") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise CliError("the file must hold a list of users (or {\"users\": [...]})")
    made = skipped = 0
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("username"), str):
            print(f"  entry {i}: no username; skipped", file=sys.stderr)
            skipped += 1
            continue
        stored = item.get("passwordHash", item.get("password_hash", item.get("password", "")))
        if not isinstance(stored, str) or not (passwords.is_bcrypt(stored) or stored.startswith("$argon2")):
            print(f"  {item['username']!r}: no bcrypt or argon2 password hash; skipped", file=sys.stderr)
            skipped += 1
            continue
        account = Account.from_dict({**item, "id": new_id(), "passwordHash": stored, "totp": None})
        if USERNAME.fullmatch(account.username) is None:
            print(f"  {account.username!r}: not a usable user name; skipped", file=sys.stderr)
            skipped += 1
            continue
        try:
            await accounts.create(account)
        except NameTaken:
            print(f"  {account.username!r}: already here; skipped", file=sys.stderr)
            skipped += 1
            continue
        _audit("user_imported", account, role=account.role)
        made += 1
    print(f"imported {made} account(s), skipped {skipped}", file=sys.stderr)
    return 0


def _export(rows: list[dict[str, Any]], path: Path | None) -> int:
    for row in rows:
        row.pop("totp", None)
    text = json.dumps({"users": rows}, indent=2) + "\n"
    if path is None:
        sys.stdout.write(text)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


def keys(config: Config, args: argparse.Namespace) -> int:
    command = args.keys_command

    async def work(accounts: AccountStore, manager: SessionManager) -> int:
        if command == "list":
            for k in await accounts.keys():
                print(f"{k.id}  {k.name:<32} {k.algorithm or '-':<16} site={k.site or '*'}")
            return 0
        if command == "add":
            if KEY_NAME.fullmatch(args.name) is None:
                raise CliError("the key name may use letters, digits and . _ : @ / - (at most 128)")
            if args.site and args.site not in {s.name for s in config.sites}:
                raise CliError(f"no site named {args.site!r}")
            secret = _read_stdin("secret")
            if not secret or not secret.isprintable():
                raise CliError("the secret (read from stdin) is empty or not printable")
            resource = Resource(id=new_id(), name=args.name, secret=secret, algorithm=args.algorithm,
                                site=args.site)
            try:
                await accounts.add_key(resource)
            except NameTaken:
                raise CliError(f"there is already a key named {args.name!r}") from None
            audit("admin", outcome="key_created", user=os.environ.get("USER", "cli"), actor="service",
                  via="cli", key=resource.name, key_id=resource.id)
            print(resource.id)
            return 0
        found = [k for k in await accounts.keys() if args.key in (k.id, k.name)]
        if len(found) != 1:
            raise CliError(f"no single key {args.key!r}; see `authproxy keys list`")
        await accounts.delete_key(found[0].id)
        audit("admin", outcome="key_deleted", user=os.environ.get("USER", "cli"), actor="service", via="cli",
              key=found[0].name, key_id=found[0].id)
        print(f"deleted key {found[0].name!r}", file=sys.stderr)
        return 0

    return asyncio.run(_with_store(config, work))
