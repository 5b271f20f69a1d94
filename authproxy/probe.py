"""`authproxy probe URL`: recognise the product at an upstream's address and print a configuration.

Only harmless calls, without credentials, and as few as possible: nothing that signs in, so nothing a
product counts as a failed login, with one exception said where it happens (Transmission counts *every*
request without credentials toward its 100-failure lock-out, so it is recognised from the first answer,
to `/`, and asked nothing more; a later sign-in resets its count). Each detector reads the answers the
product gives anyone (README "Operator CLI" lists them); the first that recognises it wins.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> object:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Found:
    """What is there: the adapter's type, the product's name, and the evidence."""

    type: str
    product: str
    evidence: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ask:
    """What a detector may do: a GET, or one JSON-RPC call over a WebSocket (both without credentials)."""

    get: Callable[[str], Awaitable[Answer | None]]
    rpc: Callable[[str, str], Awaitable[dict[str, object] | None]]


Detector = Callable[[Answer | None, Ask], Awaitable[Found | None]]
MAX_BODY = 64 * 1024


TR_AUTH = "Transmission asks for a password (rpc-authentication-required): people sign in with it"
TR_OPEN = ("rpc-authentication-required is off: anyone reaching the upstream directly can use it; turn it "
           "on so authproxy signs people in")


async def transmission(root: Answer | None, ask: Ask) -> Found | None:
    """Transmission's RPC server answers every path: 401 with realm "Transmission" when it asks for a
    password, else a redirect to /transmission/web/ (or 409 with its session id on the RPC path)."""
    if root is None:
        return None
    realm = root.headers.get("www-authenticate", "")
    if root.status == 401 and 'realm="Transmission"' in realm:
        return Found("transmission", "Transmission", 'GET / answered 401 with realm "Transmission"',
                     (TR_AUTH,))
    if root.status in (301, 302, 307) and "/transmission/web" in root.headers.get("location", ""):
        return Found("transmission", "Transmission", "GET / redirects to /transmission/web/",
                     (TR_OPEN,))
    if root.status == 409 and "x-transmission-session-id" in root.headers:
        return Found("transmission", "Transmission", "answered 409 with X-Transmission-Session-Id")
    return None


async def technitium(root: Answer | None, ask: Ask) -> Found | None:
    """Technitium answers every API call without a token with HTTP 200 and status "invalid-token"."""
    answer = await ask.get("/api/user/session/get")
    data = answer.json() if answer is not None else None
    if isinstance(data, dict) and data.get("status") == "invalid-token":
        return Found("technitium", "Technitium DNS Server",
                     'GET /api/user/session/get answered status "invalid-token"',
                     (("Technitium v14 and older take the token only in the query: add "
                      'options = { api_version = "14" } for those (the sign-in reports it otherwise)'),))
    return None


async def pihole(root: Answer | None, ask: Ask) -> Found | None:
    """Pi-hole v6 (FTL) says whether the caller has a session at GET /api/auth, to anyone."""
    answer = await ask.get("/api/auth")
    data = answer.json() if answer is not None else None
    session = data.get("session") if isinstance(data, dict) else None
    if isinstance(session, dict) and "valid" in session and "totp" in session:
        notes = ("Pi-hole has no password set: anyone can use its API; set one (pihole setpassword)",) \
            if session.get("valid") is True else ()
        return Found("pihole", "Pi-hole (v6)", "GET /api/auth answered a Pi-hole session status", notes)
    return None


_QBT_VERSION = re.compile(r"\d+\.\d+(\.\d+)?")


async def qbittorrent(root: Answer | None, ask: Ask) -> Found | None:
    """qBittorrent's WebUI: its API version to anyone allowed, 403 "Forbidden" otherwise; its login
    page names it."""
    answer = await ask.get("/api/v2/app/webapiVersion")
    if answer is None:
        return None
    names_it = root is not None and "qbittorrent" in root.body.lower()
    if answer.status == 403 and answer.body.strip() == "Forbidden" and names_it:
        return Found("qbittorrent", "qBittorrent",
                     'GET /api/v2/app/webapiVersion answered 403 "Forbidden" and / is its login page')
    if answer.status == 200 and _QBT_VERSION.fullmatch(answer.body.strip()) and names_it:
        return Found("qbittorrent", "qBittorrent", f"WebUI API version {answer.body.strip()} to anyone",
                     (("qBittorrent lets this address in without a password (authentication bypass for "
                      "localhost or a subnet): authproxy's address must not be in that list"),))
    return None


async def adguard(root: Answer | None, ask: Ask) -> Found | None:
    """AdGuard Home: /control/status answers 401 (or 403) without a session, and its pages are its own
    (/ is the app titled "AdGuard Home", or a redirect to /login.html)."""
    answer = await ask.get("/control/status")
    if answer is None or root is None:
        return None
    page = root.status == 200 and "adguard home" in root.body.lower()
    to_login = root.status in (302, 303, 307) and root.headers.get("location", "").endswith("/login.html")
    if answer.status in (401, 403) and (page or to_login):
        return Found("adguard", "AdGuard Home",
                     f"GET /control/status answered {answer.status} and / is its UI")
    data = answer.json()
    if answer.status == 200 and isinstance(data, dict) and "dns_addresses" in data and "version" in data:
        return Found("adguard", "AdGuard Home", "GET /control/status answered to anyone",
                     ("AdGuard Home has no users configured: anyone can change it; add one",))
    return None


async def truenas(root: Answer | None, ask: Ask) -> Found | None:
    """TrueNAS's middleware (JSON-RPC 2.0 over the WebSocket at /api/current) answers a call that needs
    a login with its own error, ENOTAUTHENTICATED; asked of a method that is not public, which its
    rate limit for unauthenticated calls does not count."""
    answer = await ask.rpc("/api/current", "system.info")
    error = answer.get("error") if answer is not None else None
    data = error.get("data") if isinstance(error, dict) else None
    if isinstance(data, dict) and data.get("errname") == "ENOTAUTHENTICATED":
        return Found("truenas", "TrueNAS", "the JSON-RPC WebSocket /api/current answered ENOTAUTHENTICATED")
    return None


# Transmission first: it is the one product that counts every request without credentials.
DETECTORS: tuple[tuple[str, Detector], ...] = (
    ("transmission", transmission), ("technitium", technitium), ("pihole", pihole),
    ("qbittorrent", qbittorrent), ("adguard", adguard), ("truenas", truenas),
)


async def recognise(url: str, *, timeout: float = 5.0) -> tuple[Found | None, list[str]]:
    """What is at `url`, and what each call saw (for the report when nothing matched)."""
    base = url.rstrip("/")
    seen: list[str] = []
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout, cookie_jar=aiohttp.DummyCookieJar(),
                                     trust_env=False) as http:

        async def get(path: str) -> Answer | None:
            try:
                async with http.get(base + path, allow_redirects=False, ssl=False) as resp:
                    raw = await resp.content.read(MAX_BODY)
                    answer = Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()},
                                    raw.decode("utf-8", "replace"))
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                seen.append(f"GET {path}: {type(exc).__name__}")
                return None
            seen.append(f"GET {path}: {answer.status}")
            return answer

        async def rpc(path: str, method: str) -> dict[str, object] | None:
            ws_url = "ws" + base.removeprefix("http") + path
            try:
                async with http.ws_connect(ws_url, ssl=False, autoclose=True) as ws:
                    await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": method, "params": []})
                    answer = await ws.receive_json(timeout=timeout)
            except (aiohttp.ClientError, TimeoutError, ValueError, TypeError) as exc:
                seen.append(f"JSON-RPC {method} on {path}: {type(exc).__name__}")
                return None
            seen.append(f"JSON-RPC {method} on {path}: answered")
            return answer if isinstance(answer, dict) else None

        ask = Ask(get, rpc)
        root = await get("/")
        for _, detect in DETECTORS:
            found = await detect(root, ask)
            if found is not None:
                return found, seen
            if root is not None and root.status == 401 and "www-authenticate" in root.headers:
                break   # a server asking for a password on every path: nothing more to learn unasked
    return None, seen


def configuration(url: str, found: Found) -> str:
    """A starting configuration: the one-site environment, and the same as a TOML site."""
    host = urlsplit(url).hostname or "upstream"
    name = found.type
    return "\n".join([
        f"# {found.product} at {url}",
        f"#   recognised: {found.evidence}",
        *(f"#   note: {note}" for note in found.notes),
        "",
        "# One site, in the environment (authproxy run; see README \"Configuration\"):",
        f"UPSTREAM_URL={url}",
        f"UPSTREAM_TYPE={found.type}",
        "",
        "# Or as a site in a TOML file (authproxy run --config authproxy.toml):",
        "[[sites]]",
        f'name = "{name}"',
        f'type = "{found.type}"',
        f'upstream_url = "{url}"',
        f'hosts = ["{name}.example.com"]   # the name people will use; this upstream is {host}',
    ]) + "\n"


async def probe_command(url: str, *, timeout: float) -> int:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        print("authproxy probe: give the upstream's own URL, e.g. http://192.168.1.5:8080", file=sys.stderr)
        return 2
    clean = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path.rstrip('/')}"
    found, seen = await recognise(clean, timeout=timeout)
    if found is None:
        print(f"authproxy probe: nothing authproxy knows answered at {clean} (asked: {'; '.join(seen)}).\n"
              "For another product, describe it to the generic adapter (README \"A new upstream by "
              "configuration alone\").", file=sys.stderr)
        return 1
    sys.stdout.write(configuration(clean, found))
    return 0

