"""TrueNAS (SCALE / Community Edition): the session is the WebSocket itself.

A person signs in at authproxy; authproxy opens a socket to the middleware (`/api/current`, JSON-RPC
2.0), calls `auth.login_ex` PASSWORD_PLAIN and, when TrueNAS answers OTP_REQUIRED, `login_ex_continue`
OTP_TOKEN on that same socket; then it asks `auth.generate_token` for a multi-use token bound to
authproxy's address and closes the socket. The session keeps that token, never the password.

The token is chained: the session that logs in *with* a token destroys it when it ends (middleware
`TokenSessionManagerCredentials.logout`), so every socket authproxy opens with it (a bridged client's,
the keepalive's) first mints the next token and the session keeps that one (`reopen`). TTL slides
from the last use; the keepalive renews it at half its TTL while the authproxy session lives.

The service client (TRUENAS_API_KEY, TRUENAS_USERNAME) is an API key. TrueNAS revokes a key used over
a transport that is neither TLS nor loopback, so it is never sent over plain ws:// to another host
unless `allow_insecure_api_key` says so. Older releases' REST API (`/api/v2.0`) gets the key as
`Authorization: Bearer`, a person's token as `Authorization: Token`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.config.schema import SiteConfig
from authproxy.errors import UpstreamProtocolError, UpstreamUnavailable
from authproxy.sessions.model import Credential, Identity
from authproxy.upstreams.base import LoginResult, TokenCheck, UpstreamAdapter, UpstreamRequest
from authproxy.upstreams.truenas_parking import SocketPark
from authproxy.upstreams.truenas_rpc import RpcError, RpcSocket, ws_endpoint
from authproxy.upstreams.truenas_shared import KeyRefused, SharedChannel, SharedSocket

DEFAULT_TOKEN_TTL = 600
PARK_SECONDS = 30.0     # an idle upstream socket kept for the person's next client socket (a UI reload)
PARK_MAX = 4            # per person
OPTIONS = ("api_username", "token_ttl", "allow_client_api_keys", "allow_insecure_api_key")
TOKEN_KIND = "truenas_token"
KEY_KIND = "truenas_api_key"
REST_PREFIX = "/api/v2.0"
LEGACY_DDP = "/websocket"
# What TrueNAS answers for a sign-in, as authproxy words it (never the upstream's own text).
MESSAGES = {
    "AUTH_ERR": "Invalid username or password.",
    "AUTH_ERR_OTP": "Invalid username, password or code.",
    "EXPIRED": "This TrueNAS account's password (or key) has expired; change it in TrueNAS first.",
    "DENIED": "This TrueNAS account may not use the TrueNAS API or web UI (no privilege allows it).",
}
RATE_LIMITED = "TrueNAS is refusing sign-ins from authproxy's address for a minute; try again shortly."


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def roles_of(user_info: Any) -> list[str]:
    """`privilege.roles` of an `auth.me` answer (ejson `{"$set": [...]}` or a plain list)."""
    privilege = user_info.get("privilege") if isinstance(user_info, dict) else None
    roles = privilege.get("roles") if isinstance(privilege, dict) else None
    if isinstance(roles, dict):
        roles = roles.get("$set")
    return [str(r) for r in roles] if isinstance(roles, list) else []


def without_secrets(user_info: Any) -> Any:
    """`auth.me` / `user_info` without `two_factor_config.provisioning_uri` (the person's TOTP secret)."""
    if not isinstance(user_info, dict):
        return user_info
    cleaned = dict(user_info)
    tfa = cleaned.get("two_factor_config")
    if isinstance(tfa, dict) and "provisioning_uri" in tfa:
        cleaned["two_factor_config"] = {k: v for k, v in tfa.items() if k != "provisioning_uri"}
    return cleaned


def loopback_or_tls(url: str) -> bool:
    """Whether an API key may travel to `url` without TrueNAS revoking it."""
    parts = urlsplit(url)
    if parts.scheme in ("wss", "https"):
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_refusal(upstream_url: str, allowed: bool) -> str | None:
    if allowed or loopback_or_tls(upstream_url):
        return None
    return (
        f"TRUENAS_API_KEY: refusing to send an API key over plain ws:// to {urlsplit(upstream_url).netloc} "
        "(TrueNAS revokes a key used over an insecure transport); use wss:// (https://), or set "
        "TRUENAS_ALLOW_INSECURE_API_KEY=true if the network path is trusted"
    )


def _chain(credential: Credential) -> str:
    """Which parked sockets a credential may take: its token chain's id, or (the service key) a hash
    of the key ("" : none)."""
    if credential.kind == KEY_KIND:
        return "key:" + hashlib.sha256(credential.secret.encode()).hexdigest()[:32]
    chain = credential.extra.get("chain")
    return str(chain) if chain else ""


class TrueNASAdapter(UpstreamAdapter):
    name: ClassVar[str] = "truenas"
    checks_service_key: ClassVar[bool] = True

    def __init__(self, site: SiteConfig, http: aiohttp.ClientSession) -> None:
        self.site = site
        self.http = http
        self.ws_url = ws_endpoint(site.upstream_url)
        self.token_ttl = int(site.options.get("token_ttl", DEFAULT_TOKEN_TTL))
        self.api_username = str(site.options.get("api_username") or "") or None
        self.allow_client_api_keys = _flag(site.options.get("allow_client_api_keys", False))
        self.allow_insecure_key = _flag(site.options.get("allow_insecure_api_key", False))
        self.timeout = float(site.timeout or 30.0)
        self.parked = SocketPark(seconds=PARK_SECONDS, most=PARK_MAX)   # upstreams/truenas_parking.py
        self._shared: SharedSocket | None = None   # the service key's one shared socket (truenas_shared.py)

    # ---- configuration ---------------------------------------------------------------------------

    @staticmethod
    def check_options(options: dict[str, Any]) -> list[str]:
        problems = [
            f"unknown truenas option {key!r}; known: {', '.join(OPTIONS)}"
            for key in options
            if key not in OPTIONS
        ]
        ttl = str(options.get("token_ttl", DEFAULT_TOKEN_TTL))
        if not ttl.isdigit() or not 60 <= int(ttl) <= 86400:
            problems.append(f"TRUENAS_TOKEN_TTL: must be seconds between 60 and 86400, but it is {ttl!r}")
        return problems

    @classmethod
    def check_site(cls, site: SiteConfig) -> list[str]:
        """An API key is refused at start when it would travel over plain ws:// to another host."""
        if site.service_token is None:
            return []
        refusal = key_refusal(site.upstream_url, _flag(site.options.get("allow_insecure_api_key", False)))
        return [refusal] if refusal else []

    def key_refusal(self) -> str | None:
        """Why an API key must not be sent to this site's URL (None: it may)."""
        return key_refusal(self.site.upstream_url, self.allow_insecure_key)

    # ---- sockets ---------------------------------------------------------------------------------

    async def connect(self, path: str | None = None) -> RpcSocket:
        url = self.ws_url if path is None else ws_endpoint(self.site.upstream_url, path)
        return await RpcSocket.open(self.http, url, timeout=self.timeout)

    async def _mint(self, sock: RpcSocket) -> str:
        token = await sock.call("auth.generate_token", self.token_ttl, {}, True, False)
        if not isinstance(token, str) or not token:
            raise UpstreamProtocolError("truenas answered auth.generate_token without a token")
        return token

    async def reopen(self, credential: Credential) -> tuple[RpcSocket, Credential] | None:
        """A socket logged in as `credential`'s account, and the credential to keep from now on (the
        next token of the chain, or the same API key); None: TrueNAS refused it (dead)."""
        sock = await self.connect()
        try:
            if credential.kind == KEY_KIND:
                if not await self._key_login(sock, credential):
                    await sock.close()
                    return None
                return sock, credential
            answer = await sock.call(
                "auth.login_ex",
                {
                    "mechanism": "TOKEN_PLAIN",
                    "token": credential.secret,
                    "login_options": {"user_info": False},
                },
            )
            if not isinstance(answer, dict) or answer.get("response_type") != "SUCCESS":
                await sock.close()
                return None
            fresh = Credential(
                secret=await self._mint(sock),
                kind=TOKEN_KIND,
                actor=credential.actor,
                extra=dict(credential.extra),
                obtained_at=credential.obtained_at,
                upstream_ttl=float(self.token_ttl),
            )
            return sock, fresh
        except BaseException:
            await sock.close()
            raise

    async def _key_login(self, sock: RpcSocket, credential: Credential) -> bool:
        refusal = self.key_refusal()
        if refusal is not None:
            raise UpstreamUnavailable(refusal)
        username = credential.extra.get("username")
        if username:
            answer = await sock.call(
                "auth.login_ex",
                {
                    "mechanism": "API_KEY_PLAIN",
                    "username": username,
                    "api_key": credential.secret,
                    "login_options": {"user_info": False},
                },
            )
            return isinstance(answer, dict) and answer.get("response_type") == "SUCCESS"
        return await sock.call("auth.login_with_api_key", credential.secret) is True

    def park(self, credential: Credential, sock: RpcSocket) -> bool:
        """Keep `sock` (logged in as `credential`'s person, no subscriptions) for their next socket."""
        return self.parked.park(_chain(credential), sock)

    def unpark(self, credential: Credential) -> RpcSocket | None:
        return self.parked.take(_chain(credential))

    # ---- sign-in ---------------------------------------------------------------------------------

    async def login(self, username: str, password: str, totp: str | None, client_ip: str) -> LoginResult:
        async with await self.connect() as sock:
            return await self.login_on(sock, username, password, totp)

    async def login_on(self, sock: RpcSocket, username: str, password: str, totp: str | None) -> LoginResult:
        """PASSWORD_PLAIN (and OTP_TOKEN on the same socket) on `sock`, which stays logged in on success."""
        try:
            answer = await sock.call(
                "auth.login_ex",
                {
                    "mechanism": "PASSWORD_PLAIN",
                    "username": username,
                    "password": password,
                    "login_options": {"user_info": True, "reconnect_token": False},
                },
            )
            kind = answer.get("response_type") if isinstance(answer, dict) else None
            if kind == "OTP_REQUIRED":
                if not totp:
                    return LoginResult("totp_required", message="Enter the code from your authenticator app.")
                answer = await sock.call(
                    "auth.login_ex_continue", {"mechanism": "OTP_TOKEN", "otp_token": totp}
                )
                kind = answer.get("response_type") if isinstance(answer, dict) else None
            if kind == "REDIRECT":
                raise UpstreamUnavailable(
                    "truenas is an HA standby controller; point TRUENAS_URL at the active one"
                )
            if kind != "SUCCESS":
                key = "AUTH_ERR_OTP" if kind == "AUTH_ERR" and totp else str(kind)
                return LoginResult("invalid", message=MESSAGES.get(key, MESSAGES["AUTH_ERR"]))
            token = await self._mint(sock)
        except RpcError as exc:
            if exc.errname == "EBUSY":
                return LoginResult("blocked", message=RATE_LIMITED, retry_after=60)
            raise UpstreamProtocolError(
                f"truenas refused the sign-in call ({exc.errname or exc.code})"
            ) from None
        info = answer.get("user_info")
        credential = Credential(secret=token, kind=TOKEN_KIND, upstream_ttl=float(self.token_ttl),
                                extra={"chain": secrets.token_urlsafe(12), "roles": roles_of(info)})
        return LoginResult("ok", credential=credential, identity=self.identity(info, username))

    @staticmethod
    def identity(user_info: Any, fallback: str) -> Identity:
        """Who TrueNAS says this is (no 2FA secret kept: only name, full name and privilege)."""
        info = user_info if isinstance(user_info, dict) else {}
        privilege: dict[str, Any] = info["privilege"] if isinstance(info.get("privilege"), dict) else {}
        return Identity(
            username=str(info.get("pw_name") or fallback),
            display_name=str(info.get("pw_gecos") or ""),
            permissions={"roles": roles_of(info), "webui_access": bool(privilege.get("webui_access"))},
        )

    async def logout(self, credential: Credential) -> None:
        """`auth.logout` on a socket logged in with the session's token (which that destroys)."""
        if credential.kind != TOKEN_KIND:
            return
        await self.parked.close(_chain(credential))
        sock = await self.connect()
        try:
            answer = await sock.call(
                "auth.login_ex",
                {
                    "mechanism": "TOKEN_PLAIN",
                    "token": credential.secret,
                    "login_options": {"user_info": False},
                },
            )
            if isinstance(answer, dict) and answer.get("response_type") == "SUCCESS":
                await sock.call("auth.logout")
        except RpcError:
            pass
        finally:
            await sock.close()

    async def keepalive(self, credential: Credential) -> bool:
        """Renew the token chain: log in with it, mint the next one (the credential now holds it)."""
        if credential.kind == KEY_KIND:
            return True
        opened = await self.reopen(credential)
        if opened is None:
            return False
        sock, fresh = opened
        credential.secret = fresh.secret
        credential.touched_at = time.time()
        await sock.close()  # destroys the token it logged in with: the session keeps the new one
        return True

    async def may_administer(self, credential: Credential) -> bool:
        """FULL_ADMIN among the roles TrueNAS gave the account at sign-in (no call: logins are scarce)."""
        roles = credential.extra.get("roles")
        return isinstance(roles, list) and "FULL_ADMIN" in roles

    # ---- the service key -------------------------------------------------------------------------

    def service_credential(self, secret: str) -> Credential:
        extra = {"username": self.api_username} if self.api_username else {}
        return Credential(secret=secret, kind=KEY_KIND, actor="service", extra=extra)

    async def check_background(self, credential: Credential) -> TokenCheck | None:
        """The key is validated with `auth.me` on the shared service socket: whose account, which roles."""
        refusal = self.key_refusal()
        if refusal is not None:
            return TokenCheck(validated=False, ok=False, reason=refusal)
        try:
            me = await self.service_call(credential, "auth.me")
        except _KeyRefused:
            return TokenCheck(validated=False, ok=False,
                              reason="refused by TrueNAS (invalid, expired or revoked API key)")
        except (UpstreamUnavailable, UpstreamProtocolError, RpcError) as exc:
            return TokenCheck(validated=False, ok=False, reason=f"unreadable: {exc}")
        roles = roles_of(me)
        account = str(me.get("pw_name") if isinstance(me, dict) else "?")
        return TokenCheck(
            validated=True,
            ok=True,
            reason=f"account {account}; roles {', '.join(roles) or 'none'}",
            too_privileged=("FULL_ADMIN",) if "FULL_ADMIN" in roles else (),
        )

    def _shared_for(self, credential: Credential) -> SharedSocket:
        if self._shared is None:
            async def opener() -> RpcSocket | None:
                opened = await self.reopen(credential)
                return opened[0] if opened is not None else None
            self._shared = SharedSocket(opener)
        return self._shared

    def is_service_key(self, credential: Credential) -> bool:
        """The site's own TRUENAS_API_KEY (not a client's key): it goes on the one shared socket."""
        token = self.site.service_token
        return credential.kind == KEY_KIND and token is not None and credential.secret == token.reveal()

    def shared_channel(self, credential: Credential) -> SharedChannel:
        """A client socket's share of the service key's one upstream socket (no login of its own)."""
        return self._shared_for(credential).channel()

    async def service_call(self, credential: Credential, method: str, *params: Any) -> Any:
        """`method` on the service key's one shared socket, opened (or reopened, once, when TrueNAS
        or the network closed it) on demand: authproxy's own calls and service clients cost no login each."""
        shared = self._shared_for(credential)
        for attempt in (1, 2):
            try:
                sock = await shared.socket()
            except KeyRefused:
                raise _KeyRefused() from None
            try:
                return await sock.call(method, *params)
            except UpstreamUnavailable:
                if attempt == 2:
                    raise
            except RpcError as exc:
                if exc.errname != "ENOTAUTHENTICATED" or attempt == 2:
                    raise
            await sock.close()   # closed, or TrueNAS ended that session: log in again
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close the shared service socket and every parked one (at shutdown)."""
        if self._shared is not None:
            await self._shared.aclose()
            self._shared = None
        await self.parked.close_all()

    # ---- HTTP forwarding (the UI's files, legacy REST /api/v2.0) ----------------------------------

    def prepare_request(self, req: UpstreamRequest, credential: Credential | None) -> None:
        req.headers.popall("Authorization", None)
        if credential is None:
            return
        req.headers["Authorization"] = self._authorization(credential)

    @staticmethod
    def _authorization(credential: Credential) -> str:
        scheme = "Bearer" if credential.kind == KEY_KIND else "Token"
        return f"{scheme} {credential.secret}"

    def forward_auth_headers(self, credential: Credential) -> dict[str, str]:
        return {"Authorization": self._authorization(credential)}

    def wants_body(self, req: UpstreamRequest, status: int, headers: CIMultiDictProxy[str]) -> bool:
        return False

    def is_expired(self, status: int, headers: CIMultiDictProxy[str], body: bytes | None) -> bool:
        return status == 401

    def filter_response_headers(self, headers: CIMultiDict[str]) -> None:
        return None

    def public_call(self, method: str, upstream_path: str) -> bool:
        """The UI's files and `/api/versions` are served to anyone by TrueNAS's own nginx."""
        if upstream_path.startswith(REST_PREFIX) or upstream_path == LEGACY_DDP:
            return False
        return method in ("GET", "HEAD") and not upstream_path.startswith("/_download")

    @staticmethod
    def in_band(upstream_path: str) -> bool:
        """The socket paths authproxy answers in band: JSON-RPC (proxy/truenas_bridge.py) and the
        legacy DDP `/websocket` (proxy/truenas_ddp.py)."""
        if upstream_path in ("/api/current", LEGACY_DDP):
            return True
        return (
            upstream_path.startswith("/api/v")
            and upstream_path[6:7].isdigit()
            and not upstream_path.startswith(REST_PREFIX)
        )


class _KeyRefused(Exception):
    """TrueNAS refused the service API key."""
