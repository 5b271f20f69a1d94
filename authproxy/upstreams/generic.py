"""A declarative adapter: describe a product's login API in the site's `options`, no code needed.

    [[sites]]
    name = "adguard"
    type = "generic"
    upstream_url = "http://127.0.0.1:3000"
    hosts = ["dns.example.com"]

    [sites.options.login]            # how authproxy signs in upstream with the person's credentials
    path = "/control/login"
    encoding = "json"                # body {"name": <username>, "password": <password>}
    username_field = "name"
    password_field = "password"

    [sites.options.credential]       # where the upstream's session comes back
    from = "cookie"
    name = "agh_session"

    [sites.options.inject]           # where it goes on every forwarded request
    as = "cookie"
    name = "agh_session"

    [sites.options.expiry]           # how the upstream says "this session is dead"
    status = [401]
    paths = ["/control/"]
    redirect_to = ["/login.html"]

    [sites.options.hide]             # what the browser must never send or receive
    request_headers = ["Authorization"]

    [sites.options.logout]
    method = "GET"
    path = "/control/logout"
    intercept = true                 # the UI's own "sign out" also ends the authproxy session

    [sites.options.keepalive]
    method = "GET"
    path = "/control/status"

(`type = "adguard"` is exactly this configuration, and `type = "pihole"` a similar one.)

Every table and key, with its default:

[login]  (required)
    method = "POST"
    path                            required; the login call, e.g. "/api/auth"
    encoding = "form"               form | json | basic (HTTP Basic; any `fields` go as a JSON body)
    username_field = "username"     "" = the product has one account and no user name (Pi-hole)
    password_field = "password"
    totp_field = ""                 "" = no one-time codes; else the field the code goes in
    totp_number = false             json: send the code as a number (Pi-hole) instead of a string
    fields = {}                     extra constant fields sent with every login
    ok_status = []                  statuses that mean "credentials accepted"; [] = any 2xx
    blocked_status = [429]          "too many attempts" (Retry-After is honoured)
    totp_required_status = 0        an answer asking for the code: this status (0 = any) ...
    totp_required_text = ""         ... whose body contains this text ("" = never asks)
    success_text = ""               when set, an accepted login's body must contain it
    ui_answer = ""                  when set, the UI's own call to this path (method + path) is
    ui_answer_type = "text/plain"   answered with this body while the person is signed in; when
                                    not, that call is refused (403) while signed in: the login API
                                    is only ever called by authproxy (throttled and audited)

[credential]  (required)
    from                            cookie | json | header | basic (the Basic value itself)
    name                            the cookie or header name (cookie, header)
    pointer                         the JSON pointer in the login answer, e.g. "/session/sid" (json)
    ttl = 0                         upstream sliding timeout in seconds (0 = none known); authproxy's
    ttl_pointer = ""                heartbeat keeps it alive; or read it from the login answer

[inject]  (default: the same cookie / header the credential came in; required for from = "json")
    as                              header | cookie | query
    name                            header, cookie or query parameter name
    template = "{credential}"       e.g. "Bearer {credential}" (header only)

[expiry]
    status = [401]                  these answers mean the credential is dead ...
    paths = []                      ... on these path prefixes ([] = every path)
    json_pointer = ""               and/or: a JSON answer (on those paths) whose field ...
    json_value                      ... equals this value, e.g. "/status" = "invalid-token"
    redirect_to = []                a redirect to one of these paths means dead, e.g. "/login.html"

[hide]
    json = []                       JSON pointers replaced by null in answers (e.g. "/session/sid")
    json_paths = []                 ... in answers to these path prefixes ([] = the login path)
    set_cookies = []                Set-Cookie names never passed to the browser (the credential's
                                    own cookie always is dropped)
    response_headers = []           answer headers dropped (basic: "WWW-Authenticate" by default)
    request_cookies = []            client cookies removed before forwarding (plus the injected one)
    request_headers = ["Authorization"]   client headers removed (plus the injected one)
    params = []                     query and form parameters removed (plus the injected): from the
                                    query and urlencoded bodies of any size; a multipart part of that
                                    name is refused (400)

[logout]     method = "POST", path = "" (none), intercept = false
[keepalive]  method = "GET",  path = "" (none: the heartbeat never calls upstream)
[identity]   username = ""      a fixed name for single-account products ("" = the name typed)

Paths are the upstream's own, relative to `upstream_url` (not the public `path_prefix`), and are
matched %-decoded and normalised, as the upstream will read them.

Limits: expiry and hiding need the answer buffered, so they apply to answers up to 1 MiB with an
uncompressed body (authproxy asks for `Accept-Encoding: identity` on the paths it must read). A JSON
request body is streamed as sent, so `params` cannot clean JSON bodies.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.bodies import read_up_to
from authproxy.config.schema import SiteConfig
from authproxy.errors import UpstreamProtocolError, UpstreamUnavailable
from authproxy.sessions.manager import LoadedSession
from authproxy.sessions.model import Credential, Identity
from authproxy.upstreams import cookies
from authproxy.upstreams.base import LoginResult, UpstreamAdapter, UpstreamRequest
from authproxy.upstreams.generic_options import (
    MISSING,
    CallSpec,
    GenericSpec,
    merge_options,
    parse_spec,
    pointer_blank,
    pointer_get,
)
from authproxy.upstreams.query import FieldNames, query_with, query_without
from authproxy.upstreams.substitute import scrubber
from authproxy.upstreams.ui import Outcome, UiAnswer, UiCall

MAX_PEEK = 1 << 20
MAX_LOGIN_ANSWER = 1 << 16


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer's body up to `limit` bytes."""
    return await read_up_to(resp.content, limit)


