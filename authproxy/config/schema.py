"""The validated configuration: frozen dataclasses with defaults.

Built once at start-up by `config.loader.load_config` from the environment (and an optional TOML
file); nothing reads the environment after that. Every default is written here, once: the loader
falls back to these dataclasses' defaults (and to the DEFAULT_* constants) for whatever is not set.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from authproxy.crypto import Secret

AuthMode = Literal["none", "session", "hybrid", "otp"]
AUTH_MODES: tuple[str, ...] = ("none", "session", "hybrid", "otp")
SESSION_MODES: frozenset[str] = frozenset({"session", "hybrid", "otp"})
DEFAULT_AUTH_MODE: AuthMode = "session"
# Names other tools' .env files use for the same modes (AUTH_MODE is read case-insensitively).
AUTH_MODE_ALIASES: dict[str, AuthMode] = {"apikey": "none", "truenas": "session"}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Loopback only: with private ranges trusted by default, any machine on the LAN could write its own
# X-Forwarded-For (dodging the per-address throttle, forging audit addresses) or, as a "proxy", ask
# /verify for a credential. A proxy elsewhere (a container network) is named in TRUSTED_PROXIES.
DEFAULT_TRUSTED_PROXIES: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
# The key prefix of a shared Redis (also RedisStore's own default, for a store built without a config).
DEFAULT_REDIS_PREFIX = "authproxy:"

# Methods an upstream answers by echoing the request (TRACE; IIS's TRACK; ASP.NET's DEBUG), which would
# hand the injected credential to the client: refused with 405 unless a site lists them in allow_methods.
ECHO_METHODS: frozenset[str] = frozenset({"TRACE", "TRACK", "DEBUG"})

# The request header that carries FORWARD_AUTH_SECRET from the front proxy to /verify.
FORWARD_AUTH_SECRET_HEADER = "X-Authproxy-Secret"


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """An authproxy API key with the `service` role (SERVICE_API_KEYS): its name, and the SHA-256 of
    the key (the key itself is shown once, when made, and never configured or stored)."""

    name: str
    digest: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """One protected upstream: where it is, how to talk to it, which public hosts map to it."""

    name: str
    upstream_url: str
    type: str
    hosts: tuple[str, ...] = ()          # public host names (lower case, no port); () = any host
    path_prefix: str = "/"               # public path prefix the UI is served under
    service_token: Secret | None = None  # shared credential for AUTH_MODE=none / background work
    # TECHNITIUM_CLUSTER_TOKEN (deprecated): a shared admin token, accepted only as the source of a
    # migration to a least-privileged background token (session/hybrid); never sent on a request.
    cluster_token: Secret | None = None
    options: dict[str, Any] = field(default_factory=dict)  # adapter-specific, validated by the adapter
    allowed_users: tuple[str, ...] = ()  # () = anyone the upstream accepts; else only these (lower case)
    allowed_groups: tuple[str, ...] = () # () = no group rule; else one of these groups is required
    allow_methods: tuple[str, ...] = ()  # ECHO_METHODS this site still receives (upper case)
    timeout: float = 30.0                # seconds until the answer's headers (authproxy's own calls: whole)
    connect_timeout: float = 5.0
    idle_timeout: float = 300.0  # seconds of silence allowed between body chunks of a forwarded answer
    auth: str = ""                       # "otp": one-time codes sign in here ("": as AUTH_MODE says)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    idle_timeout: float = 15 * 60
    max_age: float = 24 * 3600
    secrets: tuple[Secret, ...] = ()     # newest first; empty -> generated into the data dir
    cookie_name: str = ""                # "" -> "__Host-authproxy" (or "authproxy" with a domain)
    cookie_domain: str = ""              # e.g. ".example.com" to share one sign-in across hosts
    cache_ttl: float = 2.0               # hot in-process cache of verified sessions; 0 = off
    redis_url: Secret | None = None      # None -> embedded SQLite store in the data dir
    redis_prefix: str = DEFAULT_REDIS_PREFIX


@dataclass(frozen=True, slots=True)
class ThrottleConfig:
    max_failures: int = 5
    window: float = 15 * 60


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    prefix: str = "/_authproxy"          # reserved path prefix for authproxy's own endpoints
    data_dir: Path = Path("./data")
    https_enabled: bool = False
    https_cert_file: Path | None = None
    https_key_file: Path | None = None
    trust_proxy: bool = False
    trusted_proxies: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in DEFAULT_TRUSTED_PROXIES)
    allowed_redirect_domains: tuple[str, ...] = ()
    access_log: bool = True
    metrics: bool = True   # METRICS: /_authproxy/metrics and its hooks (README "Metrics")
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    audit_log_file: Path | None = None   # None -> the "authproxy.audit" logger on stderr
    max_header_size: int = 8190
    workers: int = 1
    # After SIGTERM/SIGINT: how long in-flight requests and WebSocket close handshakes get before the
    # process exits. Below the 10 s that `docker stop`/`podman stop` wait before SIGKILL.
    shutdown_timeout: float = 8.0
    # Forward auth (/verify*): its 200 answer carries the upstream credential, so it is served only on a
    # listener of its own (port set) and/or to a caller that sends the shared secret; with neither it
    # is not served at all (a TLS proxy in front of the public listener forwards every path).
    forward_auth_host: str = "127.0.0.1"
    forward_auth_port: int | None = None      # None: no separate listener
    forward_auth_secret: Secret | None = None  # the X-Authproxy-Secret header the proxy must send

    @property
    def forward_auth_listener(self) -> bool:
        return self.forward_auth_port is not None

    @property
    def forward_auth_enabled(self) -> bool:
        return self.forward_auth_port is not None or self.forward_auth_secret is not None

    @property
    def drain_timeout(self) -> float:
        """aiohttp's `shutdown_timeout` for SHUTDOWN_TIMEOUT: aiohttp waits that long for the requests in
        flight, then cancels their body reads and waits that long again before cancelling the handlers;
        half each keeps the whole stop within SHUTDOWN_TIMEOUT (a request not reading its body gets all
        of it)."""
        return self.shutdown_timeout / 2

    def forward_auth_address(self, port: int | None = None) -> str:
        """`host:port` of the forward-auth listener as a URL writes it (IPv6 in brackets)."""
        host = self.forward_auth_host
        return f"{f'[{host}]' if ':' in host else host}:{self.forward_auth_port if port is None else port}"

    # Strict-Transport-Security on HTTPS answers: one year (what browsers' preload lists and most
    # guides ask for; a self-signed certificate or an IP-address host is never pinned by a browser,
    # so the quick start is not locked in); 0 = authproxy sends none.
    hsts_max_age: int = 31_536_000
    hsts_include_subdomains: bool = False
    # AUTH_MODE=hybrid: automation clients that authenticate to authproxy as a service (their requests
    # use the site's service credential), and how often the background token's privileges are re-read.
    service_api_keys: tuple[ServiceKey, ...] = ()
    background_check_interval: float = 300.0


@dataclass(frozen=True, slots=True)
class JwtKey:
    """One JWT key: `kid` names it in a token's header, `alg` is pinned to it (no other algorithm is
    accepted with this key). HS256: `secret`; RS256/EdDSA: `private_pem` (signing) and/or `public_pem`."""

    kid: str
    alg: Literal["HS256", "RS256", "EdDSA"]
    secret: Secret | None = field(default=None, repr=False)
    private_pem: Secret | None = field(default=None, repr=False)
    public_pem: bytes = b""


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """JWT bearer tokens (login/tokens.py). `keys`: the first signs, every one verifies (rotation);
    () = no tokens (AUTH_MODE=otp requires them)."""

    keys: tuple[JwtKey, ...] = ()
    expiration: float = 24 * 3600          # JWT_EXPIRATION_HOURS
    max_expiration: float = 90 * 86400     # JWT_MAX_EXPIRATION_HOURS: the longest a person may mint
    issuer: str = "authproxy"
    audience: str = "authproxy"

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


@dataclass(frozen=True, slots=True)
class OtpConfig:
    """One-time codes by webhook (AUTH_MODE=otp, login/otp.py)."""

    expiration: float = 5 * 60             # OTP_EXPIRATION_MINUTES
    discord_webhook_url: Secret | None = field(default=None, repr=False)
    webhook_url: Secret | None = field(default=None, repr=False)   # OTP_WEBHOOK_URL (generic)
    webhook_template: str = ""             # OTP_WEBHOOK_TEMPLATE; "" -> {"text": "{{message}}"}
    webhook_timeout: float = 10.0
    users: tuple[str, ...] = ("admin",)    # OTP_USERS: who may ask for a code (lower case)
    max_attempts: int = 5                  # OTP_MAX_ATTEMPTS: wrong guesses one code survives
    max_requests: int = 5                  # OTP_MAX_REQUESTS: codes per user and per address a window
    legacy_paths: bool = False             # OTP_LEGACY_PATHS: /api/v1/auth/login and /verify
    notify: bool = True                    # OTP_NOTIFY: system notices over the same webhook

    @property
    def webhook_configured(self) -> bool:
        return self.discord_webhook_url is not None or self.webhook_url is not None


@dataclass(frozen=True, slots=True)
class Config:
    auth_mode: AuthMode
    server: ServerConfig
    session: SessionConfig
    throttle: ThrottleConfig
    sites: tuple[SiteConfig, ...]
    otp: OtpConfig = field(default_factory=OtpConfig)
    jwt: JwtConfig = field(default_factory=JwtConfig)

    @property
    def session_mode(self) -> bool:
        return self.auth_mode in SESSION_MODES

    def otp_site(self, site: SiteConfig) -> bool:
        """Whether one-time codes sign people in at `site` (AUTH_MODE=otp, or `auth = "otp"` there)."""
        return self.auth_mode == "otp" or site.auth == "otp"

    @property
    def otp_codes(self) -> bool:
        return any(self.otp_site(site) for site in self.sites)
