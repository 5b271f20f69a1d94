"""TrueNAS's JSON-RPC socket through authproxy, message by message (the session is the socket).

A client (the TrueNAS web UI, a client library) opens `/api/current` at authproxy. authproxy answers
its `auth.*` calls itself and relays every other call, as is, to an upstream socket it logged in
itself:

    auth.login_ex / login_ex_continue / login / login_with_token
        with an authproxy session: success as the signed-in person (TOKEN_PLAIN with one of its
        placeholders, or PASSWORD_PLAIN naming the same account), no second password;
        without one: PASSWORD_PLAIN (and OTP_TOKEN on the same socket) is an authproxy sign-in --
        throttled, audited, checked by TrueNAS -- and the new session belongs to this socket
        (it ends when the socket closes); API_KEY_PLAIN / login_with_api_key only when the site allows
        client API keys, checked upstream and audited as `actor: service`
    auth.generate_token, reconnect_token   a placeholder (the session, sealed, for the ttl asked), never a
                                           real token; TOKEN_PLAIN with it is this session on any socket
    auth.me                                TrueNAS's answer without the TOTP provisioning URI
    auth.logout                            ends the upstream socket and the authproxy session
    auth.mechanism_choices                 only what works through authproxy (no SCRAM)
    core.set_options, core.ping            answered before login, replayed/relayed after

Answers are matched by id upstream, so relayed calls keep the client's own ids (authproxy's own calls
use `authproxy-N`, which clients may not). Messages that cannot name a call authproxy answers are
relayed without being parsed or decoded (`_plain_call`). ENOTAUTHENTICATED from TrueNAS means the
person's upstream session is gone: the socket is closed with 4001 and the client must sign in again.
Sign-out at authproxy (any replica) closes the socket within seconds (proxy/bridges.py, as every
bridge); TrueNAS closing the upstream socket closes the client's with 1011. A socket acting as the
service key has no upstream socket of its own: a channel of the key's shared one (truenas_shared.py).
proxy/truenas_socket.py is the entry point; DDP clients get the same through proxy/truenas_ddp.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from authproxy import keys
from authproxy.errors import AuthError, StoreError, UpstreamError
from authproxy.log import audit, log
from authproxy.login.passthrough import LoginInput
from authproxy.proxy import truenas_handoff as handoff
from authproxy.proxy.bridges import Bridge
from authproxy.proxy.websocket import _watch
from authproxy.routing import Site
from authproxy.sessions.manager import LoadedSession
from authproxy.sessions.model import Credential
from authproxy.upstreams.truenas import KEY_KIND, MESSAGES, TrueNASAdapter, without_secrets
from authproxy.upstreams.truenas_rpc import RpcError, RpcSocket
from authproxy.upstreams.truenas_shared import KeyRefused, SharedChannel
from authproxy.web.api import end_session
from authproxy.web.common import client_ip

RESERVED_ID = "authproxy-"
OTP_WAIT = 300.0          # seconds an in-band sign-in waits for its one-time code
UNAUTH_LIMIT = 8192  # TrueNAS's own limits (utils/limits.py), applied before anything goes upstream
AUTH_LIMIT = 65536
ENOTAUTHENTICATED = 207
MAX_FRAME = 2 * 1024 * 1024
LOGIN_CALLS = frozenset(
    {
        "auth.login_ex",
        "auth.login_ex_continue",
        "auth.login",
        "auth.login_with_token",
        "auth.login_with_api_key",
    }
)
UPSTREAM_GONE = (4001, "session ended: sign in again")
UPSTREAM_LOST = (1011, "upstream connection lost")
_MESSAGE_BY_TYPE = {text: kind for kind, text in MESSAGES.items() if kind in ("EXPIRED", "DENIED")}


def _error(id_: Any, errnum: int, errname: str, reason: str) -> str:
    data = {
        "error": errnum,
        "errname": errname,
        "reason": f"[{errname}] {reason}",
        "trace": None,
        "extra": None,
    }
    return json.dumps(
        {"jsonrpc": "2.0", "id": id_, "error": {"code": -32001, "message": "Method call error", "data": data}}
    )


def _plain_call(text: bytes) -> bool:
    """True when `text` cannot name a method authproxy answers (no `"auth.`, no `core.set_options`)
    nor use an id of authproxy's own calls (no `authproxy-`), as written, and has no backslash (so no
    escape can spell one). Anything else is parsed."""
    return (b'"auth.' not in text and b"core.set_options" not in text and b"\\" not in text
            and b"authproxy-" not in text)


def reserved_id(id_: Any) -> bool:
    """Ids authproxy's own calls use on the upstream socket (truenas_rpc.py): a client may not, or an
    answer meant for authproxy could be routed to the client, or the client's to authproxy."""
    return isinstance(id_, str) and id_.startswith(RESERVED_ID)


