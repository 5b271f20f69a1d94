"""Build the one `Config` from the environment and an optional TOML file.

Every value is read here, once. Problems are collected, not raised one by one, so
`authproxy check-config` can print all of them; `validate.check` adds the cross-field rules.
Legacy names from existing `.env` files keep working (AUTH_SESSION_ENABLED, USE_SESSION_AUTH, ...).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets as _secrets
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from authproxy.config import passwordless, validate
from authproxy.config.schema import (
    AUTH_MODE_ALIASES,
    AUTH_MODES,
    DEFAULT_AUTH_MODE,
    Config,
    IPNetwork,
    ServerConfig,
    ServiceKey,
    SessionConfig,
    SiteConfig,
    ThrottleConfig,
)
from authproxy.crypto import Secret
from authproxy.errors import ConfigError

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}

# The defaults, written once in the schema: what the loader falls back to when nothing sets a value.
_SERVER, _SESSION, _THROTTLE = ServerConfig(), SessionConfig(), ThrottleConfig()
_SITE = SiteConfig(name="", upstream_url="", type="")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

FILE_KEYS: dict[str, set[str]] = {
    "": {"auth_mode", "server", "session", "throttle", "sites"},
    "server": {
        "host",
        "port",
        "prefix",
        "data_dir",
        "https_enabled",
        "https_cert_file",
        "https_key_file",
        "trust_proxy",
        "trusted_proxies",
        "allowed_redirect_domains",
        "access_log",
        "metrics",
        "log_level",
        "log_format",
        "audit_log_file",
        "max_header_size",
        "workers",
        "forward_auth_host",
        "forward_auth_port",
        "forward_auth_secret",
        "forward_auth_secret_file",
        "hsts_max_age",
        "hsts_include_subdomains",
        "service_api_keys",
        "service_api_keys_file",
        "background_check_interval",
        "shutdown_timeout",
    },
    "session": {
        "idle_timeout",
        "max_age",
        "secret",
        "secret_file",
        "cookie_name",
        "cookie_domain",
        "redis_url_file",
        "cache_ttl",
        "redis_url",
        "redis_prefix",
    },
    "throttle": {"max_failures", "window"},
    "site": {
        "name",
        "upstream_url",
        "type",
        "hosts",
        "path_prefix",
        "service_token",
        "service_token_file",
        "cluster_token",
        "cluster_token_file",
        "options",
        "timeout",
        "connect_timeout",
        "idle_timeout",
        "allowed_users",
        "allowed_groups",
        "allow_methods",
        "auth",
    },
}


class _Reader:
    """Typed accessors that record a problem instead of raising, naming the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def raw(self, *names: str) -> tuple[str, str] | None:
        for name in names:
            value = self.env.get(name)
            if value is not None and value.strip() != "":
                return name, value.strip()
        return None

    def boolean(self, name: str, default: bool) -> bool:
        found = self.raw(name)
        if found is None:
            return default
        low = found[1].lower()
        if low in TRUE:
            return True
        if low in FALSE:
            return False
        self.problems.append(f"{name}: must be true or false, but it is set to {found[1]!r}")
        return default

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
        found = self.raw(name)
        if found is None:
            return default
        try:
            value = int(found[1])
        except ValueError:
            self.problems.append(f"{name}: must be a whole number, but it is set to {found[1]!r}")
            return default
        if not minimum <= value <= maximum:
            self.problems.append(f"{name}: must be between {minimum} and {maximum}, but it is {value}")
            return default
        return value

    def duration(self, name: str, default: float) -> float:
        found = self.raw(name)
        if found is None:
            return default
        parsed = parse_duration(found[1])
        if parsed is None:
            self.problems.append(
                f"{name}: must be a duration in seconds or with a unit (900, 15m, 24h), "
                f"but it is set to {found[1]!r}")
            return default
        return parsed

    def file_duration(self, table: dict[str, Any], key: str, default: float, where: str) -> float:
        """`key` of a config-file table as a duration, or `default` when absent."""
        if key not in table:
            return default
        parsed = parse_duration(table[key])
        if parsed is None:
            self.problems.append(f"{where}.{key}: must be a duration (900, 15m, 24h), "
                                 f"but it is {table[key]!r}")
            return default
        return parsed

    def secret(self, name: str) -> Secret | None:
        """`NAME` or `NAME_FILE` (the file's first line), as Docker/systemd secrets expect."""
        direct = self.raw(name)
        file_ = self.raw(name + "_FILE")
        if direct and file_:
            self.problems.append(f"{name}: set either {name} or {name}_FILE, not both")
        if file_:
            try:
                text = Path(file_[1]).read_text(encoding="utf-8").strip()
            except OSError as exc:
                self.problems.append(f"{name}_FILE: cannot read {file_[1]!r} ({exc.strerror}); "
                                     "point it at a readable file")
                return None
            if not text:
                self.problems.append(f"{name}_FILE: {file_[1]!r} is empty")
                return None
            return Secret(text)
        if direct:
            return Secret(direct[1])
        return None


