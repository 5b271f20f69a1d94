"""Cross-field rules; every problem names the variable and the fix (Authelia-style)."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

from authproxy.config import passwordless
from authproxy.config.schema import ECHO_METHODS, FORWARD_AUTH_SECRET_HEADER, Config, SiteConfig
from authproxy.redirects import DomainRule
from authproxy.upstreams.registry import ADAPTERS

_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")  # what survives a proxy's header handling unchanged
_GENERATE = "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_HOST = re.compile(r"^\.?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster")
MAX_SHUTDOWN_TIMEOUT = 3600.0  # more is a unit mistake (an hour of draining is no graceful stop)


def _without_userinfo(url: str) -> str:
    """The URL as it may be printed: a password in it is a secret like any other."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    if sep and "@" in authority:
        return f"{scheme}://***@{authority.rsplit('@', 1)[1]}{slash}{tail}"
    return url


def _forward_auth(config: Config) -> list[str]:
    """The forward-auth listener and shared secret (the guards of /verify's credential)."""
    p: list[str] = []
    s = config.server
    if s.forward_auth_enabled and not s.trust_proxy:
        p.append("FORWARD_AUTH_PORT / FORWARD_AUTH_SECRET: forward auth answers only the proxies in "
                 "TRUSTED_PROXIES; set TRUST_PROXY=true (and name the proxy's address in TRUSTED_PROXIES)")
    if s.forward_auth_port and s.forward_auth_port == s.port:
        p.append(
            f"FORWARD_AUTH_PORT: must differ from PORT ({s.port}); the forward-auth listener is a second "
            "one, e.g. FORWARD_AUTH_PORT=9001"
        )
    secret = s.forward_auth_secret
    if secret is not None:
        value = secret.reveal()
        if len(value) < 32:
            p.append(f"FORWARD_AUTH_SECRET: shorter than 32 characters; {_GENERATE}")
        elif _HEADER_TOKEN.fullmatch(value) is None:
            p.append(
                f"FORWARD_AUTH_SECRET: must be printable ASCII without spaces (the proxy sends it in the "
                f"{FORWARD_AUTH_SECRET_HEADER} header); {_GENERATE}"
            )
    return p


def check(config: Config) -> list[str]:
    """Every problem at once: each section's rules (SECTIONS, in order), one list."""
    return [problem for section in SECTIONS for problem in section(config)]


def _https(config: Config) -> list[str]:
    """Session cookies need TLS (served here or by a proxy); a certificate comes as a pair of files."""
    p: list[str] = []
    s = config.server
    if config.session_mode and not (s.https_enabled or s.trust_proxy):
        p.append(
            f"AUTH_MODE={config.auth_mode}: session cookies need HTTPS; set HTTPS_ENABLED=true (authproxy "
            "serves TLS, a self-signed certificate is created if HTTPS_CERT_FILE is unset) or "
            "TRUST_PROXY=true behind a TLS-terminating proxy"
        )
    if (s.https_cert_file is None) != (s.https_key_file is None):
        p.append("HTTPS_CERT_FILE / HTTPS_KEY_FILE: set both or neither")
    for name, path in (("HTTPS_CERT_FILE", s.https_cert_file), ("HTTPS_KEY_FILE", s.https_key_file)):
        if path is not None and not path.is_file():
            p.append(f"{name}: {str(path)!r} does not exist or is not a file")
    if (s.https_cert_file or s.https_key_file) and not s.https_enabled:
        p.append("HTTPS_CERT_FILE: given but HTTPS_ENABLED is not true; set HTTPS_ENABLED=true to serve TLS")
    return p


