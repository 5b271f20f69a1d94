"""A faithful fake of TrueNAS's middleware API: JSON-RPC 2.0 over WebSocket at `/api/current`.

TrueNAS needs its own OS and cannot run here, so the tests talk to this instead. It is a real aiohttp
server on 127.0.0.1 that reproduces what the middleware source does (truenas/middleware,
`src/middlewared/middlewared/`: `plugins/auth.py`, `plugins/auth_/login_ex_impl.py`,
`api/base/server/ws_handler/rpc.py`, `utils/rate_limit/cache.py`, `utils/limits.py`, `auth.py`):

* the session is the socket: `auth.login_ex` authenticates the connection it is called on, every
  later call on it runs as that account, and closing it logs it out;
* `auth.login_ex` mechanisms PASSWORD_PLAIN, API_KEY_PLAIN (`"<id>-<key>"`), TOKEN_PLAIN, OTP_TOKEN;
  answers SUCCESS {user_info, authenticator, reconnect_token}, OTP_REQUIRED {username}, AUTH_ERR,
  EXPIRED, DENIED (no API access), REDIRECT {urls} (an HA standby); OTP_TOKEN with nothing pending is
  EINVAL; a wrong code is AUTH_ERR and drops the pending step; a code is not accepted twice;
  `auth.login_ex_continue` is the same call;
* an API key used over a transport that is neither loopback nor TLS is revoked (EXPIRED, then
  AUTH_ERR) -- the fake treats its peer as remote when `remote_peer` is set;
* `auth.generate_token(ttl=600, attrs={}, match_origin=True, single_use=False)`: 64 url-safe
  characters, TTL from last use, origin matched by address, single-use tokens die on first use, and
  the session that logged in *with* a token destroys that token when it ends;
* legacy `auth.login`, `auth.login_with_api_key`, `auth.login_with_token` (booleans);
* `auth.me` with `privilege.roles` as ejson `{"$set": [...]}` and `two_factor_config.provisioning_uri`
  (the person's TOTP secret); a role that may read but not write (READONLY_ADMIN: `*.query`,
  `*.config`, `system.info` -- every other call is "Not authorized", EACCES);
* errors as JSON-RPC `error` objects: -32601 unknown method, -32600 invalid request, -32700 bad
  JSON, -32001 "Method call error" with `data = {error, errname, reason: "[ENAME] msg", trace, extra}`;
  ENOTAUTHENTICATED (errno 207) for a call that needs a login;
* unauthenticated calls rate-limited per (method, remote address): 20 per 60 s, then a sleep
  (1-10 s upstream; `rate_limit_sleep` here) and EBUSY "Rate Limit Exceeded"; `core.set_options`
  is exempt;
* messages limited to 8 KiB before login (close 1007) and 64 KiB after (close 1009);
* calls run concurrently: `core.sleep` (fake-only) answers after the others, so ids must match;
* the legacy DDP endpoint `/websocket` (`connect`/`connected`, `method`/`result`) and the REST API
  `/api/v2.0/...` (Bearer API key, Basic, `Token`), removed in 26.04 but served by older releases.

Fake-only: `calls` (who called what, by which credential kind), `issued_tokens` (every token minted,
so tests can prove none reached a client), `core.sleep`, and `clock` for TTLs without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import ipaddress
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyotp
from aiohttp import WSCloseCode, WSMsgType, web

from tests.fakes.server import LoopbackServer

ENOTAUTHENTICATED = 207
ERRNAMES = {
    ENOTAUTHENTICATED: "ENOTAUTHENTICATED",
    errno.EACCES: "EACCES",
    errno.EINVAL: "EINVAL",
    errno.EBUSY: "EBUSY",
    errno.ENOENT: "ENOENT",
    errno.EOPNOTSUPP: "EOPNOTSUPP",
}
UNAUTH_LIMIT = 8192
AUTH_LIMIT = 65536
RATE_CALLS = 20
RATE_PERIOD = 60.0
# What may be called before a login (authentication_required=False upstream).
PUBLIC_METHODS = frozenset(
    {
        "auth.login_ex",
        "auth.login_ex_continue",
        "auth.login",
        "auth.login_with_api_key",
        "auth.login_with_token",
        "auth.mechanism_choices",
        "core.set_options",
        "core.ping",
        "system.ready",
        "system.boot_id",
    }
)
READONLY_SUFFIXES = (".query", ".config", ".get_instance")
READONLY_METHODS = frozenset(
    {"system.info", "core.get_jobs", "core.subscribe", "core.unsubscribe", "core.sleep", "auth.sessions"}
)
# Calls any signed-in account may make, whatever its roles (authorization_required=False upstream).
ANY_ACCOUNT = frozenset(
    {
        "auth.me",
        "auth.logout",
        "auth.generate_token",
        "core.ping",
        "core.set_options",
        "auth.mechanism_choices",
    }
)
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
MECHANISMS = ["PASSWORD_PLAIN", "API_KEY_PLAIN", "TOKEN_PLAIN", "OTP_TOKEN", "SCRAM"]


class CallError(Exception):
    def __init__(self, message: str, err: int = errno.EFAULT) -> None:
        super().__init__(message)
        self.message = message
        self.errno = err


@dataclass
class Account:
    username: str
    password: str
    roles: list[str]
    otp_secret: str | None = None
    api_access: bool = True  # False: DENIED (no privilege gives API access)
    expired: bool = False  # password expired: EXPIRED
    uid: int = 3000


@dataclass
class ApiKey:
    id: int
    username: str
    key: str
    revoked: bool = False

    @property
    def wire(self) -> str:
        return f"{self.id}-{self.key}"


@dataclass
class Token:
    value: str
    username: str
    ttl: float
    origin: str | None
    single_use: bool
    session_id: str
    last_used: float


@dataclass(eq=False)
class Conn:
    """One WebSocket: the session is the socket."""

    peer: str
    session_id: str = field(default_factory=lambda: secrets.token_hex(16))
    user: str | None = None
    kind: str = ""  # LOGIN_PASSWORD, LOGIN_TWOFACTOR, API_KEY, TOKEN
    login_token: str | None = None  # the token this session logged in with (destroyed at logout)
    pending_otp: str | None = None  # username awaiting OTP_TOKEN on this socket
    options: dict[str, Any] = field(default_factory=dict)
    subs: dict[str, str] = field(default_factory=dict)  # subscription id -> event name

    @property
    def authenticated(self) -> bool:
        return self.user is not None


@dataclass(frozen=True)
class Call:
    user: str | None
    kind: str
    method: str
    params: Any


class FakeTrueNAS(LoopbackServer):
    """`async with FakeTrueNAS() as nas:`; `nas.ws_url` is its `/api/current`."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rate_limit_sleep: float = 0.05,
        remote_peer: bool = False,
        ha_standby_urls: list[str] | None = None,
        rest_api: bool = True,
        rate_calls: int = RATE_CALLS,
    ) -> None:
        self.clock = clock
        self.rate_limit_sleep = rate_limit_sleep
        self.remote_peer = remote_peer
        self.ha_standby_urls = ha_standby_urls
        self.rest_api = rest_api
        self.rate_calls = rate_calls
        self.accounts: dict[str, Account] = {}
        self.api_keys: dict[int, ApiKey] = {}
        self.tokens: dict[str, Token] = {}
        self.issued_tokens: list[str] = []
        self.used_codes: set[tuple[str, str]] = set()
        self.rate: dict[tuple[str, str], list[float]] = {}
        self.calls: list[Call] = []
        self.conns: set[Conn] = set()
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.datasets: list[dict[str, Any]] = [{"id": "tank", "name": "tank"}]
        self.app = web.Application()
        self.app.router.add_get("/api/current", self._rpc)
        self.app.router.add_get("/api/v25.10.0", self._rpc)
        self.app.router.add_get("/websocket", self._ddp)
        self.app.router.add_route("*", "/api/v2.0/{tail:.*}", self._rest)
        self.app.router.add_get("/ui/", self._ui)

    # ---- set-up helpers ------------------------------------------------------------------------

    def add_user(
        self, username: str, password: str, *, roles: list[str] | None = None, otp: bool = False, **kw: Any
    ) -> Account:
        account = Account(
            username,
            password,
            roles if roles is not None else ["FULL_ADMIN"],
            otp_secret=pyotp.random_base32() if otp else None,
            uid=3000 + len(self.accounts),
            **kw,
        )
        self.accounts[username] = account
        return account

    def add_api_key(self, username: str) -> ApiKey:
        key = ApiKey(len(self.api_keys) + 1, username, "".join(secrets.choice(_ALNUM) for _ in range(64)))
        self.api_keys[key.id] = key
        return key

    def code_for(self, username: str) -> str:
        secret = self.accounts[username].otp_secret
        assert secret is not None
        return pyotp.TOTP(secret).now()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/current"

    def sessions_of(self, username: str) -> list[Conn]:
        return [c for c in self.conns if c.user == username]

    async def emit(self, name: str, msg: str, id_: Any, fields: dict[str, Any]) -> int:
        """Send a `collection_update` event to every socket subscribed to `name`; how many got it."""
        sent = 0
        for conn in list(self.conns):
            ws = self.sockets.get(conn.session_id)
            if ws is not None and name in conn.subs.values() and not ws.closed:
                await ws.send_str(
                    json.dumps(
                        {
                            "jsonrpc": "2.0",
                            "method": "collection_update",
                            "params": {"msg": msg, "collection": name, "id": id_, "fields": fields},
                        }
                    )
                )
                sent += 1
        return sent

    def live_tokens(self) -> list[Token]:
        return [t for t in self.tokens.values() if self.clock() < t.last_used + t.ttl]

    async def _ui(self, request: web.Request) -> web.StreamResponse:
        """A small page that speaks /api/current the way TrueNAS's web UI does (fake-only)."""
        return web.Response(text=UI_PAGE, content_type="text/html")

    async def close(self) -> None:
        """Close the open sockets first: the server would otherwise wait for their handlers."""
        for ws in list(self.sockets.values()):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
        await super().close()

    # ---- the JSON-RPC endpoint -----------------------------------------------------------------

    async def _rpc(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = Conn(peer="192.0.2.10" if self.remote_peer else (request.remote or ""))
        self.conns.add(conn)
        self.sockets[conn.session_id] = ws
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    await ws.close(
                        code=WSCloseCode.UNSUPPORTED_DATA, message=b"Invalid websocket message type"
                    )
                    break
                limit = AUTH_LIMIT if conn.authenticated else UNAUTH_LIMIT
                if len(msg.data) > limit:
                    if conn.authenticated:
                        await ws.close(
                            code=WSCloseCode.MESSAGE_TOO_BIG, message=b"Max message length is 64 kB"
                        )
                    else:
                        await ws.close(
                            code=WSCloseCode.INVALID_TEXT,
                            message=b"Anonymous connection max message length is 8 kB",
                        )
                    break
                try:
                    message = json.loads(msg.data)
                except ValueError as exc:
                    await ws.send_json(_error(None, -32700, str(exc)))
                    continue
                if (
                    not isinstance(message, dict)
                    or message.get("jsonrpc") != "2.0"
                    or not isinstance(message.get("method"), str)
                ):
                    await ws.send_json(
                        _error(
                            message.get("id") if isinstance(message, dict) else None,
                            -32600,
                            "Invalid Request",
                        )
                    )
                    continue
                task = asyncio.create_task(self._answer(ws, conn, message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            self._logout(conn)
            self.conns.discard(conn)
            self.sockets.pop(conn.session_id, None)
        return ws

    async def _answer(self, ws: web.WebSocketResponse, conn: Conn, message: dict[str, Any]) -> None:
        id_ = message.get("id")
        method = message["method"]
        params = message.get("params", [])
        if not isinstance(params, list):
            params = [params]
        try:
            result = await self.dispatch(conn, method, params)
        except CallError as exc:
            answer = _error(id_, -32001, "Method call error", _truenas_error(exc.errno, exc.message))
        except _NoMethod:
            answer = _error(id_, -32601, "Method does not exist")
        except _BadParams as exc:
            answer = _error(
                id_,
                -32602,
                "Invalid params",
                _truenas_error(errno.EINVAL, str(exc), extra=[[str(exc), str(exc), 22]]),
            )
        except Exception as exc:  # noqa: BLE001 - the middleware answers an unexpected failure too
            answer = _error(id_, -32001, "Method call error", _truenas_error(errno.EFAULT, repr(exc)))
        else:
            answer = {"jsonrpc": "2.0", "result": result, "id": id_}
        if id_ is not None and not ws.closed:
            await ws.send_str(json.dumps(answer))

    async def dispatch(self, conn: Conn, method: str, params: list[Any]) -> Any:
        """One call as `conn` makes it (shared by JSON-RPC, DDP and REST)."""
        self.calls.append(Call(conn.user, conn.kind, method, params))
        if not conn.authenticated:
            if method not in PUBLIC_METHODS:
                raise CallError("Not authenticated", ENOTAUTHENTICATED)
            if method != "core.set_options" and not self._rate_ok(method, conn.peer):
                await asyncio.sleep(self.rate_limit_sleep)
                raise CallError("Rate Limit Exceeded", errno.EBUSY)
        elif not self._authorized(conn, method):
            raise CallError("Not authorized", errno.EACCES)
        handler = _METHODS.get(method)
        if handler is None:
            raise _NoMethod()
        return await handler(self, conn, params)

    def _rate_ok(self, method: str, peer: str) -> bool:
        now = self.clock()
        stamps = [t for t in self.rate.get((method, peer), []) if now - t < RATE_PERIOD]
        stamps.append(now)
        self.rate[(method, peer)] = stamps
        return len(stamps) <= self.rate_calls

    def _authorized(self, conn: Conn, method: str) -> bool:
        if method in ANY_ACCOUNT:
            return True
        roles = self.accounts[conn.user or ""].roles if conn.user in self.accounts else []
        if "FULL_ADMIN" in roles:
            return True
        if "READONLY_ADMIN" in roles:
            return method in READONLY_METHODS or method.endswith(READONLY_SUFFIXES)
        return False

    def _logout(self, conn: Conn) -> None:
        if conn.login_token is not None:  # TokenSessionManagerCredentials.logout destroys its token
            self.tokens.pop(conn.login_token, None)
        conn.user, conn.kind, conn.login_token, conn.pending_otp = None, "", None, None

    # ---- auth.* ---------------------------------------------------------------------------------

    def me(self, username: str) -> dict[str, Any]:
        account = self.accounts[username]
        uri = (
            pyotp.TOTP(account.otp_secret).provisioning_uri(name=username, issuer_name="TrueNAS")
            if account.otp_secret
            else None
        )
        return {
            "pw_name": username,
            "pw_gecos": username.title(),
            "pw_dir": f"/home/{username}",
            "pw_shell": "/usr/bin/zsh",
            "pw_uid": account.uid,
            "pw_gid": account.uid,
            "grouplist": [account.uid, 544],
            "sid": None,
            "source": "LOCAL",
            "local": True,
            "privilege": {
                "roles": {"$set": list(account.roles)},
                "allowlist": [],
                "web_shell": True,
                "webui_access": bool(account.roles),
            },
            "account_attributes": ["LOCAL", "PASSWORD_LOGIN"],
            "attributes": {"preferences": {"lifetime": 300}},
            "two_factor_config": {
                "secret_configured": account.otp_secret is not None,
                "interval": 30,
                "otp_digits": 6,
                "provisioning_uri": uri,
            },
        }

    async def _login_ex(self, conn: Conn, params: list[Any]) -> dict[str, Any]:
        data = params[0] if params and isinstance(params[0], dict) else None
        if data is None or data.get("mechanism") not in MECHANISMS:
            raise _BadParams("auth_login_ex.mechanism: Input should be a valid mechanism")
        mech = data["mechanism"]
        options = {"user_info": True, "reconnect_token": False} | (data.get("login_options") or {})
        if self.ha_standby_urls is not None:
            return {"response_type": "REDIRECT", "urls": list(self.ha_standby_urls)}
        if conn.pending_otp is not None and mech != "OTP_TOKEN":
            raise CallError(f"{mech}: authentication in progress, expected OTP_TOKEN", errno.EBUSY)
        if mech == "OTP_TOKEN" and conn.pending_otp is None:
            raise CallError("OTP_TOKEN: no authentication in progress", errno.EINVAL)
        if mech == "SCRAM":
            raise CallError("SCRAM: not supported by this fake", errno.EOPNOTSUPP)
        outcome, username, kind, token = self._check(conn, mech, data)
        if outcome == "OTP_REQUIRED":
            conn.pending_otp = username
            return {"response_type": "OTP_REQUIRED", "username": username}
        if outcome != "SUCCESS":
            return {"response_type": outcome}
        if conn.authenticated:
            self._logout(conn)
        conn.user, conn.kind, conn.login_token = username, kind, token
        answer: dict[str, Any] = {
            "response_type": "SUCCESS",
            "user_info": self.me(username) if options["user_info"] else None,
            "authenticator": "LEVEL_1",
            "reconnect_token": None,
        }
        if options["reconnect_token"] and kind != "TOKEN":
            answer["reconnect_token"] = self._mint(conn, 300, True, True)
        return answer

    def _check(self, conn: Conn, mech: str, data: dict[str, Any]) -> tuple[str, str, str, str | None]:
        """(response_type, username, credential kind, login token) for one step."""
        if mech == "PASSWORD_PLAIN":
            account = self.accounts.get(str(data.get("username")))
            if account is None or not secrets.compare_digest(
                account.password.encode(), str(data.get("password", "")).encode()
            ):
                return "AUTH_ERR", "", "", None
            if account.expired:
                return "EXPIRED", "", "", None
            if not account.api_access:
                return "DENIED", "", "", None
            if account.otp_secret:
                return "OTP_REQUIRED", account.username, "", None
            return "SUCCESS", account.username, "LOGIN_PASSWORD", None
        if mech == "OTP_TOKEN":
            username, conn.pending_otp = conn.pending_otp or "", None
            account = self.accounts[username]
            code = str(data.get("otp_token", ""))
            assert account.otp_secret is not None
            if (username, code) in self.used_codes or not pyotp.TOTP(account.otp_secret).verify(
                code, valid_window=1
            ):
                return "AUTH_ERR", "", "", None
            self.used_codes.add((username, code))
            return "SUCCESS", username, "LOGIN_TWOFACTOR", None
        if mech == "API_KEY_PLAIN":
            return self._check_key(conn, str(data.get("api_key", "")), data.get("username"))
        token = self._take_token(str(data.get("token", "")), conn.peer)
        if token is None:
            return "AUTH_ERR", "", "", None
        return "SUCCESS", token.username, "TOKEN", None if token.single_use else token.value

    def _check_key(self, conn: Conn, wire: str, username: Any) -> tuple[str, str, str, str | None]:
        key_id, _, secret = wire.partition("-")
        key = self.api_keys.get(int(key_id)) if key_id.isdigit() else None
        if (
            key is None
            or (username is not None and username != key.username)
            or not secrets.compare_digest(key.key.encode(), secret.encode())
        ):
            return "AUTH_ERR", "", "", None
        if key.revoked:
            return "EXPIRED", "", "", None
        if not _secure(conn.peer):
            key.revoked = True  # "API key revoked due to insecure transport"
            return "EXPIRED", "", "", None
        return "SUCCESS", key.username, "API_KEY", None

    def _take_token(self, value: str, peer: str) -> Token | None:
        token = self.tokens.get(value)
        if token is None:
            return None
        if self.clock() >= token.last_used + token.ttl:
            self.tokens.pop(value, None)
            return None
        if token.origin is not None and token.origin != peer:
            return None
        if token.single_use:
            self.tokens.pop(value, None)
        else:
            token.last_used = self.clock()
        return token

    def _mint(self, conn: Conn, ttl: Any, match_origin: Any, single_use: Any) -> str:
        value = secrets.token_urlsafe(48)
        self.tokens[value] = Token(
            value,
            conn.user or "",
            float(ttl if ttl is not None else 600),
            conn.peer if match_origin else None,
            bool(single_use),
            conn.session_id,
            self.clock(),
        )
        self.issued_tokens.append(value)
        return value


def _secure(peer: str) -> bool:
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return False


def _error(id_: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "error": error, "id": id_}


def _truenas_error(err: int, message: str, extra: Any = None) -> dict[str, Any]:
    name = ERRNAMES.get(err, "EFAULT")
    return {
        "error": err,
        "errname": name,
        "reason": f"[{name}] {message}",
        "trace": {
            "class": "CallError",
            "formatted": f"CallError: [{name}] {message}",
            "repr": f"CallError('{message}')",
        },
        "extra": extra,
    }


class _NoMethod(Exception):
    pass


class _BadParams(Exception):
    pass


# ---- the methods ------------------------------------------------------------------------------------


async def _m_login_ex(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    return await nas._login_ex(conn, params)


async def _m_login(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    username, password = (params + [None, None])[:2]
    answer = await nas._login_ex(
        conn,
        [
            {
                "mechanism": "PASSWORD_PLAIN",
                "username": username,
                "password": password,
                "login_options": {"user_info": False},
            }
        ],
    )
    if answer["response_type"] == "OTP_REQUIRED":
        code = params[2] if len(params) > 2 else None
        if not code:
            conn.pending_otp = None
            return False
        answer = await nas._login_ex(conn, [{"mechanism": "OTP_TOKEN", "otp_token": code}])
    return answer["response_type"] == "SUCCESS"


async def _m_login_with_api_key(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    key_id = str(params[0] if params else "").partition("-")[0]
    key = nas.api_keys.get(int(key_id)) if key_id.isdigit() else None
    if key is None:
        return False
    answer = await nas._login_ex(
        conn,
        [
            {
                "mechanism": "API_KEY_PLAIN",
                "username": key.username,
                "api_key": params[0],
                "login_options": {"user_info": False},
            }
        ],
    )
    return answer["response_type"] == "SUCCESS"


async def _m_login_with_token(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    answer = await nas._login_ex(
        conn,
        [
            {
                "mechanism": "TOKEN_PLAIN",
                "token": params[0] if params else "",
                "login_options": {"user_info": False},
            }
        ],
    )
    return answer["response_type"] == "SUCCESS"


async def _m_generate_token(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    ttl, _attrs, match_origin, single_use = (params + [600, {}, True, False][len(params) :])[:4]
    return nas._mint(conn, ttl, match_origin, single_use)


async def _m_me(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    return nas.me(conn.user or "")


async def _m_logout(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    nas._logout(conn)
    return True


async def _m_mechanisms(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    return list(MECHANISMS)


async def _m_set_options(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    conn.options.update(params[0] if params and isinstance(params[0], dict) else {})
    return None


async def _m_ping(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    return "pong"


async def _m_subscribe(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    sub = secrets.token_hex(8)
    conn.subs[sub] = str(params[0]) if params else ""
    return sub


async def _m_unsubscribe(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    conn.subs.pop(str(params[0]) if params else "", None)
    return None


async def _m_none(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    return None


async def _m_system_info(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    return {"version": "TrueNAS-25.10.0", "hostname": "fake-nas", "uptime_seconds": 1234.5}


async def _m_dataset_query(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    return list(nas.datasets)


async def _m_dataset_create(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    data = params[0] if params and isinstance(params[0], dict) else {}
    row = {"id": str(data.get("name")), "name": str(data.get("name"))}
    nas.datasets.append(row)
    return row


async def _m_sessions(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    return [
        {
            "id": c.session_id,
            "current": c is conn,
            "internal": False,
            "credentials": c.kind,
            "credentials_data": {"username": c.user},
        }
        for c in nas.conns
        if c.user
    ]


async def _m_sleep(nas: FakeTrueNAS, conn: Conn, params: list[Any]) -> Any:
    await asyncio.sleep(float(params[0]) if params else 0.2)
    return "slept"


_METHODS: dict[str, Callable[[FakeTrueNAS, Conn, list[Any]], Any]] = {
    "auth.login_ex": _m_login_ex,
    "auth.login_ex_continue": _m_login_ex,
    "auth.login": _m_login,
    "auth.login_with_api_key": _m_login_with_api_key,
    "auth.login_with_token": _m_login_with_token,
    "auth.generate_token": _m_generate_token,
    "auth.me": _m_me,
    "auth.logout": _m_logout,
    "auth.mechanism_choices": _m_mechanisms,
    "auth.sessions": _m_sessions,
    "core.set_options": _m_set_options,
    "core.ping": _m_ping,
    "core.subscribe": _m_subscribe,
    "core.unsubscribe": _m_unsubscribe,
    "core.sleep": _m_sleep,
    "system.info": _m_system_info,
    "pool.dataset.query": _m_dataset_query,
    "pool.dataset.create": _m_dataset_create,
}


# ---- legacy DDP (/websocket) and REST (/api/v2.0) ---------------------------------------------------


async def _ddp_loop(nas: FakeTrueNAS, ws: web.WebSocketResponse, conn: Conn) -> None:
    connected = False
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            break
        try:
            message = json.loads(msg.data)
        except ValueError:
            continue
        if not isinstance(message, dict):
            continue
        if message.get("msg") == "connect":
            if message.get("version") != "1":
                await ws.send_json({"msg": "failed", "version": "1"})
                break
            connected = True
            await ws.send_json({"msg": "connected", "session": conn.session_id})
        elif message.get("msg") == "method" and connected:
            params = message.get("params") or []
            try:
                result = await nas.dispatch(conn, str(message.get("method")), params)
            except CallError as exc:
                await ws.send_json(
                    {
                        "msg": "result",
                        "id": message.get("id"),
                        "error": {
                            "error": exc.errno,
                            "errname": ERRNAMES.get(exc.errno, "EFAULT"),
                            "reason": exc.message,
                            "type": None,
                        },
                    }
                )
            except (_NoMethod, _BadParams):
                await ws.send_json(
                    {
                        "msg": "result",
                        "id": message.get("id"),
                        "error": {"error": errno.ENOENT, "reason": "Method does not exist"},
                    }
                )
            else:
                await ws.send_json({"msg": "result", "id": message.get("id"), "result": result})


async def _ddp(self: FakeTrueNAS, request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    conn = Conn(peer=request.remote or "")
    self.conns.add(conn)
    self.sockets[conn.session_id] = ws
    try:
        await _ddp_loop(self, ws, conn)
    finally:
        self._logout(conn)
        self.conns.discard(conn)
        self.sockets.pop(conn.session_id, None)
    return ws


async def _rest(self: FakeTrueNAS, request: web.Request) -> web.StreamResponse:
    if not self.rest_api:
        return web.Response(status=404, text="404: Not Found")
    conn = Conn(peer=request.remote or "")
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        outcome, user, kind, _ = self._check_key(conn, value.strip(), None)
    elif scheme.lower() == "token":
        token = self._take_token(value.strip(), conn.peer)
        outcome, user, kind = ("SUCCESS", token.username, "TOKEN") if token else ("AUTH_ERR", "", "")
    elif scheme.lower() == "basic":
        name, _, password = base64.b64decode(value).decode().partition(":")
        account = self.accounts.get(name)
        ok = account is not None and account.password == password and not account.otp_secret
        outcome, user, kind = ("SUCCESS", name, "LOGIN_PASSWORD") if ok else ("AUTH_ERR", "", "")
    else:
        outcome, user, kind = "AUTH_ERR", "", ""
    if outcome != "SUCCESS":
        return web.json_response({"message": "Unauthorized"}, status=401)
    conn.user, conn.kind = user, kind
    method = request.match_info["tail"].strip("/").replace("/", ".")
    if request.method == "GET" and method in ("pool.dataset", "user"):
        method += ".query"
    elif request.method == "POST" and method == "pool.dataset":
        method = "pool.dataset.create"
    params = [await request.json()] if request.can_read_body else []
    try:
        result = await self.dispatch(conn, method, params)
    except CallError as exc:
        return web.json_response(
            {"message": exc.message, "errno": exc.errno}, status=403 if exc.errno == errno.EACCES else 422
        )
    except _NoMethod:
        return web.json_response({"message": "Not Found"}, status=404)
    return web.json_response(result)


FakeTrueNAS._ddp = _ddp  # type: ignore[attr-defined]
FakeTrueNAS._rest = _rest  # type: ignore[attr-defined]


# The web UI's way (truenas/webui websocket-handler.service.ts, auth.service.ts): connect to
# (wss|ws)://<host>/api/current, auth.login_ex PASSWORD_PLAIN with user_info and reconnect_token,
# refuse when privilege.webui_access is false, keep the token in localStorage["ngx-webstorage|token"]
# (JSON-encoded), then the dashboard's calls; auth.generate_token is asked for the next reload.
UI_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>TrueNAS</title></head><body>
<form id="signin"><input id="username"><input id="password" type="password"><input id="otp">
<button id="submit" type="submit">Log In</button></form><div id="status"></div><pre id="dashboard"></pre>
<script>
let ws, nextId = 1; const waiting = new Map();
function open() {
  return new Promise((resolve, reject) => {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(scheme + location.host + "/api/current");
    ws.onopen = resolve; ws.onerror = () => reject(new Error("socket error"));
    ws.onmessage = (e) => { const m = JSON.parse(e.data); const w = waiting.get(m.id);
      if (w) { waiting.delete(m.id); w(m); } };
    ws.onclose = (e) => { document.getElementById("status").textContent = "closed " + e.code; };
  });
}
function call(method, params) {
  const id = "ui-" + (nextId++);
  ws.send(JSON.stringify({jsonrpc: "2.0", id: id, method: method, params: params || []}));
  return new Promise((resolve) => waiting.set(id, resolve));
}
document.getElementById("signin").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = document.getElementById("status");
  if (!ws || ws.readyState !== 1) await open();
  let r = await call("auth.login_ex", [{mechanism: "PASSWORD_PLAIN",
      username: document.getElementById("username").value,
      password: document.getElementById("password").value,
      login_options: {user_info: true, reconnect_token: true}}]);
  if (r.result && r.result.response_type === "OTP_REQUIRED") {
    const code = document.getElementById("otp").value;
    r = await call("auth.login_ex_continue", [{mechanism: "OTP_TOKEN", otp_token: code}]);
  }
  if (!r.result || r.result.response_type !== "SUCCESS") {
    status.textContent = "failed " + JSON.stringify(r); return;
  }
  if (!r.result.user_info.privilege.webui_access) { status.textContent = "no web UI access"; return; }
  localStorage.setItem("ngx-webstorage|token", JSON.stringify(r.result.reconnect_token));
  const info = await call("system.info");
  const pools = await call("pool.dataset.query");
  const write = await call("pool.dataset.create", [{name: "tank/from-ui"}]);
  const token = await call("auth.generate_token", [300, {}, true, true]);
  localStorage.setItem("ngx-webstorage|token", JSON.stringify(token.result));
  const written = write.error ? write.error.data.errname : "ok";
  document.getElementById("dashboard").textContent = JSON.stringify({user: r.result.user_info.pw_name,
      host: info.result.hostname, datasets: pools.result.length, write: written});
  document.body.dataset.state = "dashboard";
});
</script></body></html>"""
