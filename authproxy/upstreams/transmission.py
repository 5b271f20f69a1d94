"""Transmission RPC: HTTP Basic on every call, no session, no logout (as transmission-daemon 3.00 does).

* Sign-in = one `session-get` RPC with the Basic credentials: 409 (no session id yet) or 200 mean
  they are right, 401 wrong, 403 "Too many unsuccessful login attempts" means Transmission locked
  everyone out until it restarts (it counts failures globally, so authproxy's throttle matters).
* The Basic value is the credential: injected as `Authorization`, the client's own is removed, and
  `WWW-Authenticate` never reaches the browser (no native Basic prompt behind authproxy).
* The `X-Transmission-Session-Id` 409 handshake is CSRF protection, not a credential: it passes
  through both ways untouched and the web UI / RPC client does it as usual.
* Expiry: any 401 (the password changed upstream). Logout ends only authproxy's session.

Option `rpc_path` (default "/transmission/rpc", i.e. Transmission's `rpc-url` + "rpc").
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.config.schema import SiteConfig
from authproxy.errors import UpstreamProtocolError, UpstreamUnavailable
from authproxy.sessions.model import Credential, Identity
from authproxy.upstreams.base import LoginResult, UpstreamAdapter, UpstreamRequest
from authproxy.upstreams.generic import basic_value, read_limited

RPC_PATH = "/transmission/rpc"
SESSION_GET = b'{"method":"session-get","arguments":{"fields":["version","rpc-version"]}}'
MAX_ANSWER = 1 << 16


class TransmissionAdapter(UpstreamAdapter):
    name: ClassVar[str] = "transmission"

    def __init__(self, site: SiteConfig, http: aiohttp.ClientSession) -> None:
        self.site = site
        self.http = http
        self.rpc_url = site.upstream_url.rstrip("/") + str(site.options.get("rpc_path", RPC_PATH))
        self.timeout = aiohttp.ClientTimeout(total=site.timeout, connect=site.connect_timeout)

    @staticmethod
    def check_options(options: dict[str, Any]) -> list[str]:
        problems = [f"unknown transmission option {k!r}; known: rpc_path" for k in options if k != "rpc_path"]
        path = options.get("rpc_path", RPC_PATH)
        if not isinstance(path, str) or not path.startswith("/") or "?" in path:
            problems.append(f"options.rpc_path: must be the RPC path (Transmission's rpc-url + \"rpc\", "
                            f"default {RPC_PATH!r}), but it is {path!r}")
        return problems

    async def _session_get(self, authorization: str | None) -> tuple[int, str]:
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if authorization is not None:
            headers["Authorization"] = authorization
        try:
            async with self.http.post(self.rpc_url, data=SESSION_GET, headers=headers, timeout=self.timeout,
                                      allow_redirects=False) as resp:
                if resp.status >= 500:
                    raise UpstreamUnavailable(f"transmission answered HTTP {resp.status}")
                body = await read_limited(resp, MAX_ANSWER)
                return resp.status, body.decode("latin-1")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"transmission at {self.rpc_url} is unreachable "
                                      f"({type(exc).__name__})") from None

    async def _check(self, authorization: str | None) -> str:
        """ok | invalid | locked, or UpstreamProtocolError for a gate that is not about the password."""
        status, text = await self._session_get(authorization)
        if status in (200, 409):
            return "ok"
        if status == 401:
            return "invalid"
        if status == 403 and "unsuccessful login" in text.lower():
            return "locked"
        if status == 403:
            raise UpstreamProtocolError("transmission refuses authproxy's address; add it to rpc-whitelist")
        if status == 421:
            raise UpstreamProtocolError("transmission refuses the host name; add it to rpc-host-whitelist")
        raise UpstreamProtocolError(f"transmission answered {status} at {self.rpc_url}; check rpc_path")

    async def login(self, username: str, password: str, totp: str | None, client_ip: str) -> LoginResult:
        value = basic_value(username, password)
        verdict = await self._check(value)
        if verdict == "locked":
            return LoginResult("blocked", message="Transmission locked sign-ins after too many failures; it "
                                                  "must be restarted.")
        if verdict == "invalid":
            return LoginResult("invalid", message="Invalid username or password.")
        # Accepted: but would anything have been? With rpc-authentication-required off Transmission takes
        # every password, so this sign-in proved nothing. (Asked after the success, which reset
        # Transmission's failure count: the probe's 401 cannot bring a lockout near.)
        if await self._check(None) == "ok":
            raise UpstreamProtocolError(
                "transmission does not require a password (rpc-authentication-required "
                "is false), so it cannot tell who is signing in; turn it on, or use "
                "AUTH_MODE=none"
            )
        return LoginResult("ok", credential=Credential(secret=value, kind="basic", extra={"user": username}),
                           identity=Identity(username=username))

    async def logout(self, credential: Credential) -> None:
        return None  # Basic has no upstream session to end

    async def keepalive(self, credential: Credential) -> bool:
        verdict = await self._check(credential.secret)
        if verdict == "locked":
            raise UpstreamUnavailable("transmission locked sign-ins after too many failures")
        return verdict == "ok"

    def prepare_request(self, req: UpstreamRequest, credential: Credential | None) -> None:
        req.headers.popall("Authorization", None)
        if credential is not None:
            req.headers["Authorization"] = credential.secret

    def forward_auth_headers(self, credential: Credential) -> dict[str, str]:
        return {"Authorization": credential.secret}

    def wants_body(self, req: UpstreamRequest, status: int, headers: CIMultiDictProxy[str]) -> bool:
        return status == 401

    def is_expired(self, status: int, headers: CIMultiDictProxy[str], body: bytes | None) -> bool:
        return status == 401

    def filter_response_headers(self, headers: CIMultiDict[str]) -> None:
        headers.popall("WWW-Authenticate", None)