def parse_duration(text: str | float) -> float | None:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text) if text >= 0 else None
    match = _DURATION.match(str(text))
    if not match:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_networks(text: str, name: str, problems: list[str]) -> tuple[IPNetwork, ...]:
    nets: list[IPNetwork] = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            problems.append(f"{name}: {part!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8)")
    return tuple(nets)


def _split(text: str) -> tuple[str, ...]:
    return tuple(p for p in re.split(r"[,\s]+", text.strip()) if p)


def _auth_mode(r: _Reader, file_mode: str | None) -> str:
    found = r.raw("AUTH_MODE")
    if found:
        mode = found[1].lower()
        mode = AUTH_MODE_ALIASES.get(mode, mode)
        if mode not in AUTH_MODES:
            r.problems.append(
                f"AUTH_MODE: must be one of {', '.join(AUTH_MODES)}, but it is set to {found[1]!r}"
                + (
                    "; local accounts and one-time codes are not available in this version"
                    if mode in {"local", "otp"}
                    else ""
                )
            )
            return DEFAULT_AUTH_MODE
        return mode
    if r.boolean("USE_HYBRID_AUTH", False):
        return "hybrid"
    if r.boolean("AUTH_SESSION_ENABLED", False) or r.boolean("USE_SESSION_AUTH", False):
        return "session"
    if file_mode:
        file_mode = AUTH_MODE_ALIASES.get(str(file_mode).lower(), file_mode)
        if file_mode not in AUTH_MODES:
            r.problems.append(f"auth_mode (config file): must be one of {', '.join(AUTH_MODES)}, "
                              f"but it is {file_mode!r}")
            return DEFAULT_AUTH_MODE
        return file_mode
    return DEFAULT_AUTH_MODE