def _result(id_: Any, result: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "result": result})


class InBand:
    """One client socket: its authproxy session (if any), its upstream socket, what it has said."""

    def __init__(
        self,
        request: web.Request,
        site: Site,
        ws: web.WebSocketResponse,
        loaded: LoadedSession | None,
        credential: Credential | None,
    ) -> None:
        assert isinstance(site.adapter, TrueNASAdapter)
        self.request = request
        self.site = site
        self.adapter: TrueNASAdapter = site.adapter
        self.ws = ws
        self.loaded = loaded
        self.service = credential if credential is not None and credential.actor == "service" else None
        self.upstream: RpcSocket | SharedChannel | None = None   # SharedChannel: the service key's socket
        self.authed = False
        self.owns_session = False  # the session was opened in band: it ends with the socket
        self.pending: tuple[str, str] | None = None  # (username, password) between OTP_REQUIRED and the code
        self.options: dict[str, Any] = {}
        self.entry: Bridge | None = None
        self.watch: asyncio.Task[tuple[int, str]] | None = None
        self.closing: tuple[int, str] | None = None
        self.subscribed = False   # the client asked for events: its upstream socket is not reused
        self.slide_at = 0.0       # when a client message next slides the session's idle timeout
        self.lost: asyncio.Task[None] | None = None
        self.ip = client_ip(request)

    # ---- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        self._track()
        try:
            await self._client_loop()
        finally:
            if self.authed:
                self._audit("closed")
            await self._drop_upstream(park=not self.owns_session and self.closing is None)
            if self.watch is not None:
                self.watch.cancel()
                await asyncio.gather(self.watch, return_exceptions=True)
            if self.lost is not None:
                self.lost.cancel()
                await asyncio.gather(self.lost, return_exceptions=True)
            self._untrack()
            if self.owns_session and self.loaded is not None:
                with contextlib.suppress(StoreError, UpstreamError):
                    await end_session(self.request, self.loaded, reason="socket_closed")

    async def _client_loop(self) -> None:
        loop = asyncio.get_running_loop()
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                await self.ws.close(
                    code=WSCloseCode.UNSUPPORTED_DATA, message=b"Invalid websocket message type"
                )
                return
            data: bytes = msg.data   # undecoded (decode_text=False): relayed as it came
            if self.loaded is not None and self.entry is not None and (now := loop.time()) >= self.slide_at:
                # The person is using the socket: slide the session's idle timeout (the watch does it).
                self.slide_at = now + self.entry.slide_every
                self.entry.slide = True
                self.entry.wake.set()
            if len(data) > (AUTH_LIMIT if self.authed else UNAUTH_LIMIT):
                code, why = (
                    (WSCloseCode.MESSAGE_TOO_BIG, b"Max message length is 64 kB")
                    if self.authed
                    else (WSCloseCode.INVALID_TEXT, b"Anonymous connection max message length is 8 kB")
                )
                await self.ws.close(code=code, message=why)
                return
            if self.authed and self.upstream is not None and _plain_call(data):
                if not self.subscribed and b"subscribe" in data:
                    self.subscribed = True
                await self.upstream.ws.send_frame(data, WSMsgType.TEXT)   # the hot path: nothing to answer
                continue
            await self._message(data)

    async def _message(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError as exc:
            await self.ws.send_str(
                json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": str(exc)}})
            )
            return
        method = message.get("method") if isinstance(message, dict) else None
        if not isinstance(method, str):
            if self.authed and self.upstream is not None:
                await self.upstream.ws.send_frame(data, WSMsgType.TEXT)  # TrueNAS says what is wrong
            else:
                await self.ws.send_str(
                    json.dumps(
                        {
                            "jsonrpc": "2.0",
                            "id": None,
                            "error": {"code": -32600, "message": "Invalid Request"},
                        }
                    )
                )
            return
        id_ = message.get("id")
        if reserved_id(id_):
            reason = f"Invalid Request: ids starting with {RESERVED_ID!r} are reserved"
            await self.ws.send_str(json.dumps({"jsonrpc": "2.0", "id": None,
                                               "error": {"code": -32600, "message": reason}}))
            return
        params = message.get("params") or []
        if not isinstance(params, list):
            params = [params]
        answer = await self._local(method, id_, params)
        if answer is not None:
            if id_ is not None:
                await self.ws.send_str(answer)
            return
        if not self.authed or self.upstream is None:
            await self.ws.send_str(_error(id_, ENOTAUTHENTICATED, "ENOTAUTHENTICATED", "Not authenticated"))
            return
        if "subscribe" in method:
            self.subscribed = True
        await self.upstream.ws.send_frame(data, WSMsgType.TEXT)

    async def _from_upstream(self, data: bytes) -> None:
        """Every upstream message that answers none of authproxy's own calls goes to the client as is."""
        if b"ENOTAUTHENTICATED" in data:
            with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
                if json.loads(data)["error"]["data"]["errname"] == "ENOTAUTHENTICATED":
                    log.info("truenas ended the upstream session", extra={"fields": {"site": self.site.name}})
                    await self.ws.send_frame(data, WSMsgType.TEXT)
                    await self.ws.close(code=UPSTREAM_GONE[0], message=UPSTREAM_GONE[1].encode())
                    return
        if not self.ws.closed:
            await self.ws.send_frame(data, WSMsgType.TEXT)

    # ---- what authproxy answers itself ----------------------------------------------------------------

    async def _local(self, method: str, id_: Any, params: list[Any]) -> str | None:
        if method in LOGIN_CALLS:
            return await self._login_call(method, id_, params)
        if method == "auth.mechanism_choices":
            allowed = ["PASSWORD_PLAIN", "TOKEN_PLAIN", "OTP_TOKEN"]
            return _result(id_, allowed + (["API_KEY_PLAIN"] if self.adapter.allow_client_api_keys else []))
        if method == "core.set_options":
            if params and isinstance(params[0], dict):
                self.options.update(params[0])
            return None if self.authed else _result(id_, None)
        if method == "core.ping" and not self.authed:
            return _result(id_, "pong")
        if method == "auth.generate_token":
            if not self.authed:
                return _error(id_, ENOTAUTHENTICATED, "ENOTAUTHENTICATED", "Not authenticated")
            return _result(id_, self._placeholder(params[0] if params else None))
        if method == "auth.me":
            return await self._me(id_)
        if method == "auth.logout":
            await self._logout()
            return _result(id_, True)
        return None

    def _placeholder(self, ttl: Any = None) -> str:
        """What the client gets instead of a TrueNAS token (proxy/truenas_handoff.py)."""
        if self.loaded is None:
            return "authproxy-service-session"
        sessions = self.request.app[keys.SESSIONS]
        return handoff.issue(self.loaded, sessions.keyring, self.site.name, sessions.clock(), ttl)

    async def _from_placeholder(self, token: str) -> LoadedSession | None:
        """The live session a placeholder stands for (None: not one of ours, expired, or signed out)."""
        sessions = self.request.app[keys.SESSIONS]
        cookie = handoff.cookie_of(token, sessions.keyring, self.site.name, sessions.clock())
        if cookie is None:
            return None
        try:
            loaded = await sessions.load(cookie, client_ip=self.ip)
        except StoreError:
            return None
        return loaded if loaded is not None and self.site.name in loaded.session.credentials else None

    async def _me(self, id_: Any) -> str:
        if not self.authed or self.upstream is None:
            return _error(id_, ENOTAUTHENTICATED, "ENOTAUTHENTICATED", "Not authenticated")
        try:
            return _result(id_, without_secrets(await self.upstream.call("auth.me")))
        except RpcError as exc:
            return _error(id_, 14, exc.errname or "EFAULT", exc.reason)

    async def _logout(self) -> None:
        if self.upstream is not None:
            with contextlib.suppress(UpstreamError, RpcError):
                await self.upstream.call("auth.logout")
        await self._drop_upstream()
        self.authed = False
        if self.loaded is not None:
            loaded, self.loaded = self.loaded, None
            self.owns_session = False
            self._untrack()
            self._track()   # still open, now without a session
            with contextlib.suppress(StoreError):
                await end_session(self.request, loaded, reason="truenas_socket_logout")

    # ---- sign-in ---------------------------------------------------------------------------------

    async def _login_call(self, method: str, id_: Any, params: list[Any]) -> str:
        """The legacy calls are login_ex in other clothes (as in the middleware): booleans out."""
        legacy = method not in ("auth.login_ex", "auth.login_ex_continue")
        if method == "auth.login":
            data: dict[str, Any] = {
                "mechanism": "PASSWORD_PLAIN",
                "username": (params + [""])[0],
                "password": (params + ["", ""])[1],
            }
            otp = params[2] if len(params) > 2 else None
        elif method == "auth.login_with_token":
            data, otp = {"mechanism": "TOKEN_PLAIN", "token": (params + [""])[0]}, None
        elif method == "auth.login_with_api_key":
            data, otp = {"mechanism": "API_KEY_PLAIN", "api_key": (params + [""])[0]}, None
        else:
            if not params or not isinstance(params[0], dict):
                return _error(id_, 22, "EINVAL", f"{method}: the argument must be an object with a mechanism")
            data, otp = params[0], None
        try:
            answer = await self._login(data)
            if legacy and answer.get("response_type") == "OTP_REQUIRED" and otp:
                answer = await self._login({"mechanism": "OTP_TOKEN", "otp_token": otp})
        except Refused as exc:
            return _error(id_, exc.errnum, exc.errname, exc.reason)
        if legacy:
            if answer.get("response_type") == "OTP_REQUIRED":
                self.pending = None
            return _result(id_, answer.get("response_type") == "SUCCESS")
        return _result(id_, answer)

    async def _login(self, data: dict[str, Any]) -> dict[str, Any]:
        mechanism = data.get("mechanism")
        options: dict[str, Any] = data["login_options"] if isinstance(data.get("login_options"), dict) else {}
        if self.pending is not None and mechanism != "OTP_TOKEN":
            raise Refused(16, "EBUSY", f"{mechanism}: authentication in progress, expected OTP_TOKEN")
        if mechanism == "OTP_TOKEN":
            if self.pending is None:
                raise Refused(22, "EINVAL", "OTP_TOKEN: no authentication in progress")
            (username, password), self.pending = self.pending, None
            return await self._sign_in(username, password, str(data.get("otp_token") or ""), options)
        if self.service is not None and mechanism in ("PASSWORD_PLAIN", "TOKEN_PLAIN"):
            return await self._as_session(options)   # AUTH_MODE=none, or a service client: the key's account
        if mechanism == "PASSWORD_PLAIN":
            username, password = str(data.get("username") or ""), str(data.get("password") or "")
            if self.loaded is not None and self.loaded.session.user.lower() == username.lower():
                return await self._as_session(options)
            return await self._sign_in(username, password, None, options)
        if mechanism == "TOKEN_PLAIN":
            if self.service is not None:
                return await self._as_session(options)
            found = await self._from_placeholder(str(data.get("token") or ""))
            if found is not None:
                if self.loaded is None or found.store_key != self.loaded.store_key:
                    await self._adopt(found, owns=False)
                return await self._as_session(options)
            audit(
                "login",
                outcome="failure",
                user="",
                site=self.site.name,
                client_ip=self.ip,
                via="truenas_token",
            )
            return {"response_type": "AUTH_ERR"}
        if mechanism == "API_KEY_PLAIN":
            return await self._client_key(str(data.get("api_key") or ""), data.get("username"), options)
        raise Refused(95, "EOPNOTSUPP", f"{mechanism}: mechanism is not available through authproxy")

    async def _sign_in(
        self, username: str, password: str, otp: str | None, options: dict[str, Any]
    ) -> dict[str, Any]:
        """An authproxy sign-in (throttled, audited, TrueNAS checks it); the session is this socket's."""
        try:
            form = LoginInput.parse({"username": username, "password": password, "totp": otp})
            loaded, _cookie = await self.request.app[keys.LOGIN].sign_in(self.site, form, self.ip)
        except AuthError as exc:
            if exc.code == "totp_required":
                self.pending = (username, password)
                # The code must come within OTP_WAIT: the typed password is not kept any longer.
                asyncio.get_running_loop().call_later(OTP_WAIT, self._forget_pending, self.pending)
                return {"response_type": "OTP_REQUIRED", "username": username}
            if exc.status == 429:
                raise Refused(16, "EBUSY", str(exc)) from None
            kind = _MESSAGE_BY_TYPE.get(str(exc), "AUTH_ERR")
            return {"response_type": kind}
        except UpstreamError:
            raise Refused(14, "EFAULT", "TrueNAS cannot be reached from authproxy right now") from None
        await self._adopt(loaded, owns=True)
        return await self._as_session(options)

    def _forget_pending(self, pending: tuple[str, str]) -> None:
        if self.pending is pending:
            self.pending = None

    async def _client_key(self, key: str, username: Any, options: dict[str, Any]) -> dict[str, Any]:
        if not self.adapter.allow_client_api_keys:
            audit(
                "login",
                outcome="client_api_key_refused",
                actor="service",
                site=self.site.name,
                client_ip=self.ip,
            )
            raise Refused(
                13,
                "EACCES",
                "API keys are not accepted through authproxy here; sign in with a "
                "username and password (or set TRUENAS_ALLOW_CLIENT_API_KEYS=true)",
            )
        if self.adapter.key_refusal() is not None:
            audit("login", outcome="client_api_key_refused", actor="service", site=self.site.name,
                  client_ip=self.ip, reason="insecure_transport")
            raise Refused(13, "EACCES", "authproxy will not send an API key to TrueNAS over plain ws:// to "
                                         "another host (TrueNAS would revoke it); sign in with a password")
        regulator = self.request.app[keys.LOGIN].regulator
        name = f"apikey:{key.partition('-')[0]}"
        attempt = await regulator.begin(self.site.name, name, self.ip)

        def audited(outcome: str, **fields: str) -> None:
            audit("login", outcome=outcome, actor="service", user=name, site=self.site.name,
                  client_ip=self.ip, **fields)

        if attempt.retry_after is not None:
            audited("throttled")
            raise Refused(16, "EBUSY", "Too many failed sign-ins. Try again later.")
        extra = {"username": str(username)} if username else {}
        credential = Credential(secret=key, kind=KEY_KIND, actor="service", extra=extra)
        try:
            opened = await self.adapter.reopen(credential)
        except UpstreamError:
            await attempt.refund()
            raise Refused(14, "EFAULT", "TrueNAS cannot be reached from authproxy right now") from None
        if opened is None:
            attempt.failed()
            await attempt.refund()
            audited("failure")
            return {"response_type": "AUTH_ERR"}
        await attempt.succeeded()
        audited("success", via="client_api_key")
        await self._drop_upstream()
        self.service, self.upstream = credential, opened[0]
        return await self._authenticated(options)

    async def _adopt(self, loaded: LoadedSession, *, owns: bool) -> None:
        if self.loaded is not None and self.owns_session:
            with contextlib.suppress(StoreError):
                await end_session(self.request, self.loaded, reason="socket_relogin")
        self._untrack()
        await self._drop_upstream()
        self.loaded, self.owns_session = loaded, owns
        self._track()

    async def _as_session(self, options: dict[str, Any]) -> dict[str, Any]:
        """Log the upstream socket in as this socket's person (or service) and answer SUCCESS."""
        if self.upstream is None or self.upstream.closed:
            await self._open_upstream()
        return await self._authenticated(options)

    async def _open_upstream(self) -> None:
        credential = self._credential()
        if self.service is not None and credential is not None and self.adapter.is_service_key(credential):
            channel = self.adapter.shared_channel(credential)   # one shared socket, no login of its own
            try:
                await channel.shared.socket()
            except KeyRefused:
                raise Refused(ENOTAUTHENTICATED, "ENOTAUTHENTICATED",
                              "TrueNAS refused authproxy's API key") from None
            except UpstreamError:
                raise Refused(14, "EFAULT", "TrueNAS cannot be reached from authproxy right now") from None
            except RpcError as exc:
                raise Refused(16 if exc.errname == "EBUSY" else 14, exc.errname or "EFAULT",
                              exc.reason.split("] ", 1)[-1]) from None
            self.upstream = channel
            return
        if credential is not None and (parked := self.adapter.unpark(credential)) is not None:
            self.upstream = parked   # already logged in as this person: no login call upstream
            return
        if credential is None:
            raise Refused(
                ENOTAUTHENTICATED, "ENOTAUTHENTICATED", "Your session has no TrueNAS sign-in; sign in again"
            )
        try:
            opened = await self.adapter.reopen(credential)
        except UpstreamError:
            raise Refused(14, "EFAULT", "TrueNAS cannot be reached from authproxy right now") from None
        except RpcError as exc:   # TrueNAS refused the call itself (its rate limit: EBUSY)
            log.warning("truenas refused an upstream login", extra={"fields": {
                "site": self.site.name, "errname": exc.errname, "reason": exc.reason}})
            reason = exc.reason.split("] ", 1)[-1]
            raise Refused(16 if exc.errname == "EBUSY" else 14, exc.errname or "EFAULT", reason) from None
        if opened is None:
            if self.loaded is not None:
                with contextlib.suppress(StoreError):
                    await self.request.app[keys.SESSIONS].drop_credential(
                        self.loaded, self.site.name, client_ip=self.ip
                    )
            raise Refused(
                ENOTAUTHENTICATED, "ENOTAUTHENTICATED", "Your TrueNAS session has ended; sign in again"
            )
        sock, fresh = opened
        if self.loaded is not None and fresh is not credential:
            self.loaded.session.credentials[self.site.name] = fresh  # the next token of the chain
            with contextlib.suppress(StoreError):
                await self.request.app[keys.SESSIONS].save(self.loaded)
        self.upstream = sock

    async def _authenticated(self, options: dict[str, Any]) -> dict[str, Any]:
        assert self.upstream is not None
        self.upstream.on_message = self._from_upstream
        upstream = self.upstream
        self.lost = asyncio.create_task(self._upstream_lost(upstream), name="authproxy-truenas-upstream")
        if not self.authed:
            self._audit("authenticated")
        self.authed = True
        if self.options:
            with contextlib.suppress(RpcError):
                await self.upstream.call("core.set_options", self.options)
        user_info = None
        if options.get("user_info", True):
            try:
                user_info = without_secrets(await self.upstream.call("auth.me"))
            except RpcError:
                user_info = None
        return {
            "response_type": "SUCCESS",
            "user_info": user_info,
            "authenticator": "LEVEL_1",
            "reconnect_token": self._placeholder() if options.get("reconnect_token") else None,
        }

    async def _upstream_lost(self, upstream: RpcSocket | SharedChannel) -> None:
        """TrueNAS (or the network) closed the socket this client relies on: the client gets 1011, as
        from every bridge, and reconnects (the UI does, after 5 s)."""
        await upstream.wait_closed()
        if self.upstream is upstream and not self.ws.closed:
            self.closing = UPSTREAM_LOST
            await self.ws.close(code=UPSTREAM_LOST[0], message=UPSTREAM_LOST[1].encode())

    def _audit(self, outcome: str) -> None:
        """Who this socket acts as, audited when it signs in and when it ends: a person (`actor: user`)
        or the service key (`actor: service`, with the service client's name when it gave one)."""
        fields: dict[str, Any] = {"site": self.site.name, "client_ip": self.ip}
        if self.service is not None:
            client = self.request.get(keys.SERVICE_CLIENT)
            fields |= {"actor": "service", "user": client.name if client is not None else "service",
                       "account": self.service.extra.get("username") or ""}
        elif self.loaded is not None:
            fields |= {"actor": "user", "user": self.loaded.session.user, "session": self.loaded.public_id}
        audit("truenas_socket", outcome=outcome, **fields)

    async def _drop_upstream(self, *, park: bool = False) -> None:
        """Close the upstream socket; `park`: keep it for the person's next client socket instead, when
        it is logged in as them and carries nothing of this client's (no event subscription)."""
        if self.upstream is not None:
            upstream, self.upstream = self.upstream, None
            upstream.on_message = None
            if isinstance(upstream, SharedChannel):
                await upstream.close()   # its calls and subscriptions end; the shared socket stays
                return
            credential = self._credential()
            if (park and self.authed and not self.subscribed and credential is not None
                    and self.adapter.park(credential, upstream)):
                return
            await upstream.close()

    def _credential(self) -> Credential | None:
        if self.service is not None:
            return self.service
        return self.loaded.session.credentials.get(self.site.name) if self.loaded is not None else None

    # ---- the session watch (sign-out anywhere closes this socket) ---------------------------------

    def _track(self) -> None:
        """Register the socket with the bridges (proxy/bridges.py): its session's end closes it, as does
        a stopping server (sockets without a session too), and the metrics count it."""
        registry = self.request.app[keys.WEBSOCKETS]
        loaded = self.loaded
        self.entry = Bridge(
            store_key=loaded.store_key if loaded is not None else None,
            site=self.site.name,
            expires_at=loaded.session.expires_at if loaded is not None else None,
            loaded=loaded,
            slide_every=self.request.app[keys.SESSIONS].touch_interval,
        )
        registry.add(self.entry)
        self.watch = asyncio.create_task(
            _watch(self.request, self.entry, registry), name="authproxy-truenas-watch"
        )
        self.watch.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[tuple[int, str]]) -> None:
        if task.cancelled() or task.exception() is not None or self.ws.closed:
            return
        code, reason = task.result()
        self.closing = (code, reason)
        asyncio.ensure_future(self.ws.close(code=code, message=reason.encode()))

    def _untrack(self) -> None:
        if self.entry is not None:
            self.request.app[keys.WEBSOCKETS].remove(self.entry)
            self.entry.done.set()
            self.entry = None
        if self.watch is not None:
            self.watch.remove_done_callback(self._ended)
            self.watch.cancel()
            self.watch = None


class Refused(Exception):
    """A call authproxy answers with a TrueNAS-style CallError."""

    def __init__(self, errnum: int, errname: str, reason: str) -> None:
        super().__init__(reason)
        self.errnum = errnum
        self.errname = errname
        self.reason = reason
