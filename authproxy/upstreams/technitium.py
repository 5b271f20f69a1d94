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
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import unquote

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.bodies import read_up_to
from authproxy.config.schema import SiteConfig
from authproxy.errors import UpstreamProtocolError, UpstreamUnavailable
from authproxy.sessions.manager import LoadedSession
from authproxy.sessions.model import Credential, Identity
from authproxy.upstreams import technitium_admin as admin
from authproxy.upstreams.base import LoginResult, TokenCheck, UpstreamAdapter, UpstreamRequest
from authproxy.upstreams.query import FieldNames, query_with, query_without
from authproxy.upstreams.substitute import rewrite_tokens, session_placeholder
from authproxy.upstreams.ui import NO_STORE, Handoff, Outcome, UiAnswer, UiCall

DEFAULT_SESSION_TIMEOUT = 1800.0
# AuthManager: "Max limit of 5 attempts exceeded. Access blocked for 300 seconds."
_BLOCKED = re.compile(r"Max limit of \d+ attempts exceeded\. Access blocked for (\d{1,6}) seconds")
MAX_ENVELOPE = 1 << 20
_SLASHES = re.compile(r"/{2,}")

# The web UI's own calls that authproxy answers (paths as Technitium routes them: case-insensitive).
UI_LOGIN_PATHS = frozenset({"/api/user/login", "/api/login"})
UI_LOGOUT_PATHS = frozenset({"/api/user/logout", "/api/logout"})
UI_SESSION_PATH = "/api/user/session/get"
UI_ENTRY_PATHS = frozenset({"/", "/index.html"})
INVALID_TOKEN_MESSAGE = "Invalid token or session expired."
# Technitium reads its token from a `token` query or form field (QueryOrForm: urlencoded and multipart).
TOKEN_FIELDS = FieldNames(("token",))


PUBLIC_CALLS = frozenset({"/api/sso/status"})   # what Technitium answers without a token


def _api_path(raw_path: str) -> str:
    """The path as Technitium's router matches it: decoded, case-insensitive, no trailing slash; and
    `//` merged, as the many servers in front of it do (what merges is more API, never less)."""
    path = unquote(raw_path).lower()
    if "//" in path:
        path = _SLASHES.sub("/", path)
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def _envelope(status: str, message: str | None = None, **fields: Any) -> UiAnswer:
    """A Technitium-style answer: always HTTP 200, the outcome in `status`."""
    body: dict[str, Any] = dict(fields)
    body["status"] = status
    if message is not None:
        body["errorMessage"] = message
    return UiAnswer.json(body, compact=True, headers=NO_STORE)


def _query_or_form(query: list[tuple[str, str]], form: list[tuple[str, str]]) -> dict[str, str]:
    """Technitium's QueryOrForm: the query wins, then a urlencoded/multipart form; repeats join with ','."""
    values: dict[str, list[str]] = {}
    for name, value in form:
        values.setdefault(name, []).append(value)
    by_query: dict[str, list[str]] = {}
    for name, value in query:
        by_query.setdefault(name, []).append(value)
    values.update(by_query)
    return {name: ",".join(items) for name, items in values.items()}


def _table(value: Any) -> dict[str, Any]:
    """A JSON object from an answer, or {} when the field is missing or not an object."""
    return value if isinstance(value, dict) else {}


def _major(version: Any) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