def canonical_path(raw_path: str) -> str:
    """The path as the upstream will understand it: %-decoded, `//` merged, `.`/`..` resolved.

    Rules match on this, so `/api/%61uth` or `/api//auth/../auth` cannot slip past a hide rule.
    """
    segments: list[str] = []
    for part in unquote(raw_path).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if segments:
                segments.pop()
            continue
        segments.append(part)
    trailing = "/" if raw_path.endswith("/") and segments else ""
    return "/" + "/".join(segments) + trailing


def _under(raw_path: str, prefixes: tuple[str, ...]) -> bool:
    """`path` is one of `prefixes` or below one ("/api/" and "/api" both cover "/api" and "/api/x")."""
    path = canonical_path(raw_path)
    for prefix in prefixes:
        bare = prefix.rstrip("/")
        if path == bare or path == prefix or path.startswith(bare + "/"):
            return True
    return False


def _is_json(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    ctype = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return ctype == "application/json" or ctype.endswith("+json")


def _small(headers: CIMultiDictProxy[str]) -> bool:
    length = headers.get("Content-Length")
    return length is None or (length.isdigit() and int(length) <= MAX_PEEK)


def _location_path(headers: CIMultiDictProxy[str], base_path: str) -> str:
    """A redirect's target as a path relative to the upstream URL (what `redirect_to` lists)."""
    path = urlsplit(headers.get("Location", "")).path
    if base_path and (path == base_path or path.startswith(base_path + "/")):
        path = path[len(base_path):]
    return canonical_path(path if path.startswith("/") else "/" + path)


def _retry_after(headers: CIMultiDictProxy[str]) -> int | None:
    value = headers.get("Retry-After", "")
    return int(value) if value.isdigit() else None


class GenericAdapter(UpstreamAdapter):
    """An adapter driven by a `GenericSpec` (see the module docstring for the options)."""

    name: ClassVar[str] = "generic"
    preset: ClassVar[dict[str, Any]] = {}   # built-in configurations (pihole, adguard) set this
    label: ClassVar[str] = "the upstream"

    def __init__(self, site: SiteConfig, http: aiohttp.ClientSession) -> None:
        self.site = site
        self.http = http
        self.base = site.upstream_url.rstrip("/")
        self.base_path = urlsplit(self.base).path.rstrip("/")
        spec, problems = parse_spec(merge_options(self.preset, site.options))
        if spec is None:  # validate.check reports these at start-up; this is a programming error
            raise ValueError("; ".join(problems))
        self.spec = spec
        self.timeout = aiohttp.ClientTimeout(total=site.timeout, connect=site.connect_timeout)
        s = spec
        self._strip_cookies = set(s.hide.request_cookies)
        if s.inject.as_ == "cookie":
            self._strip_cookies.add(s.inject.name)
        if s.credential.from_ == "cookie":
            self._strip_cookies.add(s.credential.name)
        self._drop_set_cookies = set(s.hide.set_cookies) | (
            {s.credential.name} if s.credential.from_ == "cookie" else set()) | (
            {s.inject.name} if s.inject.as_ == "cookie" else set())
        self._strip_headers = set(s.hide.request_headers) | (
            {s.inject.name} if s.inject.as_ == "header" else set()
        )
        self._drop_headers = set(s.hide.response_headers) | (
            {s.credential.name} if s.credential.from_ == "header" else set())
        self._strip_params = FieldNames(set(s.hide.params) | ({s.inject.name} if s.inject.as_ == "query"
                                                              else set()))

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> list[str]:
        return parse_spec(merge_options(cls.preset, options))[1]

    @classmethod
    def typed_names(cls, options: dict[str, Any]) -> bool:
        """The identity is whatever name the person typed: the upstream has one account and checks
        only the password (Pi-hole), and no fixed `[identity] username` is set."""
        spec = parse_spec(merge_options(cls.preset, options))[0]
        return spec is not None and not spec.login.username_field and not spec.username

    # ---- upstream calls --------------------------------------------------------------------------

    def _auth_parts(self, credential: Credential) -> tuple[dict[str, str], dict[str, str]]:
        """(headers, query params) that carry `credential` on a call authproxy makes itself."""
        inj = self.spec.inject
        if inj.as_ == "header":
            return {inj.name: inj.template.replace("{credential}", credential.secret)}, {}
        if inj.as_ == "cookie":
            return {"Cookie": f"{inj.name}={credential.secret}"}, {}
        return {}, {inj.name: credential.secret}

    async def _request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        **kw: Any,
    ) -> tuple[int, CIMultiDictProxy[str], bytes, aiohttp.ClientResponse]:
        try:
            async with self.http.request(method, self.base + path, headers=headers, params=params,
                                         timeout=self.timeout, allow_redirects=False, **kw) as resp:
                if resp.status >= 500:
                    raise UpstreamUnavailable(f"{self.label} answered HTTP {resp.status} on {path}")
                body = await read_limited(resp, MAX_LOGIN_ANSWER)
                return resp.status, resp.headers, body, resp
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"{self.label} at {self.base} is unreachable ({type(exc).__name__})"
            ) from None

    async def _authed(
        self, call: CallSpec, credential: Credential
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        headers, params = self._auth_parts(credential)
        headers.setdefault("Accept", "application/json, text/plain, */*")
        headers["Accept-Encoding"] = "identity"
        status, rheaders, body, _ = await self._request(
            call.method, call.path, headers=headers, params=params
        )
        return status, rheaders, body

    def _login_request(self, username: str, password: str, totp: str | None,
                       client_ip: str) -> tuple[dict[str, str], dict[str, Any]]:
        spec = self.spec.login
        headers = {"Accept": "application/json, text/plain, */*", "Accept-Encoding": "identity"}
        if client_ip:
            headers["X-Forwarded-For"] = client_ip
            headers["X-Real-IP"] = client_ip
        payload: dict[str, Any] = dict(spec.fields)
        if spec.encoding == "basic":
            headers["Authorization"] = basic_value(username, password)
        else:
            if spec.username_field:
                payload[spec.username_field] = username
            payload[spec.password_field] = password
        if totp and spec.totp_field:
            payload[spec.totp_field] = int(totp) if spec.totp_number else totp
        if spec.encoding == "form":
            return headers, {"data": {k: str(v) for k, v in payload.items()}}
        if payload:
            return headers, {"json": payload}
        return headers, {}

    async def login(self, username: str, password: str, totp: str | None, client_ip: str) -> LoginResult:
        spec = self.spec.login
        headers, body_kw = self._login_request(username, password, totp, client_ip)
        status, rheaders, body, resp = await self._request(spec.method, spec.path, headers=headers, **body_kw)
        text = body.decode("utf-8", "replace")
        if status in spec.blocked_status:
            return LoginResult(
                "blocked",
                message=f"{self.label} refuses sign-ins for now (too many attempts); try again later.",
                retry_after=_retry_after(rheaders),
            )
        if spec.totp_required_text and spec.totp_required_text in text and \
                (spec.totp_required_status in (0, status)):
            if totp:
                return LoginResult("invalid", message="Invalid password or code.")
            return LoginResult("totp_required", message="Enter the code from your authenticator app.")
        accepted = status in spec.ok_status if spec.ok_status else 200 <= status < 300
        if not accepted or (spec.success_text and spec.success_text not in text):
            return LoginResult("invalid", message="Invalid password or code." if totp
                               else "Invalid username or password.")
        secret = self._credential_from(username, password, rheaders, body, resp)
        if not secret:
            raise UpstreamProtocolError(f"{self.label} accepted the login but the credential was not where "
                                        f"options.credential says ({self.spec.credential.from_})")
        credential = Credential(secret=secret, kind=self.spec.credential.from_, extra={"user": username},
                                upstream_ttl=self._ttl(body))
        return LoginResult("ok", credential=credential,
                           identity=Identity(username=self.spec.username or username))

    def _credential_from(self, username: str, password: str, headers: CIMultiDictProxy[str], body: bytes,
                         resp: aiohttp.ClientResponse) -> str | None:
        cs = self.spec.credential
        if cs.from_ == "cookie":
            morsel = resp.cookies.get(cs.name)
            return morsel.value if morsel is not None and morsel.value else None
        if cs.from_ == "header":
            return headers.get(cs.name) or None
        if cs.from_ == "basic":
            return basic_value(username, password)
        try:
            value = pointer_get(json.loads(body), cs.pointer)
        except ValueError:
            return None
        return (
            str(value)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and value != ""
            else None
        )

    def _ttl(self, body: bytes) -> float | None:
        cs = self.spec.credential
        if cs.ttl_pointer:
            try:
                value = pointer_get(json.loads(body), cs.ttl_pointer)
            except ValueError:
                value = None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return float(value)
        return cs.ttl or None

    async def logout(self, credential: Credential) -> None:
        if self.spec.logout.path and credential.kind != "basic":
            await self._authed(self.spec.logout, credential)

    async def keepalive(self, credential: Credential) -> bool:
        call = self.spec.keepalive
        if not call.path:
            return True
        status, headers, body = await self._authed(call, credential)
        if self._expired(call.path, status, headers, body):
            return False
        if status >= 400:
            raise UpstreamProtocolError(f"{self.label} answered {status} to the keepalive {call.path}")
        credential.touched_at = time.time()
        return True

    # ---- the UI's own login / logout (upstreams/ui.py; web/uicalls.py answers them) -------------
    #
    # The login API never sees a signed-in person's request: it would skip authproxy's throttle and
    # audit, test passwords of other accounts, and the upstream's failure count (per address:
    # authproxy's) would lock everyone out. Without a session the proxy forwards it.

    def ui_call(self, method: str, upstream_path: str) -> UiCall | None:
        login, logout = self.spec.login, self.spec.logout
        path = canonical_path(upstream_path)
        if logout.intercept and method == logout.method and path == logout.path:
            return "sign_out"
        if method == login.method and path == login.path:
            return "signed_in"
        return None

    def ui_words(self, call: UiCall, outcome: Outcome, message: str) -> UiAnswer | None:
        """`login.ui_answer` while signed in; otherwise authproxy's own answers."""
        login = self.spec.login
        if call == "signed_in" and outcome == "ok" and login.ui_answer:
            return UiAnswer.text(login.ui_answer, content_type=login.ui_answer_type,
                                 headers={"Cache-Control": "no-store"})
        return None

    # ---- forwarding ------------------------------------------------------------------------------

    def prepare_request(self, req: UpstreamRequest, credential: Credential | None) -> None:
        for name in self._strip_headers:
            req.headers.popall(name, None)
        cookies.strip_request_cookies(req.headers, self._strip_cookies)
        if self._strip_params:
            req.raw_query = query_without(req.raw_query, self._strip_params)
        if self._must_read(req.raw_path) or self.spec.inject.as_ == "query":
            # Answers authproxy reads, or scrubs of a query credential: a compressed one it could not.
            req.headers["Accept-Encoding"] = "identity"
        if credential is None:
            return
        inj = self.spec.inject
        if inj.as_ == "header":
            req.headers[inj.name] = inj.template.replace("{credential}", credential.secret)
        elif inj.as_ == "cookie":
            cookies.add_request_cookie(req.headers, inj.name, credential.secret)
        else:
            req.raw_query = query_with(req.raw_query, inj.name, credential.secret)

    def credential_fields(self) -> FieldNames:
        """`hide.params` and a query-injected name: cut from the query (above) and from form bodies."""
        return self._strip_params

    def _must_read(self, path: str) -> bool:
        s = self.spec
        return bool((s.hide.json and _under(path, s.hide.json_paths))
                    or (s.expiry.json_pointer and (not s.expiry.paths or _under(path, s.expiry.paths))))

    def forward_auth_headers(self, credential: Credential) -> dict[str, str]:
        headers, params = self._auth_parts(credential)
        if params:
            return {"X-Authproxy-Token": credential.secret}
        return headers

    def wants_body(self, req: UpstreamRequest, status: int, headers: CIMultiDictProxy[str]) -> bool:
        if not _small(headers):
            return False
        s = self.spec.expiry
        on_paths = not s.paths or _under(req.raw_path, s.paths)
        if status in s.status:
            # Outside `paths` this status means something else: read nothing, judge nothing.
            return on_paths
        if self._redirected_to_login(status, headers):
            return True
        if not _is_json(headers) or headers.get("Content-Encoding", "identity").lower() != "identity":
            return False
        return bool((s.json_pointer and on_paths)
                    or (self.spec.hide.json and _under(req.raw_path, self.spec.hide.json_paths)))

    def _redirected_to_login(self, status: int, headers: CIMultiDictProxy[str]) -> bool:
        targets = self.spec.expiry.redirect_to
        return bool(targets) and 300 <= status < 400 and _location_path(headers, self.base_path) in targets

    def _expired(self, path: str, status: int, headers: CIMultiDictProxy[str], body: bytes | None) -> bool:
        """`is_expired` for a call authproxy made itself (the path is known here)."""
        s = self.spec.expiry
        if status in s.status:
            return not s.paths or _under(path, s.paths)
        return self.is_expired(status, headers, body)

    def is_expired(self, status: int, headers: CIMultiDictProxy[str], body: bytes | None) -> bool:
        s = self.spec.expiry
        if status in s.status:
            return True
        if self._redirected_to_login(status, headers):
            return True
        if s.json_pointer and body:
            try:
                doc = json.loads(body)
            except ValueError:
                return False
            return bool(pointer_get(doc, s.json_pointer, MISSING) == s.json_value)
        return False

    def rewrite_body(self, req: UpstreamRequest, body: bytes, loaded: LoadedSession | None) -> bytes:
        """Blank the hidden JSON fields (e.g. a session id a status call echoes back); a credential that
        rides in the query is cut out wherever the answer echoes it (see answer_secret)."""
        body = self._rewrite_fields(req, body, loaded)
        if self.spec.inject.as_ == "query" and loaded is not None:
            credential = loaded.session.credentials.get(self.site.name)
            if credential is not None and credential.secret:
                scrub = scrubber(credential.secret, "")
                body = scrub.feed(body) + scrub.flush()
        return body

    def _rewrite_fields(self, req: UpstreamRequest, body: bytes, loaded: LoadedSession | None) -> bytes:
        hide = self.spec.hide
        if not hide.json or not _under(req.raw_path, hide.json_paths) or not body:
            return body
        try:
            doc = json.loads(body)
        except ValueError:
            # Not JSON after all (or cut short): at least never echo this session's own credential.
            credential = loaded.session.credentials.get(self.site.name) if loaded is not None else None
            if credential is not None and credential.secret:
                return body.replace(credential.secret.encode(), b"")
            return body
        changed = False
        for pointer in hide.json:
            changed = pointer_blank(doc, pointer) or changed
        return json.dumps(doc, separators=(",", ":")).encode() if changed else body

    def answer_secret(self, req: UpstreamRequest, headers: CIMultiDictProxy[str],
                      loaded: LoadedSession | None) -> tuple[str, str] | None:
        """The session's own credential, cut out of an answer as it streams by: on a `hide.json` path
        when the answer is too large to read whole (the fields themselves need the whole document), and
        on every path when the credential rides in the query (`inject.as = "query"`), which an
        upstream may reflect into any page (a link, a form action)."""
        hide = self.spec.hide
        scope = self.spec.inject.as_ == "query" or (bool(hide.json) and _under(req.raw_path, hide.json_paths))
        if not scope or loaded is None or headers.get("Content-Encoding", "identity").lower() != "identity":
            return None
        credential = loaded.session.credentials.get(self.site.name)
        if credential is None or not credential.secret:
            return None
        return credential.secret, "0" * len(credential.secret)   # same length: Content-Length holds

    def filter_response_headers(self, headers: CIMultiDict[str]) -> None:
        cookies.drop_set_cookies(headers, self._drop_set_cookies)
        for name in self._drop_headers:
            headers.popall(name, None)


def basic_value(username: str, password: str) -> str:
    """`Authorization: Basic` value (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


__all__ = ["GenericAdapter", "GenericSpec", "basic_value", "canonical_path", "parse_spec", "read_limited"]