def _check_keys(table: Any, section: str, problems: list[str], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table")
        return {}
    allowed = FILE_KEYS[section]
    for key in table:
        if key not in allowed:
            problems.append(f"{where}: unknown option {key!r}; known options: {', '.join(sorted(allowed))}")
    return table


def _file_secret(table: dict[str, Any], key: str, where: str, problems: list[str]) -> Secret | None:
    if key in table and f"{key}_file" in table:
        problems.append(f"{where}: set either {key} or {key}_file, not both")
    if f"{key}_file" in table:
        try:
            return Secret(Path(str(table[f"{key}_file"])).read_text(encoding="utf-8").strip())
        except OSError as exc:
            problems.append(f"{where}.{key}_file: cannot read it ({exc.strerror})")
            return None
    if key in table:
        return Secret(str(table[key]))
    return None


def _site_from_table(t: dict[str, Any], index: int, problems: list[str],
                     defaults: SiteConfig = _SITE) -> SiteConfig | None:
    """One [[sites]] table; `defaults` carries the environment's UPSTREAM_*_TIMEOUT for keys it leaves out."""
    where = f"sites[{index}]"
    _check_keys(t, "site", problems, where)
    missing = [k for k in ("name", "upstream_url", "type") if not t.get(k)]
    if missing:
        problems.append(f"{where}: missing {', '.join(missing)}")
        return None
    hosts = t.get("hosts", ())
    if isinstance(hosts, str):
        hosts = _split(hosts)
    options = t.get("options", {})
    if not isinstance(options, dict):
        problems.append(f"{where}.options: must be a table")
        options = {}
    timeout = parse_duration(t.get("timeout", defaults.timeout))
    connect_timeout = parse_duration(t.get("connect_timeout", defaults.connect_timeout))
    idle_timeout = parse_duration(t.get("idle_timeout", defaults.idle_timeout))
    if timeout is None or connect_timeout is None or idle_timeout is None:
        problems.append(f"{where}: timeout/connect_timeout/idle_timeout must be durations (e.g. 30, 5s, 5m)")
    upstream_url = str(t["upstream_url"]).rstrip("/")
    if str(t["type"]).lower() == "truenas":
        upstream_url = truenas_base_url(upstream_url)
    return SiteConfig(
        name=str(t["name"]), upstream_url=upstream_url, type=str(t["type"]).lower(),
        hosts=tuple(h.lower() for h in hosts), path_prefix=str(t.get("path_prefix", _SITE.path_prefix)),
        service_token=_file_secret(t, "service_token", where, problems),
        cluster_token=_file_secret(t, "cluster_token", where, problems), options=dict(options),
        allowed_users=tuple(u.lower() for u in _list(t.get("allowed_users", ()))),
        allowed_groups=tuple(_list(t.get("allowed_groups", ()))),
        allow_methods=tuple(m.upper() for m in _list(t.get("allow_methods", ()))),
        timeout=timeout or defaults.timeout, connect_timeout=connect_timeout or defaults.connect_timeout,
        idle_timeout=idle_timeout or defaults.idle_timeout, auth=str(t.get("auth", "")).lower())


def _site_timeouts(r: _Reader) -> SiteConfig:
    """UPSTREAM_TIMEOUT, UPSTREAM_CONNECT_TIMEOUT, UPSTREAM_IDLE_TIMEOUT: every site's defaults (the
    one site of UPSTREAM_URL, and each [[sites]] table that does not set its own)."""
    return replace(_SITE, timeout=r.duration("UPSTREAM_TIMEOUT", _SITE.timeout),
                   connect_timeout=r.duration("UPSTREAM_CONNECT_TIMEOUT", _SITE.connect_timeout),
                   idle_timeout=r.duration("UPSTREAM_IDLE_TIMEOUT", _SITE.idle_timeout))


def _forward_auth_listener(r: _Reader, fs: dict[str, Any]) -> tuple[str, int | None]:
    """FORWARD_AUTH_HOST / FORWARD_AUTH_PORT (or [server] forward_auth_host / forward_auth_port): the
    listener that alone serves /verify*. No port, no listener; a host without a port is a mistake."""
    host = r.raw("FORWARD_AUTH_HOST")
    host_text = host[1] if host else str(fs.get("forward_auth_host", _SERVER.forward_auth_host)).strip()
    port: int | None = None
    if r.raw("FORWARD_AUTH_PORT"):
        port = r.integer("FORWARD_AUTH_PORT", 0, minimum=0, maximum=65535)
    elif "forward_auth_port" in fs:
        value = fs["forward_auth_port"]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
            port = value
        else:
            r.problems.append(
                f"[server].forward_auth_port: must be a port number (e.g. 9001), but it is {value!r}"
            )
    if port is None and (host or "forward_auth_host" in fs):
        r.problems.append(
            "FORWARD_AUTH_HOST: set without FORWARD_AUTH_PORT; set FORWARD_AUTH_PORT (e.g. 9001) "
            "to open the forward-auth listener there, or remove FORWARD_AUTH_HOST"
        )
    if not host_text:
        r.problems.append("FORWARD_AUTH_HOST: must be an address to listen on, e.g. 127.0.0.1")
    return host_text or _SERVER.forward_auth_host, port


def _list(value: Any) -> tuple[str, ...]:
    return _split(value) if isinstance(value, str) else tuple(str(v) for v in value)


TRUENAS_OPTIONS = (("TRUENAS_USERNAME", "api_username"), ("TRUENAS_TOKEN_TTL", "token_ttl"),
                   ("TRUENAS_ALLOW_CLIENT_API_KEYS", "allow_client_api_keys"),
                   ("TRUENAS_ALLOW_INSECURE_API_KEY", "allow_insecure_api_key"))


def truenas_base_url(url: str) -> str:
    """TRUENAS_URL as the site's base URL: ws(s):// is http(s)://, and a trailing `/api/current`,
    `/api/vXX.YY` or `/websocket` is dropped (authproxy serves every path of the host)."""
    parts = urlsplit(url.strip())
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    path = re.sub(r"(/api/current|/api/v\d[^/]*|/websocket)/?$", "", parts.path.rstrip("/"))
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _env_site(r: _Reader, defaults: SiteConfig) -> SiteConfig | None:
    url = r.raw("UPSTREAM_URL", "TECHNITIUM_URL", "TECHNITIUM_BASE_URL", "TRUENAS_URL")
    if url is None:
        return None
    type_ = r.raw("UPSTREAM_TYPE")
    site_type = type_[1].lower() if type_ else (
        "technitium" if url[0].startswith("TECHNITIUM") else "truenas" if url[0] == "TRUENAS_URL" else "")
    if not site_type:
        r.problems.append("UPSTREAM_TYPE: not set; say which product UPSTREAM_URL is (e.g. technitium)")
        site_type = "technitium"
    options: dict[str, Any] = {}
    api = r.raw("TECHNITIUM_API_VERSION", "UPSTREAM_API_VERSION")
    if api:
        options["api_version"] = api[1]
    token_mode = r.raw("TECHNITIUM_TOKEN_MODE", "UPSTREAM_TOKEN_MODE")
    if token_mode:
        options["token_mode"] = token_mode[1].lower()
    service = (r.secret("UPSTREAM_SERVICE_TOKEN") or r.secret("TECHNITIUM_BACKGROUND_TOKEN")
               or r.secret("TECHNITIUM_TOKEN"))
    upstream_url = url[1].rstrip("/")
    if site_type == "truenas":
        upstream_url = truenas_base_url(upstream_url)
        service = service or r.secret("TRUENAS_API_KEY")
        for env_name, option in TRUENAS_OPTIONS:
            found = r.raw(env_name)
            if found:
                options[option] = found[1]
    hosts = r.raw("UPSTREAM_HOSTS", "SITE_HOSTS")
    return SiteConfig(
        name=(r.raw("SITE_NAME") or ("", site_type))[1],
        upstream_url=upstream_url,
        type=site_type,
        hosts=tuple(h.lower() for h in _split(hosts[1])) if hosts else (),
        service_token=service, cluster_token=r.secret("TECHNITIUM_CLUSTER_TOKEN"), options=options,
        allowed_users=tuple(u.lower() for u in _split((r.raw("ALLOWED_USERS") or ("", ""))[1])),
        allowed_groups=_split((r.raw("ALLOWED_GROUPS") or ("", ""))[1]),
        allow_methods=tuple(m.upper() for m in _split((r.raw("ALLOW_METHODS") or ("", ""))[1])),
        timeout=defaults.timeout,
        connect_timeout=defaults.connect_timeout,
        idle_timeout=defaults.idle_timeout,
    )


def load_config(env: Mapping[str, str] | None = None, config_file: Path | None = None) -> Config:
    """Read and validate everything; raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    r = _Reader(env)
    file_data = _read_file(r, config_file or (Path(env["AUTHPROXY_CONFIG"]) if env.get("AUTHPROXY_CONFIG")
                                              else None))
    _check_keys(file_data, "", r.problems, "config file")
    fs = _check_keys(file_data.get("server", {}), "server", r.problems, "[server]")
    fss = _check_keys(file_data.get("session", {}), "session", r.problems, "[session]")
    ft = _check_keys(file_data.get("throttle", {}), "throttle", r.problems, "[throttle]")
    server = _server(r, fs)
    session = _session(r, fss)
    throttle = _throttle(r, ft)
    sites = _sites(r, file_data)
    config = Config(auth_mode=_auth_mode(r, file_data.get("auth_mode")),  # type: ignore[arg-type]
                    server=server, session=session, throttle=throttle, sites=sites,
                    otp=passwordless.read_otp(r), jwt=passwordless.read_jwt(r))
    problems = r.problems + validate.check(config)
    if problems:
        raise ConfigError(problems)
    return config


def _read_file(r: _Reader, file_path: Path | None) -> dict[str, Any]:
    """The TOML config file's tables ({} without a file, or when it cannot be read)."""
    if file_path is None:
        return {}
    try:
        return tomllib.loads(file_path.read_text(encoding="utf-8"))
    except OSError as exc:
        r.problems.append(f"--config / AUTHPROXY_CONFIG: cannot read {str(file_path)!r} ({exc.strerror})")
    except tomllib.TOMLDecodeError as exc:
        r.problems.append(f"--config / AUTHPROXY_CONFIG: {str(file_path)!r} is not valid TOML ({exc})")
    return {}


def _trusted_proxies(r: _Reader, fs: dict[str, Any]) -> tuple[IPNetwork, ...]:
    trusted_text = r.raw("TRUSTED_PROXIES")
    if trusted_text:
        return parse_networks(trusted_text[1], "TRUSTED_PROXIES", r.problems)
    if "trusted_proxies" in fs:
        return parse_networks(",".join(fs["trusted_proxies"]), "[server].trusted_proxies", r.problems)
    return _SERVER.trusted_proxies


def _server(r: _Reader, fs: dict[str, Any]) -> ServerConfig:
    """The [server] table under the environment's variables."""
    trusted = _trusted_proxies(r, fs)
    redirect_domains = r.raw("ALLOWED_REDIRECT_DOMAINS", "WHITELIST_DOMAINS")
    cert = r.raw("HTTPS_CERT_FILE")
    key = r.raw("HTTPS_KEY_FILE")
    audit_file = r.raw("AUDIT_LOG_FILE")
    data_dir = r.raw("AUTHPROXY_DATA_DIR", "DATA_DIR")
    fa_host, fa_port = _forward_auth_listener(r, fs)
    return ServerConfig(
        host=(r.raw("HOST") or ("", str(fs.get("host", _SERVER.host))))[1],
        port=r.integer("PORT", int(fs.get("port", _SERVER.port)), minimum=0, maximum=65535),
        prefix=(r.raw("AUTHPROXY_PREFIX") or ("", str(fs.get("prefix", _SERVER.prefix))))[1].rstrip("/"),
        data_dir=Path(data_dir[1] if data_dir else str(fs.get("data_dir", _SERVER.data_dir))),
        https_enabled=r.boolean("HTTPS_ENABLED", bool(fs.get("https_enabled", _SERVER.https_enabled))),
        https_cert_file=Path(cert[1])
        if cert
        else (Path(fs["https_cert_file"]) if "https_cert_file" in fs else None),
        https_key_file=Path(key[1])
        if key
        else (Path(fs["https_key_file"]) if "https_key_file" in fs else None),
        trust_proxy=r.boolean("TRUST_PROXY", bool(fs.get("trust_proxy", _SERVER.trust_proxy))),
        trusted_proxies=trusted,
        allowed_redirect_domains=(
            _split(redirect_domains[1])
            if redirect_domains
            else tuple(fs.get("allowed_redirect_domains", _SERVER.allowed_redirect_domains))
        ),
        access_log=r.boolean("ACCESS_LOG", bool(fs.get("access_log", _SERVER.access_log))),
        metrics=r.boolean("METRICS", bool(fs.get("metrics", _SERVER.metrics))),
        log_level=(r.raw("LOG_LEVEL") or ("", str(fs.get("log_level", _SERVER.log_level))))[1].upper(),
        log_format=(
            r.raw("LOG_FORMAT")  # type: ignore[arg-type]
            or ("", str(fs.get("log_format", _SERVER.log_format)))
        )[1].lower(),
        audit_log_file=Path(audit_file[1])
        if audit_file
        else (Path(fs["audit_log_file"]) if "audit_log_file" in fs else None),
        max_header_size=r.integer(
            "MAX_HEADER_SIZE",
            int(fs.get("max_header_size", _SERVER.max_header_size)),
            minimum=1024,
            maximum=65536,
        ),
        workers=r.integer("WORKERS", int(fs.get("workers", _SERVER.workers)), minimum=1, maximum=64),
        shutdown_timeout=r.duration(
            "SHUTDOWN_TIMEOUT", r.file_duration(fs, "shutdown_timeout", _SERVER.shutdown_timeout, "[server]")
        ),
        forward_auth_host=fa_host,
        forward_auth_port=fa_port,
        forward_auth_secret=(
            r.secret("FORWARD_AUTH_SECRET") or _file_secret(fs, "forward_auth_secret", "[server]", r.problems)
        ),
        hsts_max_age=round(
            r.duration("HSTS_MAX_AGE", r.file_duration(fs, "hsts_max_age", _SERVER.hsts_max_age, "[server]"))
        ),
        hsts_include_subdomains=r.boolean(
            "HSTS_INCLUDE_SUBDOMAINS",
            bool(fs.get("hsts_include_subdomains", _SERVER.hsts_include_subdomains)),
        ),
        service_api_keys=_service_keys(r, fs),
        background_check_interval=r.duration(
            "BACKGROUND_CHECK_INTERVAL",
            r.file_duration(fs, "background_check_interval", _SERVER.background_check_interval, "[server]"),
        ),
    )


_SERVICE_KEY = re.compile(r"^([A-Za-z0-9_.@-]{1,64}):sha256:([0-9a-fA-F]{64})$")


def _service_keys(r: _Reader, fs: dict[str, Any]) -> tuple[ServiceKey, ...]:
    """SERVICE_API_KEYS (or _FILE, or [server] service_api_keys): `name:sha256:<hex>` entries, as
    `authproxy service-key NAME` prints them; the keys themselves are never configured."""
    secret = r.secret("SERVICE_API_KEYS")
    if secret is not None:
        text, where = secret.reveal(), "SERVICE_API_KEYS"
    elif isinstance(fs.get("service_api_keys"), list):
        text, where = " ".join(str(v) for v in fs["service_api_keys"]), "[server].service_api_keys"
    else:
        from_file = _file_secret(fs, "service_api_keys", "[server]", r.problems)
        text = from_file.reveal() if from_file is not None else ""
        where = "[server].service_api_keys"
    keys: list[ServiceKey] = []
    for entry in _split(text):
        match = _SERVICE_KEY.match(entry)
        if match is None:
            shown = entry.split(":", 1)[0][:64]
            r.problems.append(f"{where}: the entry for {shown!r} is not name:sha256:<64 hex digits>; make "
                              "one with `authproxy service-key NAME` and paste the line it prints")
            continue
        keys.append(ServiceKey(name=match.group(1), digest=bytes.fromhex(match.group(2))))
    return tuple(keys)


def _session(r: _Reader, fss: dict[str, Any]) -> SessionConfig:
    """The [session] table under the environment's variables."""
    secret_list: list[Secret] = []
    env_secret = r.secret("SESSION_SECRET")
    if env_secret is not None:
        secret_list = [Secret(s) for s in _split(env_secret.reveal())]
    else:
        file_secret = _file_secret(fss, "secret", "[session]", r.problems)
        if file_secret is not None:
            secret_list = [Secret(s) for s in _split(file_secret.reveal())]
    redis_url = r.secret("REDIS_URL") or _file_secret(fss, "redis_url", "[session]", r.problems)
    return SessionConfig(
        idle_timeout=r.duration("SESSION_IDLE_TIMEOUT",
                                r.file_duration(fss, "idle_timeout", _SESSION.idle_timeout, "[session]")),
        max_age=r.duration("SESSION_MAX_AGE", r.file_duration(fss, "max_age", _SESSION.max_age, "[session]")),
        secrets=tuple(secret_list),
        cookie_name=(r.raw("COOKIE_NAME", "SESSION_COOKIE_NAME")
                     or ("", str(fss.get("cookie_name", _SESSION.cookie_name))))[1],
        cookie_domain=(r.raw("COOKIE_DOMAIN")
                       or ("", str(fss.get("cookie_domain", _SESSION.cookie_domain))))[1].lower(),
        cache_ttl=r.duration("SESSION_CACHE_TTL",
                             r.file_duration(fss, "cache_ttl", _SESSION.cache_ttl, "[session]")),
        redis_url=redis_url,
        redis_prefix=(r.raw("REDIS_PREFIX") or ("", str(fss.get("redis_prefix", _SESSION.redis_prefix))))[1],
    )


def _throttle(r: _Reader, ft: dict[str, Any]) -> ThrottleConfig:
    """The [throttle] table under the environment's variables."""
    return ThrottleConfig(
        max_failures=r.integer("LOGIN_MAX_FAILURES", int(ft.get("max_failures", _THROTTLE.max_failures)),
                               minimum=1, maximum=10_000),
        window=r.duration("LOGIN_FAILURE_WINDOW",
                          r.file_duration(ft, "window", _THROTTLE.window, "[throttle]")),
    )


def _sites(r: _Reader, file_data: dict[str, Any]) -> tuple[SiteConfig, ...]:
    """The file's [[sites]], or the one site of UPSTREAM_URL (never both)."""
    sites: list[SiteConfig] = []
    raw_sites = file_data.get("sites", [])
    if not isinstance(raw_sites, list):
        r.problems.append("sites (config file): must be an array of tables ([[sites]])")
        raw_sites = []
    defaults = _site_timeouts(r)
    for i, table in enumerate(raw_sites):
        site = _site_from_table(table if isinstance(table, dict) else {}, i, r.problems, defaults)
        if site is not None:
            sites.append(site)
    env_site = _env_site(r, defaults)
    if env_site is not None:
        if sites:
            r.problems.append("UPSTREAM_URL: set either UPSTREAM_URL (one site) or [[sites]] in the config "
                              "file, not both")
        else:
            sites.append(env_site)
    return tuple(sites)


def ensure_session_secrets(config: Config) -> tuple[Config, bool]:
    """Give the config a signing secret: the operator's, or one generated once into the data dir.

    Returns the config and whether a new secret was written (so the caller can say so once).
    """
    if config.session.secrets:
        return config, False
    path = config.server.data_dir / "session_secret"
    created = False
    if not path.exists():
        config.server.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(_secrets.token_urlsafe(48) + "\n")
        created = True
    keys = tuple(Secret(s) for s in _split(path.read_text(encoding="utf-8")))
    return replace(config, session=replace(config.session, secrets=keys)), created
