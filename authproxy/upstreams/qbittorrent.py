"""qBittorrent WebUI API v2: `POST /api/v2/auth/login` (form) -> `Ok.` + cookie `SID`.

As qBittorrent's WebUI code does it, and as qbittorrent-nox 4.5.2 answers in tests/e2e:
* login answers 200 `Ok.` + `SID` (5.2+: 200 with no body, cookie `QBT_SID_<port>`), 200 `Fails.`
  (5.2+: 401) for wrong credentials, 403 while the client address is banned;
* **5 failed logins ban the address for an hour**, and qBittorrent sees authproxy's address: so
  authproxy never spends the last attempt (`max_failures`, default 5, `ban_duration`, default 3600 s);
* the cookie is injected; the browser's own `SID`/`QBT_SID_*` and `Authorization` are removed, and
  the upstream's `Set-Cookie` for them never reaches the browser;
* the Host check wants the upstream's own host:port (the proxy sends it) and the CSRF check compares
  Origin/Referer with Host or X-Forwarded-Host: authproxy applies that same rule against the public
  host itself (to POSTs: 4.5.2's actions are POST-only, so links from other sites keep working), then
  removes Origin/Referer/Sec-Fetch-Site, so the outcome does not depend on the upstream request's host;
* expiry: 403 `Forbidden` on the API, or the login page served in place of the UI at `/`; sliding
  timeout 3600 s, kept alive with `GET /api/v2/app/version`;
* the UI's own login call is answered `Ok.` while the person is signed in (its login page then reloads
  into the UI), and its logout call ends the authproxy session (and so the upstream one).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.config.schema import SiteConfig
from authproxy.errors import UpstreamProtocolError, UpstreamUnavailable
from authproxy.log import log
from authproxy.sessions.memory import MemoryStore
from authproxy.sessions.model import Credential, Identity
from authproxy.sessions.store import SessionStore
from authproxy.upstreams import cookies
from authproxy.upstreams.base import LoginResult, UpstreamAdapter, UpstreamRequest
from authproxy.upstreams.generic import canonical_path, read_limited
from authproxy.upstreams.ui import Outcome, UiAnswer, UiCall

COOKIE = "SID"
COOKIE_PREFIXES = ("QBT_SID_",)              # qBittorrent 5.2+: QBT_SID_<port>
SESSION_TIMEOUT = 3600.0                     # WebUI\SessionTimeout default, sliding
LOGIN = "/api/v2/auth/login"
LOGOUT = "/api/v2/auth/logout"
PROBE = "/api/v2/app/version"
LOGIN_PAGE_MARK = b'id="loginform"'
MAX_ANSWER = 1 << 16
UI_PAGES = ("/", "/index.html")
OPTIONS = {"max_failures": "integer 0-100 (0 = the upstream never bans)",
           "ban_duration": "seconds (qBittorrent's WebUI\\BanDuration)"}


@dataclass(frozen=True, slots=True)
class Refusal:
    seconds: int
    busy: bool   # True: other sign-ins in flight hold the last safe attempts; False: a block/ban


class FailureBudget:
    """Consecutive failed upstream logins since the last success, as qBittorrent counts them.

    qBittorrent bans after `max_failures` and only a success clears the count, so authproxy stops
    asking at `max_failures - 1` for `ban_duration`; a ban it meets anyway is waited out the same way.
    An attempt reserves its place before qBittorrent is asked (`begin`), and attempts still in flight
    count as failures they may yet be: five parallel wrong passwords would otherwise all pass a check
    made before any had failed, and the ban (all of qBittorrent's WebUI, for everyone behind authproxy)
    would follow. Every `begin` that returns None is settled by exactly one of failed/succeeded/
    banned/abandon.
    qBittorrent counts per client address and sees authproxy's, so the counts are shared by every
    authproxy process and replica: they live in the session store once `bind_store` is called (the
    app does so at start-up); before that (adapters built alone, in tests) in a private memory store.
    """

    COUNT_TTL = 30 * 86400.0   # qBittorrent's count never expires by itself; keep ours a month
    INFLIGHT_TTL = 120.0       # beyond any login call: a crashed process's reservations lapse
    BUSY_RETRY = 2

    def __init__(self, max_failures: int, ban_duration: float, clock: Any = time.monotonic, *,
                 site: str = "") -> None:
        self.max_failures = max_failures
        self.ban_duration = ban_duration
        self.store: SessionStore = MemoryStore(clock=clock)
        self._count_key = f"qbt:{site}:failures"
        self._block_key = f"qbt:{site}:blocked"
        self._inflight_key = f"qbt:{site}:inflight"

    def bind_store(self, store: SessionStore) -> None:
        self.store = store

    async def wait(self) -> int | None:
        """Seconds before qBittorrent may be asked again, or None."""
        left = await self.store.ttl(self._block_key)
        return max(1, int(left + 0.999)) if left else None

    async def count(self) -> int:
        raw = await self.store.get(self._count_key)
        return int(raw) if raw is not None else 0

    async def begin(self) -> Refusal | None:
        """Reserve an attempt (None: ask qBittorrent, then settle it), or say why not."""
        wait = await self.wait()
        if wait is not None:
            return Refusal(wait, busy=False)
        if self.max_failures <= 0:
            return None
        in_flight = await self.store.incr(self._inflight_key, self.INFLIGHT_TTL)
        count = await self.count()
        # qBittorrent's count never decays: once authproxy's pause (at max_failures - 1) has run out,
        # the next failure is the ban either way, so one attempt at a time may try.
        limit = max(1, self.max_failures - 1) if count < self.max_failures - 1 else count + 1
        if count + in_flight > limit:
            await self.abandon()
            return Refusal(self.BUSY_RETRY, busy=True)
        return None

    async def abandon(self) -> None:
        """The attempt never reached a verdict (qBittorrent unreachable): give its place back."""
        if self.max_failures > 0:
            await self.store.incr(self._inflight_key, self.INFLIGHT_TTL, -1)

    async def failed(self) -> None:
        if self.max_failures <= 0:
            return
        count = await self.store.incr(self._count_key, self.COUNT_TTL)   # counted before the place is freed
        await self.abandon()
        if count >= self.max_failures:
            # That was qBittorrent's last: it bans now, and forgets the count when the ban ends.
            await self.store.delete(self._count_key)
            await self._block()
        elif count >= self.max_failures - 1:
            await self._block()

    async def banned(self) -> None:
        """qBittorrent refused with 403: the ban clears its count when it ends."""
        await self.store.delete(self._count_key)
        await self.abandon()
        await self._block()

    async def succeeded(self) -> None:
        await self.store.delete(self._count_key, self._block_key)
        await self.abandon()

    async def _block(self) -> None:
        await self.store.set(self._block_key, b"1", self.ban_duration)


def _plain(body: bytes, encoding: str) -> bytes | None:
    """The body without its gzip/deflate layer (bounded); None when it cannot be read."""
    encoding = encoding.lower().strip()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        return None
    try:
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
        return inflater.decompress(body, 4 * MAX_ANSWER)
    except zlib.error:
        return None


class QBittorrentAdapter(UpstreamAdapter):
    name: ClassVar[str] = "qbittorrent"

    def __init__(self, site: SiteConfig, http: aiohttp.ClientSession) -> None:
        self.site = site
        self.http = http
        self.base = site.upstream_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=site.timeout, connect=site.connect_timeout)
        self.budget = FailureBudget(int(site.options.get("max_failures", 5)),
                                    float(site.options.get("ban_duration", 3600)), site=site.name)

    def bind_store(self, store: SessionStore) -> None:
        """Share the failed-login count with every process and replica (see FailureBudget)."""
        self.budget.bind_store(store)

    @staticmethod
    def check_options(options: dict[str, Any]) -> list[str]:
        problems = [f"unknown qbittorrent option {k!r}; known: {', '.join(OPTIONS)}" for k in options
                    if k not in OPTIONS]
        maxf = options.get("max_failures", 5)
        if not isinstance(maxf, int) or isinstance(maxf, bool) or not 0 <= maxf <= 100:
            problems.append(f"options.max_failures: must be qBittorrent's WebUI\\MaxAuthenticationFailCount "
                            f"(an integer 0-100, default 5), but it is {maxf!r}")
        ban = options.get("ban_duration", 3600)
        if not isinstance(ban, (int, float)) or isinstance(ban, bool) or ban < 0:
            problems.append(f"options.ban_duration: must be qBittorrent's WebUI\\BanDuration in seconds "
                            f"(default 3600), but it is {ban!r}")
        return problems

    # ---- upstream calls --------------------------------------------------------------------------

    async def _call(
        self,
        path: str,
        *,
        credential: Credential | None = None,
        data: dict[str, str] | None = None,
        client_ip: str = "",
    ) -> tuple[int, bytes, aiohttp.ClientResponse]:
        headers = {"Accept-Encoding": "identity"}
        if credential is not None:
            headers["Cookie"] = f"{credential.extra.get('cookie', COOKIE)}={credential.secret}"
        if client_ip:
            headers["X-Forwarded-For"] = client_ip  # used when its reverse-proxy support trusts authproxy
        try:
            async with self.http.post(self.base + path, data=data, headers=headers, timeout=self.timeout,
                                      allow_redirects=False) as resp:
                if resp.status >= 500:
                    raise UpstreamUnavailable(f"qbittorrent answered HTTP {resp.status}")
                return resp.status, await read_limited(resp, MAX_ANSWER), resp
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"qbittorrent at {self.base} is unreachable ({type(exc).__name__})"
            ) from None

    async def login(self, username: str, password: str, totp: str | None, client_ip: str) -> LoginResult:
        refusal = await self.budget.begin()
        if refusal is not None and refusal.busy:
            return LoginResult(
                "blocked",
                retry_after=refusal.seconds,
                message="Several sign-ins to qBittorrent "
                "are under way and one more failure would get authproxy banned; try again "
                "in a moment.",
            )
        if refusal is not None:
            return LoginResult(
                "blocked",
                retry_after=refusal.seconds,
                message="Too many failed sign-ins to "
                "qBittorrent; authproxy pauses before qBittorrent would ban it. Try again later.",
            )
        try:
            status, body, resp = await self._call(LOGIN, data={"username": username, "password": password},
                                                  client_ip=client_ip)
        except BaseException:
            await self.budget.abandon()
            raise
        if status == 403:
            await self.budget.banned()
            log.warning(
                "qbittorrent has banned authproxy's address", extra={"fields": {"site": self.site.name}}
            )
            return LoginResult(
                "blocked",
                retry_after=await self.budget.wait(),
                message="qBittorrent refuses sign-ins from this address for now; try again later.",
            )
        morsel = resp.cookies.get(COOKIE)
        name = COOKIE
        if morsel is None:
            found = [(k, m) for k, m in resp.cookies.items() if k.startswith(COOKIE_PREFIXES)]
            if found:
                name, morsel = found[0]
        # 4.5.2: 200 "Fails."; 5.2+: 401.
        if status != 200 or body.strip() == b"Fails." or morsel is None or not morsel.value:
            await self.budget.failed()
            return LoginResult("invalid", message="Invalid username or password.")
        await self.budget.succeeded()
        credential = Credential(secret=morsel.value, kind="cookie", extra={"cookie": name, "user": username},
                                upstream_ttl=SESSION_TIMEOUT)
        return LoginResult("ok", credential=credential, identity=Identity(username=username))

    async def logout(self, credential: Credential) -> None:
        await self._call(LOGOUT, credential=credential)

    async def keepalive(self, credential: Credential) -> bool:
        status, _, _ = await self._call(PROBE, credential=credential)
        if status == 403:
            return False
        if status != 200:
            raise UpstreamProtocolError(f"qbittorrent answered {status} to {PROBE}")
        credential.touched_at = time.time()
        return True

    # ---- the UI's own calls (upstreams/ui.py; web/uicalls.py answers them) ------------------------

    # qBittorrent's own CSRF rule, applied by authproxy because Origin/Referer do not go upstream. Its
    # actions are POST-only (4.5.2 answers GET with 405), so links from other sites still work.
    ui_foreign_writes: ClassVar[UiAnswer | None] = UiAnswer.json(
        {"error": "cross_site", "message": "Cross-site request refused."}, status=401,
        headers={"Cache-Control": "no-store"})
    ui_signed_out_status: ClassVar[int] = 200   # the UI's logout call expects 200 and no body

    def ui_call(self, method: str, upstream_path: str) -> UiCall | None:
        if method != "POST":
            return None
        path = canonical_path(upstream_path)
        if path == LOGIN:
            return "signed_in"
        if path == LOGOUT:
            return "sign_out"
        return None

    def ui_words(self, call: UiCall, outcome: Outcome, message: str) -> UiAnswer | None:
        """The UI's login call answers `Ok.` while signed in (its login page then reloads into the UI)."""
        if call == "signed_in" and outcome == "ok":
            return UiAnswer.text("Ok.", headers={"Cache-Control": "no-store"})
        return None

    async def ui_alive(self, credential: Credential) -> bool:
        """The login page showed because the SID died? Then it is dropped, so the reload that follows
        lands on authproxy's sign-in page instead of this page again."""
        return await self._alive(credential)

    async def _alive(self, credential: Credential) -> bool:
        try:
            return await self.keepalive(credential)
        except (UpstreamUnavailable, UpstreamProtocolError):
            return True

    # ---- forwarding ------------------------------------------------------------------------------

    def prepare_request(self, req: UpstreamRequest, credential: Credential | None) -> None:
        cookies.strip_request_cookies(req.headers, (COOKIE,), COOKIE_PREFIXES)
        for name in ("Authorization", "Origin", "Referer", "Sec-Fetch-Site"):
            req.headers.popall(name, None)
        if req.method in ("GET", "HEAD") and req.raw_path in UI_PAGES:
            req.headers["Accept-Encoding"] = "identity"  # read to spot the login page in its place
        if credential is not None:
            cookies.add_request_cookie(
                req.headers, str(credential.extra.get("cookie", COOKIE)), credential.secret
            )

    def forward_auth_headers(self, credential: Credential) -> dict[str, str]:
        return {"Cookie": f"{credential.extra.get('cookie', COOKIE)}={credential.secret}"}

    def wants_body(self, req: UpstreamRequest, status: int, headers: CIMultiDictProxy[str]) -> bool:
        if status == 403:
            return req.raw_path.startswith("/api/")
        return (status == 200 and req.method == "GET" and req.raw_path in UI_PAGES
                and headers.get("Content-Type", "").startswith("text/html"))

    def is_expired(self, status: int, headers: CIMultiDictProxy[str], body: bytes | None) -> bool:
        if status == 403:
            return (body or b"").strip() == b"Forbidden"  # other 403s carry a reason ("Cannot ...")
        if status == 200 and body:
            plain = _plain(body, headers.get("Content-Encoding", ""))
            return plain is not None and LOGIN_PAGE_MARK in plain
        return False

    def filter_response_headers(self, headers: CIMultiDict[str]) -> None:
        cookies.drop_set_cookies(headers, (COOKIE,), COOKIE_PREFIXES)