def _server(config: Config) -> list[str]:
    p: list[str] = []
    s = config.server
    if s.trust_proxy and not s.trusted_proxies:
        p.append("TRUSTED_PROXIES: TRUST_PROXY=true needs at least one trusted proxy network")
    if not s.prefix.startswith("/") or s.prefix == "" or "?" in s.prefix or "#" in s.prefix:
        p.append(f"AUTHPROXY_PREFIX: must be an absolute path like /_authproxy, but it is {s.prefix!r}")
    p.extend(_forward_auth(config))
    if s.log_format not in ("json", "text"):
        p.append(f"LOG_FORMAT: must be json or text, but it is {s.log_format!r}")
    if s.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        p.append(f"LOG_LEVEL: must be DEBUG, INFO, WARNING or ERROR, but it is {s.log_level!r}")
    if not 0 < s.shutdown_timeout <= MAX_SHUTDOWN_TIMEOUT:
        p.append(f"SHUTDOWN_TIMEOUT: must be more than 0 and at most {MAX_SHUTDOWN_TIMEOUT:.0f}s (e.g. 8s), "
                 f"but it is {s.shutdown_timeout:g}s; keep it below the stop timeout of what stops authproxy "
                 "(docker/podman stop: 10s, Compose stop_grace_period, systemd TimeoutStopSec)")
    return p


def _redirect_domains(config: Config) -> list[str]:
    p: list[str] = []
    # The return-URL rules are parsed by the portal's RedirectPolicy at start-up; parse them here too,
    # so a typo is a configuration problem and not a crash of `authproxy run`.
    for domain in config.server.allowed_redirect_domains:
        try:
            DomainRule.parse(domain)
        except ValueError as exc:
            p.append(
                f"ALLOWED_REDIRECT_DOMAINS: {exc}; use host, .parent.domain, *.domain, host:port or host:*"
            )
    return p