class TechnitiumAdapter(UpstreamAdapter):
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
            problems.append(
                f"TECHNITIUM_API_VERSION: must be auto or a version like 14 or 15.2, but it is {api!r}"
            )
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

    async def _call(
        self,
        path: str,
        *,
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        credential: Credential | None = None,
        client_ip: str | None = None,
    ) -> dict[str, Any]:
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
            raise UpstreamUnavailable(
                f"technitium at {self.base} is unreachable ({type(exc).__name__})"
            ) from None
        try:
            envelope = json.loads(body)
        except ValueError:
            raise UpstreamProtocolError(
                f"technitium answered {path} with something that is not JSON"
            ) from None
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
                return LoginResult(
                    "blocked",
                    message="Too many failed sign-ins from this network; try again later.",
                    retry_after=int(banned.group(1)),
                )
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

    # ---- background work and the migration to a background token (upstreams/technitium_admin.py) ----

    async def check_background(self, credential: Credential) -> TokenCheck | None:
        """The token's own session, its effective permissions judged (groups included)."""
        try:
            env = await self._call("/api/user/session/get", credential=credential)
        except (UpstreamUnavailable, UpstreamProtocolError) as exc:
            return admin.unreadable(f"unreadable: {exc}")
        if env.get("status") != "ok":
            return admin.unreadable("refused by Technitium (invalid or expired token)")
        permissions = admin.permissions_of(env)
        if permissions is None:
            return admin.unreadable("Technitium's session answer has no permissions")
        return admin.judge(permissions)

    async def reverse_name(self, credential: Credential, address: str) -> str | None:
        env = await self._call("/api/dnsClient/resolve", credential=credential,
                               params={"server": "this-server", "domain": address, "type": "PTR"})
        return admin.ptr_from(env) if env.get("status") == "ok" else None

    async def may_administer(self, credential: Credential) -> bool:
        """Whether this (a person's own, or the shared admin) token may do every step of the migration."""
        env = await self._call("/api/user/session/get", credential=admin.plain(credential))
        return env.get("status") == "ok" and admin.may_administer(env)

    async def create_background_token(self, credential: Credential, *,
                                      base_name: str = admin.DEFAULT_BACKGROUND_USER
                                      ) -> admin.NewBackgroundToken:
        """The migration, with an administrator's token: a dedicated DnsClient-View-only user and its API
        token, checked like any background token. Raises admin.MigrationError."""
        cred = admin.plain(credential)
        users = admin.answer_of(await self._call("/api/admin/users/list", credential=cred), "list users")
        taken = {str(u.get("username", "")).lower() for u in users.get("users") or [] if isinstance(u, dict)}
        username = ""
        for name in admin.candidate_names(base_name, taken):
            env = await self._call("/api/admin/users/create", credential=cred, data={
                "user": name, "pass": admin.new_password(), "displayName": "authproxy background work (PTR)"})
            if env.get("status") == "error" and "already exists" in str(env.get("errorMessage")):
                continue  # taken since the list was read
            username = str(admin.answer_of(env, "create a user").get("username") or name)
            break
        if not username:
            raise admin.MigrationError("every name for the background user is taken", code="conflict",
                                       status=409)
        # Only Everyone (which cannot be left): no group that could make it unsafe.
        admin.answer_of(await self._call("/api/admin/users/set", credential=cred,
                                   data={"user": username, "memberOfGroups": ""}), "set the user's groups")
        section = admin.answer_of(await self._call("/api/admin/permissions/get", credential=cred, params={
            "section": admin.BACKGROUND_SECTION}), "read permissions")
        rows = section.get("userPermissions")
        table = admin.table_with(rows if isinstance(rows, list) else [], "username", username, view=True)
        admin.answer_of(await self._call("/api/admin/permissions/set", credential=cred, data={
            "section": admin.BACKGROUND_SECTION, "userPermissions": table}), "grant DnsClient: View")
        made = admin.answer_of(await self._call("/api/admin/sessions/createToken", credential=cred, data={
            "user": username, "tokenName": admin.TOKEN_NAME}), "create the API token")
        token = admin.require_token(made)
        check = await self.check_background(self.service_credential(token))
        assert check is not None
        if not check.ok:
            # Not handed out: take the user away again (its token dies with it).
            await self._call("/api/admin/users/delete", credential=cred, data={"user": username})
            raise admin.MigrationError(f"the new token for {username} is not safe ({check.reason}); fix the "
                                       "permissions of the Everyone group, then migrate again",
                                       code="unsafe_token", status=409)
        return admin.NewBackgroundToken(username=username, token=token, check=check)

    # ---- forwarding ------------------------------------------------------------------------------

    def prepare_request(self, req: UpstreamRequest, credential: Credential | None) -> None:
        if _api_path(req.raw_path).startswith("/api/"):
            # Technitium compresses JSON (DnsWebService: UseResponseCompression, br/gzip) and the proxy
            # must read API answers (expiry envelope, token placeholders): ask for them uncompressed.
            req.headers.popall("Accept-Encoding", None)
        req.headers.popall("Authorization", None)
        req.raw_query = query_without(req.raw_query, TOKEN_FIELDS)
        if credential is None:
            return
        mode = credential.extra.get("mode")
        if mode in ("bearer", "both"):
            req.headers["Authorization"] = f"Bearer {credential.secret}"
        if mode != "bearer":
            req.raw_query = query_with(req.raw_query, "token", credential.secret)

    @staticmethod
    def credential_fields() -> FieldNames:
        """The client's `token` goes from the query (above) and from form bodies (proxy/forms.py)."""
        return TOKEN_FIELDS

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

    # ---- the web UI's own calls: placeholders instead of tokens (see upstreams/substitute.py) --------
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
        return hashlib.sha256(
            f"authproxy-service-placeholder\x00{self.site.name}\x00{token}".encode()
        ).digest()

    # ---- the UI's own sign-in calls (upstreams/ui.py; web/uicalls.py answers them) --------------
    #
    # SSO-style handoff: Technitium's UI reads a non-HttpOnly `token` cookie on load (the upstream sets it
    # for 120 s after an SSO sign-in). authproxy sets it once per credential, holding the placeholder.
    ui_handoff: ClassVar[Handoff | None] = Handoff(cookie="token", max_age=120)

    def ui_call(self, method: str, upstream_path: str) -> UiCall | None:
        """The UI's login/logout/session calls (any method, as Technitium takes them) and its start page."""
        path = _api_path(upstream_path)
        if path in UI_LOGIN_PATHS:
            return "sign_in"
        if path in UI_LOGOUT_PATHS:
            return "sign_out"
        if path == UI_SESSION_PATH:
            return "session"
        if path in UI_ENTRY_PATHS and method == "GET":
            return "entry"
        return None

    def ui_words(self, call: UiCall, outcome: Outcome, message: str) -> UiAnswer | None:
        """Technitium's envelope: `2fa-required`, `error` with the message, `invalid-token`, `ok`."""
        if outcome == "totp_required":
            return _envelope("2fa-required", message)
        if outcome in ("failed", "refused"):
            return _envelope("error", message)
        if outcome == "no_session":
            return _envelope("invalid-token", INVALID_TOKEN_MESSAGE)
        if call == "sign_out":
            return _envelope("ok")
        return None

    def ui_login_fields(
        self, query: list[tuple[str, str]], form: list[tuple[str, str]]
    ) -> dict[str, str | None]:
        params = _query_or_form(query, form)
        return {"user": params.get("user"), "pass": params.get("pass"), "totp": params.get("totp")}

    async def ui_session(self, loaded: LoadedSession | None, client_ip: str) -> UiAnswer | None:
        """session/get as the UI expects it after a login, with the placeholder; AUTH_MODE=none
        (`loaded` None): everyone acts as the service credential, and the UI gets a placeholder for it."""
        if loaded is None:
            token = self.site.service_token
            if token is None:
                return _envelope("invalid-token", INVALID_TOKEN_MESSAGE)
            return await self._session_answer(Credential(secret=token.reveal(), actor="service"),
                                              key=self._service_key(), identity=None, client_ip=client_ip)
        return await self._session_answer(loaded.session.credentials[self.site.name], key=loaded.ticket.key,
                                          identity=loaded.session.identity, client_ip=client_ip)

    def public_call(self, method: str, upstream_path: str) -> bool:
        """`api/sso/status` is answered by Technitium for anyone (whether single sign-on is on): its
        UI asks on the login form, with no token, and shows an error banner on any other answer."""
        return method in ("GET", "HEAD", "POST") and _api_path(upstream_path) in PUBLIC_CALLS

    def signed_out(self, upstream_path: str, headers: Mapping[str, str],
                   query: Mapping[str, str]) -> UiAnswer | None:
        """An API call that carries a token (the UI's placeholder, or a script's token) but has no
        live session gets Technitium's own "invalid-token" answer, not authproxy's 401: Technitium's
        UI then shows its login form (which signs in through authproxy) instead of "Unable to
        connect", and API clients see the answer they already handle. Calls without any token, and
        page loads, get authproxy's usual answer (401 JSON or the login page)."""
        if not _api_path(upstream_path).startswith("/api/"):
            return None
        auth = headers.get("Authorization", "")
        if not (auth[:7].lower() == "bearer " or "token" in query):
            return None
        return _envelope("invalid-token", INVALID_TOKEN_MESSAGE)

    async def _session_answer(self, credential: Credential, *, key: bytes, identity: Identity | None,
                              client_ip: str | None) -> UiAnswer:
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
        env["token"] = session_placeholder(key, self.site.name)
        body = rewrite_tokens(json.dumps(env, separators=(",", ":")).encode(), key=key, site=self.site.name,
                              real=credential.secret)
        return UiAnswer(200, body, {"Content-Type": "application/json; charset=utf-8", **NO_STORE})
