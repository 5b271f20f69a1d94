"""Technitium DNS Server: `/api/user/login`, a 64-hex token, and a JSON envelope that says
`status: "invalid-token"` inside an HTTP 200 when the token is dead.

v15+ takes `Authorization: Bearer`; v14 and older only a `token` query/form parameter. The mode is
`token_mode` (bearer | query | auto); auto follows `api_version`, else the version the login reports.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy import crosssite, keys
from authproxy.bodies import read_up_to
from authproxy.config.schema import SiteConfig
from authproxy.errors import AuthError, UpstreamError, UpstreamProtocolError, UpstreamUnavailable
from authproxy.proxy.headers import query_with, query_without
from authproxy.proxy.substitute import rewrite_tokens, session_placeholder
from authproxy.sessions.model import Credential, Identity
from authproxy.upstreams.base import LoginResult, UpstreamRequest, register

if TYPE_CHECKING:
    from authproxy.routing import Site
    from authproxy.sessions.manager import LoadedSession

DEFAULT_SESSION_TIMEOUT = 1800.0
# AuthManager: "Max limit of 5 attempts exceeded. Access blocked for 300 seconds."
_BLOCKED = re.compile(r"Max limit of \d+ attempts exceeded\. Access blocked for (\d{1,6}) seconds")
MAX_ENVELOPE = 1 << 20

# The web UI's own calls that authproxy answers (paths as Technitium routes them: case-insensitive).
UI_LOGIN_PATHS = frozenset({"/api/user/login", "/api/login"})
UI_LOGOUT_PATHS = frozenset({"/api/user/logout", "/api/logout"})
UI_SESSION_PATH = "/api/user/session/get"
UI_ENTRY_PATHS = frozenset({"/", "/index.html"})
INVALID_TOKEN_MESSAGE = "Invalid token or session expired."
# SSO-style handoff: Technitium's UI reads a non-HttpOnly `token` cookie on load (the upstream sets it
# for 120 s after an SSO sign-in). authproxy sets it once per credential, holding the placeholder.
HANDOFF_COOKIE = "token"
HANDOFF_MAX_AGE = 120
HANDOFF_FLAG = "ui_placeholder_sent"   # in Credential.extra: the UI already got its placeholder
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _api_path(raw_path: str) -> str:
    """The path as Technitium's router matches it: decoded, case-insensitive, no trailing slash."""
    path = unquote(raw_path).lower()
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def _envelope(status: str, message: str | None = None, **fields: Any) -> web.Response:
    """A Technitium-style answer: always HTTP 200, the outcome in `status`."""
    body: dict[str, Any] = dict(fields)
    body["status"] = status
    if message is not None:
        body["errorMessage"] = message
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=200,
                        content_type="application/json", charset="utf-8", headers=NO_STORE)


def _navigation(request: web.Request) -> bool:
    mode = request.headers.get("Sec-Fetch-Mode")
    if mode is not None:
        return mode.lower() == "navigate"
    return "text/html" in request.headers.get("Accept", "")


async def _query_or_form(request: web.Request) -> dict[str, str]:
    """Technitium's QueryOrForm: the query wins, then a urlencoded/multipart form; repeats join with ','."""
    values: dict[str, list[str]] = {}
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.post()  # bounded by the app's client_max_size
        except (ValueError, LookupError):  # a multipart body without its boundary, bytes not in the charset,
            # an unknown charset: aiohttp raises these as they are (a 500), they are the client's mistake
            raise AuthError("The form could not be read.", code="bad_request", status=400) from None
        for name, value in form.items():
            if isinstance(value, str):
                values.setdefault(name, []).append(value)
    query: dict[str, list[str]] = {}
    for name, value in request.query.items():
        query.setdefault(name, []).append(value)
    values.update(query)
    return {name: ",".join(items) for name, items in values.items()}