def _session(config: Config) -> list[str]:
    """Lifetimes and signing keys."""
    p: list[str] = []
    sess = config.session
    if sess.idle_timeout <= 0:
        p.append("SESSION_IDLE_TIMEOUT: must be greater than 0 (e.g. 15m)")
    if sess.max_age <= 0:
        p.append("SESSION_MAX_AGE: must be greater than 0 (e.g. 24h)")
    if 0 < sess.max_age < sess.idle_timeout:
        p.append("SESSION_IDLE_TIMEOUT: must not be longer than SESSION_MAX_AGE")
    for i, secret in enumerate(sess.secrets):
        if len(secret.reveal()) < 32:
            p.append(f"SESSION_SECRET: key {i + 1} is shorter than 32 characters; generate one with "
                     "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
    return p


def _cookie(config: Config) -> list[str]:
    p: list[str] = []
    sess = config.session
    if sess.cookie_name and not _COOKIE_NAME.match(sess.cookie_name):
        p.append(f"COOKIE_NAME: {sess.cookie_name!r} is not a valid cookie name")
    if sess.cookie_name.startswith("__Host-") and sess.cookie_domain:
        p.append("COOKIE_NAME: a __Host- cookie cannot carry COOKIE_DOMAIN; pick another name")
    if sess.cookie_domain and not _HOST.match(sess.cookie_domain):
        p.append(f"COOKIE_DOMAIN: {sess.cookie_domain!r} is not a domain like .example.com")
    return p


def _store(config: Config) -> list[str]:
    """Where sessions are kept (Redis or SQLite) and the in-process cache in front of it."""
    p: list[str] = []
    sess = config.session
    if sess.redis_url is not None:
        scheme = urlsplit(sess.redis_url.reveal()).scheme
        if scheme not in REDIS_SCHEMES:
            p.append(f"REDIS_URL: scheme must be one of {', '.join(REDIS_SCHEMES)}, but it is {scheme!r}")
    if sess.cache_ttl < 0:
        p.append("SESSION_CACHE_TTL: must be 0 (off) or more")
    return p


def _throttle(config: Config) -> list[str]:
    if config.throttle.window <= 0:
        return ["LOGIN_FAILURE_WINDOW: must be greater than 0"]
    return []


def _sites(config: Config) -> list[str]:
    """Every site on its own (_site), then what must differ between sites: names and routes."""
    p: list[str] = []
    if not config.sites:
        p.append("UPSTREAM_URL: no upstream configured; set UPSTREAM_URL and UPSTREAM_TYPE (one site) or "
                 "[[sites]] in a --config file")
    names: set[str] = set()
    routes: set[tuple[str, str]] = set()
    for site in config.sites:
        where = f"site {site.name!r}"
        if site.name in names:
            p.append(f"{where}: the name is used twice; give every site its own name")
        names.add(site.name)
        p.extend(_upstream(site, where))
        for method in site.allow_methods:
            if method not in ECHO_METHODS:
                p.append(
                    f"ALLOW_METHODS ({where}): {method!r} is forwarded anyway; list only methods authproxy "
                    f"refuses by default ({', '.join(sorted(ECHO_METHODS))})"
                )
        if not site.path_prefix.startswith("/"):
            p.append(f"{where}: path_prefix must start with /, but it is {site.path_prefix!r}")
        for host in site.hosts or ("*",):
            key = (host, site.path_prefix)
            if key in routes:
                p.append(
                    f"{where}: host {host!r} with path {site.path_prefix!r} is already routed to another site"
                )
            routes.add(key)
        # hybrid without a service credential is a migration in progress when the old admin token is there
        migrating = config.auth_mode == "hybrid" and site.cluster_token is not None
        if config.auth_mode in ("none", "hybrid") and site.service_token is None and not migrating:
            p.append(
                f"UPSTREAM_SERVICE_TOKEN ({where}): AUTH_MODE={config.auth_mode} needs a service credential "
                "(UPSTREAM_SERVICE_TOKEN, TECHNITIUM_BACKGROUND_TOKEN, TECHNITIUM_TOKEN or service_token "
                "in the site)"
            )
    return p


def _hybrid(config: Config) -> list[str]:
    """Service API keys and the shared admin token a migration starts from."""
    p: list[str] = []
    keys = config.server.service_api_keys
    if keys and config.auth_mode != "hybrid":
        p.append(
            "SERVICE_API_KEYS: service clients act with a site's service credential, which only "
            f"AUTH_MODE=hybrid uses for them (it is {config.auth_mode}); set AUTH_MODE=hybrid or remove them"
        )
    names = [k.name for k in keys]
    for name in sorted({n for n in names if names.count(n) > 1}):
        p.append(f"SERVICE_API_KEYS: the name {name!r} is used twice; give every key its own name")
    if config.server.background_check_interval < 1:
        p.append("BACKGROUND_CHECK_INTERVAL: must be at least 1s (e.g. 5m, the default)")
    for site in config.sites:
        if site.cluster_token is None:
            continue
        where = f"site {site.name!r}"
        if site.type != "technitium":
            p.append(f"TECHNITIUM_CLUSTER_TOKEN ({where}): only a technitium site has one; remove it")
        elif not config.session_mode:
            p.append(
                f"TECHNITIUM_CLUSTER_TOKEN ({where}): deprecated, and accepted only as the source of a "
                "migration in AUTH_MODE=session or hybrid; for AUTH_MODE=none set TECHNITIUM_TOKEN instead"
            )
    return p


def _upstream(site: SiteConfig, where: str) -> list[str]:
    """The site's upstream: its URL, its type and that adapter's own options."""
    p: list[str] = []
    parts = urlsplit(site.upstream_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        p.append(f"UPSTREAM_URL ({where}): must be an http:// or https:// URL, but it is "
                 f"{_without_userinfo(site.upstream_url)!r}")
    if parts.username or parts.password:
        p.append(f"UPSTREAM_URL ({where}): must not contain credentials; use the service token setting")
    if site.type not in ADAPTERS:
        p.append(f"UPSTREAM_TYPE ({where}): unknown type {site.type!r}; known types: "
                 f"{', '.join(sorted(ADAPTERS))}")
    else:
        adapter = ADAPTERS[site.type]
        p.extend(f"{where}: {msg}" for msg in adapter.check_options(site.options))
        p.extend(f"{where}: {msg}" for msg in adapter.check_site(site))
        if site.allowed_users and adapter.typed_names(site.options):
            p.append(f"ALLOWED_USERS ({where}): {site.type} checks only a password, so the user name is "
                     "whatever the person types and an allow list of names cannot hold; remove it, or "
                     "set a fixed options.identity.username")
    return p


# The sections, in the order their problems are listed. A new setting's rules go in its section.
SECTIONS: tuple[Callable[[Config], list[str]], ...] = (
    _https, _server, _redirect_domains, _session, _cookie, _store, _throttle, _sites, _hybrid,
    passwordless.check)
