"""Technitium DNS Server: `/api/user/login`, a 64-hex token, and a JSON envelope that says
`status: "invalid-token"` inside an HTTP 200 when the token is dead.

v15+ takes `Authorization: Bearer`; v14 and older only a `token` query/form parameter. The mode is
`token_mode` (bearer | query | auto); auto follows `api_version`, else the version the login reports.
"""

from __future__ import annotations

import json
import time
from typing import Any, ClassVar

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.config.schema import SiteConfig
from authproxy.errors import UpstreamProtocolError, UpstreamUnavailable
from authproxy.proxy.headers import query_with, query_without
from authproxy.sessions.model import Credential, Identity
from authproxy.upstreams.base import LoginResult, UpstreamRequest, register

DEFAULT_SESSION_TIMEOUT = 1800.0
MAX_ENVELOPE = 1 << 20


def _major(version: Any) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


@register("technitium")
class TechnitiumAdapter:
    name: ClassVar[str] = "technitium"

    def __init__(self, site: SiteConfig, http: aiohttp.ClientSession) -> None:
        self.site = site
        self.http = http
        self.base = site.upstream_url.rstrip("/")
        self.configured_mode = self._configured_mode(site.options)
        self.timeout = aiohttp.ClientTimeout(total=site.timeout, connect=site.connect_timeout)

    # ---- configuration ---------------------------------------------------------------------------

    @staticmethod
    def check_options(options: dict[str, Any]) -> list[str]:
        problems = []
        for key in options:
            if key not in {"api_version", "token_mode"}:
                problems.append(f"unknown technitium option {key!r}; known: api_version, token_mode")
        api = str(options.get("api_version", "auto")).lower()
        if api != "auto" and _major(api) is None:
            problems.append(f"TECHNITIUM_API_VERSION: must be auto or a version like 14 or 15.2, but it is {api!r}")
        mode = str(options.get("token_mode", "auto")).lower()
        if mode not in {"auto", "bearer", "query"}:
            problems.append(f"TECHNITIUM_TOKEN_MODE: must be auto, bearer or query, but it is {mode!r}")
        return problems

    @staticmethod
    def _configured_mode(options: dict[str, Any]) -> str:
        mode = str(options.get("token_mode", "auto")).lower()
        if mode != "auto":
            return mode
        major = _major(options.get("api_version", "auto"))
        if major is None:
            return "auto"
        return "bearer" if major >= 15 else "query"

    def _mode_for(self, reported_version: Any) -> str:
        if self.configured_mode != "auto":
            return self.configured_mode
        major = _major(reported_version)
        # Unknown version: the query parameter works on every version (v15 still accepts it).
        return "bearer" if major is not None and major >= 15 else "query"

    # ---- upstream calls --------------------------------------------------------------------------

    async def _call(self, path: str, *, params: dict[str, str] | None = None, data: dict[str, str] | None = None,
                    credential: Credential | None = None, client_ip: str | None = None) -> dict[str, Any]:
        headers: dict[str, str] = {"Accept": "application/json"}
        params = dict(params or {})
        if client_ip:
            headers["X-Real-IP"] = client_ip
        if credential is not None:
            if credential.extra.get("mode") == "bearer":
                headers["Authorization"] = f"Bearer {credential.secret}"
            else:
                params["token"] = credential.secret
        method = "POST" if data is not None else "GET"
        try:
            async with self.http.request(method, self.base + path, params=params, data=data, headers=headers,
                                         timeout=self.timeout, allow_redirects=False) as resp:
                if resp.status >= 500:
                    raise UpstreamUnavailable(f"technitium answered HTTP {resp.status}")
                body = await resp.content.read(MAX_ENVELOPE + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"technitium at {self.base} is unreachable ({type(exc).__name__})") from None
        try:
            envelope = json.loads(body)
        except ValueError:
            raise UpstreamProtocolError(f"technitium answered {path} with something that is not JSON") from None
        if not isinstance(envelope, dict) or "status" not in envelope:
            raise UpstreamProtocolError(f"technitium answered {path} without a status envelope")
        return envelope

    async def login(self, username: str, password: str, totp: str | None, client_ip: str) -> LoginResult:
        form = {"user": username, "pass": password, "includeInfo": "true"}
        if totp:
            form["totp"] = totp
        env = await self._call("/api/user/login", data=form, client_ip=client_ip)
        status = env.get("status")
        if status == "2fa-required":
            return LoginResult("totp_required", message="Enter the code from your authenticator app.")
        if status != "ok":
            message = str(env.get("errorMessage") or "")
            if "block" in message.lower():
                return LoginResult("blocked", message="Too many failed sign-ins from this network; try again later.",
                                   retry_after=300)
            if totp:
                return LoginResult("invalid", message="Invalid username, password or code.")
            return LoginResult("invalid", message="Invalid username or password.")
        token = env.get("token")
        if not isinstance(token, str) or not token:
            raise UpstreamProtocolError("technitium login answered ok without a token")
        info = env.get("info") if isinstance(env.get("info"), dict) else {}
        mode = self._mode_for(info.get("version"))
        credential = Credential(secret=token, kind="token",
                                extra={"mode": mode, "version": str(info.get("version", ""))},
                                upstream_ttl=DEFAULT_SESSION_TIMEOUT)
        try:
            profile = await self._call("/api/user/profile/get", credential=credential)
            timeout = (profile.get("response") or {}).get("sessionTimeoutSeconds")
            if isinstance(timeout, (int, float)):
                credential.upstream_ttl = float(timeout) if timeout > 0 else None
        except (UpstreamUnavailable, UpstreamProtocolError):
            pass  # keep the documented default
        return LoginResult("ok", credential=credential, identity=self._identity(env, username))

    @staticmethod
    def _identity(env: dict[str, Any], fallback_user: str) -> Identity:
        info = env.get("info") if isinstance(env.get("info"), dict) else {}
        perms = info.get("permissions") if isinstance(info.get("permissions"), dict) else {}
        return Identity(username=str(env.get("username") or fallback_user),
                        display_name=str(env.get("displayName") or ""), permissions=perms)

    async def logout(self, credential: Credential) -> None:
        await self._call("/api/user/logout", credential=credential)

    async def keepalive(self, credential: Credential) -> bool:
        env = await self._call("/api/user/session/get", credential=credential)
        if env.get("status") == "ok":
            credential.touched_at = time.time()
            return True
        return False

    async def identity(self, credential: Credential) -> Identity | None:
        env = await self._call("/api/user/session/get", credential=credential)
        if env.get("status") != "ok":
            return None
        return self._identity(env, "")

    # ---- forwarding ------------------------------------------------------------------------------

    def prepare_request(self, req: UpstreamRequest, credential: Credential | None) -> None:
        req.headers.popall("Authorization", None)
        req.raw_query = query_without(req.raw_query, ("token",))
        if req.form is not None:
            req.form = [(k, v) for k, v in req.form if k.lower() != "token"]
        if credential is None:
            return
        if credential.extra.get("mode") == "bearer":
            req.headers["Authorization"] = f"Bearer {credential.secret}"
        else:
            req.raw_query = query_with(req.raw_query, "token", credential.secret)

    def forward_auth_headers(self, credential: Credential) -> dict[str, str]:
        if credential.extra.get("mode") == "bearer":
            return {"Authorization": f"Bearer {credential.secret}"}
        return {"X-Authproxy-Token": credential.secret}

    def wants_body(self, req: UpstreamRequest, status: int, headers: CIMultiDictProxy[str]) -> bool:
        if status != 200 or not req.raw_path.startswith("/api/"):
            return False
        ctype = headers.get("Content-Type", "")
        length = headers.get("Content-Length")
        return "json" in ctype and (length is None or (length.isdigit() and int(length) <= MAX_ENVELOPE))

    def is_expired(self, status: int, headers: CIMultiDictProxy[str], body: bytes | None) -> bool:
        if status != 200 or not body or b"invalid-token" not in body:
            return False
        try:
            envelope = json.loads(body)
        except ValueError:
            return False
        return isinstance(envelope, dict) and envelope.get("status") == "invalid-token"

    def filter_response_headers(self, headers: CIMultiDict[str]) -> None:
        # The SSO handoff cookie `token` carries a real token: never to the browser.
        kept = [v for v in headers.getall("Set-Cookie", ()) if not v.lstrip().lower().startswith("token=")]
        headers.popall("Set-Cookie", None)
        for v in kept:
            headers.add("Set-Cookie", v)