def _table(value: Any) -> dict[str, Any]:
    """A JSON object from an answer, or {} when the field is missing or not an object."""
    return value if isinstance(value, dict) else {}


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
                body = await read_up_to(resp.content, MAX_ENVELOPE + 1)
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
            # Match the ban sentence itself: the failure message repeats the username, which may say "block".
            banned = _BLOCKED.match(message)
            if banned:
                return LoginResult("blocked", message="Too many failed sign-ins from this network; try again later.",
                                   retry_after=int(banned.group(1)))
            if totp:
                return LoginResult("invalid", message="Invalid username, password or code.")
            return LoginResult("invalid", message="Invalid username or password.")
        token = env.get("token")
        if not isinstance(token, str) or not token:
            raise UpstreamProtocolError("technitium login answered ok without a token")
        info = _table(env.get("info"))
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
        info = _table(env.get("info"))
        perms = _table(info.get("permissions"))
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

    # ---- forwarding ------------------------------------------------------------------------------

    def prepare_request(self, req: UpstreamRequest, credential: Credential | None) -> None:
        if _api_path(req.raw_path).startswith("/api/"):
            # Technitium compresses JSON (DnsWebService: UseResponseCompression, br/gzip) and the proxy
            # must read API answers (expiry envelope, token placeholders): ask for them uncompressed.
            req.headers.popall("Accept-Encoding", None)
        req.headers.popall("Authorization", None)
        req.raw_query = query_without(req.raw_query, ("token",))
        if req.form is not None:
            req.form = [(k, v) for k, v in req.form if k.lower() != "token"]
        if credential is None:
            return
        mode = credential.extra.get("mode")
        if mode in ("bearer", "both"):
            req.headers["Authorization"] = f"Bearer {credential.secret}"
        if mode != "bearer":
            req.raw_query = query_with(req.raw_query, "token", credential.secret)

    @staticmethod
    def gets_change_state(upstream_path: str) -> bool:
        """Technitium takes every API call as a GET (zones/delete, settings/set, user/createToken...)."""
        return _api_path(upstream_path).startswith("/api/")

    def forward_auth_headers(self, credential: Credential) -> dict[str, str]:
        mode = credential.extra.get("mode")
        headers: dict[str, str] = {}
        if mode in ("bearer", "both"):
            headers["Authorization"] = f"Bearer {credential.secret}"
        if mode != "bearer":
            headers["X-Authproxy-Token"] = credential.secret
        return headers

    def service_credential(self, secret: str) -> Credential:
        """The configured service token (AUTH_MODE=none/hybrid). No login tells the version, so an
        unset mode sends both forms: v15+ reads the Bearer header (it wins), v14 the `token` parameter."""
        mode = self.configured_mode if self.configured_mode != "auto" else "both"
        return Credential(secret=secret, kind="token", actor="service", extra={"mode": mode})

    def wants_body(self, req: UpstreamRequest, status: int, headers: CIMultiDictProxy[str]) -> bool:
        if status != 200 or not _api_path(req.raw_path).startswith("/api/"):
            return False  # Technitium routes case-insensitively: /API/user/session/get is an API call too
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

    # ---- the web UI's own calls: placeholders instead of tokens (see proxy/substitute.py) --------
    #
    # Technitium's UI keeps a token in localStorage and sends it back as Bearer/`?token=`. It gets this
    # session's placeholder instead; the proxy strips whatever the client sends and injects the real
    # token from the sealed session, so the placeholder is never looked up. Downloads: the UI asks
    # createSingleUseToken and opens `api/...?token=<single-use>`; the single-use token is replaced by a
    # derived placeholder and the download request simply gets the session's real token injected (the
    # upstream's unused single-use token lapses at its next config save), so no server-side map is kept.

    def placeholder(self, loaded: LoadedSession) -> str:
        """What this session's browser holds instead of its Technitium token."""
        return session_placeholder(loaded.ticket.key, self.site.name)

    def rewrite_body(self, ureq: UpstreamRequest, body: bytes, loaded: LoadedSession | None) -> bytes:
        """JSON answers as the browser may see them: the session's token (anywhere) becomes its
        placeholder; other tokens in `token`/`response.token` (createToken, createSingleUseToken,
        admin sessions/createToken) become derived placeholders. Without a session (AUTH_MODE=none)
        the service token is what must not show."""
        if loaded is None:
            token = self.site.service_token
            return rewrite_tokens(body, key=self._service_key(), site=self.site.name,
                                  real=token.reveal() if token is not None else None)
        credential = loaded.session.credentials.get(self.site.name)
        return rewrite_tokens(body, key=loaded.ticket.key, site=self.site.name,
                              real=credential.secret if credential is not None else None)

    def answer_secret(self, ureq: UpstreamRequest, headers: CIMultiDictProxy[str],
                      loaded: LoadedSession | None) -> tuple[str, str] | None:
        """For JSON answers too large to rewrite whole: the token becomes its placeholder as it streams
        by (both 64 hex characters, so the length holds). Token *fields* need the whole document."""
        if "json" not in headers.get("Content-Type", "") or not _api_path(ureq.raw_path).startswith("/api/"):
            return None
        if loaded is None:
            token = self.site.service_token
            if token is None:
                return None
            return token.reveal(), session_placeholder(self._service_key(), self.site.name)
        credential = loaded.session.credentials.get(self.site.name)
        if credential is None or not credential.secret:
            return None
        return credential.secret, session_placeholder(loaded.ticket.key, self.site.name)

    def _service_key(self) -> bytes:
        """Placeholder key for the service token: one-way from it, so the placeholder reveals nothing."""
        token = self.site.service_token.reveal() if self.site.service_token is not None else ""
        return hashlib.sha256(f"authproxy-service-placeholder\x00{self.site.name}\x00{token}".encode()).digest()

    async def intercept(self, request: web.Request, site: Site) -> web.StreamResponse | None:
        """Answer the UI's login/logout/session calls; hand a freshly signed-in UI its placeholder."""
        path = _api_path(site.upstream_path(request.rel_url.raw_path))
        if path in UI_LOGIN_PATHS:
            return await self._ui_login(request, site)
        if path in UI_LOGOUT_PATHS:
            return await self._ui_logout(request)
        if path == UI_SESSION_PATH:
            return await self._ui_session(request, site)
        if path in UI_ENTRY_PATHS and request.method == "GET" and _navigation(request):
            return await self._ui_handoff(request, site)
        return None

    def signed_out(self, request: web.Request, site: Site) -> web.StreamResponse | None:
        """An API call that carries a token (the UI's placeholder, or a script's token) but has no
        live session gets Technitium's own "invalid-token" answer, not authproxy's 401: Technitium's
        UI then shows its login form (which signs in through authproxy) instead of "Unable to
        connect", and API clients see the answer they already handle. Calls without any token, and
        page loads, get authproxy's usual answer (401 JSON or the login page)."""
        if not _api_path(site.upstream_path(request.rel_url.raw_path)).startswith("/api/"):
            return None
        auth = request.headers.get("Authorization", "")
        if not (auth[:7].lower() == "bearer " or "token" in request.rel_url.query):
            return None
        return _envelope("invalid-token", INVALID_TOKEN_MESSAGE)

    async def _load(self, request: web.Request) -> LoadedSession | None:
        from authproxy.web.common import current_session  # web/ owns the cookie rules

        return await current_session(request)

    async def _ui_login(self, request: web.Request, site: Site) -> web.StreamResponse:
        """The UI's login form and its admin/admin auto-try, run through authproxy's own sign-in
        (throttling, audit, new session id) and answered in Technitium's envelope."""
        from authproxy.login.passthrough import LoginInput
        from authproxy.web.api import set_session_cookie

        if not request.app[keys.CONFIG].session_mode:
            return await self._ui_service_session(request, site)
        if not request.secure:
            return _envelope("error", "Sign-in needs HTTPS; open this page over https://.")
        if crosssite.from_other_site(request):  # login CSRF / forced logout
            return _envelope("error", "Cross-site sign-in refused.")
        try:
            params = await _query_or_form(request)
            form = LoginInput.parse({"user": params.get("user"), "pass": params.get("pass"),
                                     "totp": params.get("totp")})
        except AuthError as exc:
            return _envelope("error", str(exc))
        manager = request.app[keys.SESSIONS]
        previous = await self._load(request)
        try:
            loaded, cookie = await request.app[keys.LOGIN].sign_in(site, form, request.remote or "")
        except AuthError as exc:
            if exc.code == "totp_required":
                return _envelope("2fa-required", str(exc))
            return _envelope("error", str(exc))
        except UpstreamError:
            return _envelope("error", f"{site.name} is not answering right now; try again in a moment.")
        credential = loaded.session.credentials[site.name]
        credential.extra[HANDOFF_FLAG] = True  # this answer carries the placeholder
        if previous is not None:
            await manager.adopt(loaded, previous)   # as the portal does
        else:
            await manager.save(loaded)  # the handoff flag
        response = await self._session_answer(credential, key=loaded.ticket.key, site=site,
                                              identity=loaded.session.identity, client_ip=request.remote)
        set_session_cookie(request, response, cookie)
        return response

    async def _ui_logout(self, request: web.Request) -> web.StreamResponse:
        """The UI's logout ends the authproxy session (and, through it, the upstream sessions)."""
        from authproxy.web.api import clear_session_cookie, end_session

        if not request.app[keys.CONFIG].session_mode:
            return _envelope("ok")
        loaded = await self._load(request)
        if loaded is None:
            return _envelope("invalid-token", INVALID_TOKEN_MESSAGE)
        if crosssite.from_other_site(request):  # login CSRF / forced logout
            return _envelope("error", "Cross-site sign-out refused.")
        await end_session(request, loaded, reason="success")
        response = _envelope("ok")
        clear_session_cookie(request, response)
        return response

    async def _ui_session(self, request: web.Request, site: Site) -> web.StreamResponse | None:
        """session/get: forwarded (and rewritten) with a session; otherwise the UI's login form."""
        if not request.app[keys.CONFIG].session_mode:
            return await self._ui_service_session(request, site)
        loaded = await self._load(request)
        if loaded is None or site.name not in loaded.session.credentials:
            return _envelope("invalid-token", INVALID_TOKEN_MESSAGE)
        return None

    async def _ui_handoff(self, request: web.Request, site: Site) -> web.StreamResponse | None:
        """After a portal sign-in the UI has no token and would try admin/admin: once per credential,
        the page load gets a short-lived `token=<placeholder>` cookie, as Technitium's SSO does."""
        try:
            has_handoff = HANDOFF_COOKIE in request.cookies
        except Exception:  # noqa: BLE001 - a malformed Cookie header: no handoff, never a 500
            return None
        if not request.app[keys.CONFIG].session_mode or has_handoff:
            return None
        loaded = await self._load(request)
        credential = loaded.session.credentials.get(site.name) if loaded is not None else None
        if loaded is None or credential is None or credential.extra.get(HANDOFF_FLAG):
            return None
        credential.extra[HANDOFF_FLAG] = True  # once: a browser refusing the cookie cannot loop
        await request.app[keys.SESSIONS].save(loaded)
        response = web.Response(status=302, headers={**NO_STORE, "Location": str(request.rel_url)})
        response.set_cookie(HANDOFF_COOKIE, self.placeholder(loaded), max_age=HANDOFF_MAX_AGE,
                            path=site.config.path_prefix, secure=request.secure, httponly=False,
                            samesite="Lax")
        return response

    async def _ui_service_session(self, request: web.Request, site: Site) -> web.StreamResponse:
        """AUTH_MODE=none: everyone acts as the service credential; the UI gets a placeholder for it."""
        token = site.config.service_token
        if token is None:
            return _envelope("invalid-token", INVALID_TOKEN_MESSAGE)
        return await self._session_answer(Credential(secret=token.reveal(), actor="service"), key=self._service_key(),
                                          site=site, identity=None, client_ip=request.remote)

    async def _session_answer(self, credential: Credential, *, key: bytes, site: Site,
                              identity: Identity | None, client_ip: str | None) -> web.Response:
        """session/get as the UI expects it after a login (info, permissions), token -> placeholder."""
        try:
            env: dict[str, Any] | None = await self._call("/api/user/session/get", credential=credential,
                                                          client_ip=client_ip)
        except (UpstreamUnavailable, UpstreamProtocolError):
            env = None
        if env is None or env.get("status") != "ok":
            if identity is None:
                return _envelope("invalid-token", INVALID_TOKEN_MESSAGE)
            env = {"displayName": identity.display_name, "username": identity.username,
                   "info": {"permissions": identity.permissions}, "status": "ok"}
        env["token"] = session_placeholder(key, site.name)
        body = rewrite_tokens(json.dumps(env, separators=(",", ":")).encode(), key=key, site=site.name,
                              real=credential.secret)
        return web.Response(body=body, status=200, content_type="application/json", charset="utf-8",
                            headers=NO_STORE)
