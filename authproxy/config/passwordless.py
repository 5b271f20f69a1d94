"""The settings of one-time codes by webhook and JWT bearer tokens: read (env), then checked.

Kept apart from loader.py so the passwordless settings are one module: `read_otp`/`read_jwt` take the
loader's reader (anything with `raw`, `boolean`, `integer`, `secret`, `problems`), `check` adds the
cross-field rules that validate.py runs with the others.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

from authproxy.config.schema import Config, JwtConfig, JwtKey, OtpConfig
from authproxy.crypto import Secret, b64e

MIN_JWT_SECRET = 32
_GENERATE = "generate one with `openssl rand -base64 48`"
# What an example .env or a tutorial ships: refused, however long.
_PLACEHOLDERS = re.compile(
    r"change.?me|change.?this|replace.?me|your.?(jwt.?)?secret|placeholder|example|secret.?key|"
    r"super.?secret|my.?secret|not.?secure|insecure|default|password|xxxxxx|123456|abcdef",
    re.IGNORECASE,
)
TEMPLATE_FIELDS = ("code", "minutes", "time", "username", "message", "client_ip")
DEFAULT_TEMPLATE = '{"text": "{{message}}"}'
SITE_AUTH = ("", "otp")   # a [[sites]] table's `auth`: "" follows AUTH_MODE


class Reader(Protocol):
    problems: list[str]

    def raw(self, *names: str) -> tuple[str, str] | None: ...
    def boolean(self, name: str, default: bool) -> bool: ...
    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int: ...
    def secret(self, name: str) -> Secret | None: ...


_OTP, _JWT = OtpConfig(), JwtConfig()


def _split(text: str) -> tuple[str, ...]:
    return tuple(p for p in re.split(r"[,\s]+", text.strip()) if p)


def read_otp(r: Reader) -> OtpConfig:
    minutes = r.integer("OTP_EXPIRATION_MINUTES", round(_OTP.expiration / 60), minimum=1, maximum=60)
    template = r.raw("OTP_WEBHOOK_TEMPLATE")
    users = r.raw("OTP_USERS", "OTP_USERNAME")
    return OtpConfig(
        expiration=minutes * 60.0,
        discord_webhook_url=r.secret("DISCORD_WEBHOOK_URL"),
        webhook_url=r.secret("OTP_WEBHOOK_URL"),
        webhook_template=template[1] if template else "",
        webhook_timeout=float(r.integer("OTP_WEBHOOK_TIMEOUT", round(_OTP.webhook_timeout), minimum=1,
                                        maximum=120)),
        users=tuple(u.lower() for u in _split(users[1])) if users else _OTP.users,
        max_attempts=r.integer("OTP_MAX_ATTEMPTS", _OTP.max_attempts, minimum=1, maximum=20),
        max_requests=r.integer("OTP_MAX_REQUESTS", _OTP.max_requests, minimum=1, maximum=1000),
        legacy_paths=r.boolean("OTP_LEGACY_PATHS", _OTP.legacy_paths),
        notify=r.boolean("OTP_NOTIFY", _OTP.notify),
    )


def kid_for(material: bytes, prefix: str) -> str:
    """A key's id: a short hash of what identifies it (never the secret itself, which it names)."""
    return f"{prefix}-" + b64e(hashlib.sha256(b"authproxy-kid\x00" + material).digest()[:9])


def secret_problem(value: str) -> str | None:
    if len(value.encode()) < MIN_JWT_SECRET:
        return f"shorter than {MIN_JWT_SECRET} bytes; {_GENERATE}"
    if _PLACEHOLDERS.search(value) or len(set(value)) < 8:
        return f"looks like a placeholder, not a random secret; {_GENERATE}"
    return None


def _hs_keys(r: Reader) -> list[JwtKey]:
    secret = r.secret("JWT_SECRET")
    if secret is None:
        return []
    keys: list[JwtKey] = []
    for i, value in enumerate(_split(secret.reveal())):
        problem = secret_problem(value)
        if problem:
            r.problems.append(f"JWT_SECRET: {'the secret' if i == 0 else f'secret no. {i + 1}'} is {problem}")
            continue
        keys.append(JwtKey(kid=kid_for(value.encode(), "hs"), alg="HS256", secret=Secret(value)))
    return keys


def _pem(r: Reader, name: str, path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        r.problems.append(f"{name}: cannot read {path!r} ({exc.strerror}); point it at a PEM file")
        return None


def _asymmetric_keys(r: Reader, alg: Literal["RS256", "EdDSA"]) -> list[JwtKey]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    wanted = rsa.RSAPrivateKey if alg == "RS256" else ed25519.Ed25519PrivateKey
    keys: list[JwtKey] = []
    found = r.raw("JWT_PRIVATE_KEY_FILE")
    if found is None:
        r.problems.append(f"JWT_PRIVATE_KEY_FILE: JWT_ALGORITHM={alg} signs with a private key; point "
                          "JWT_PRIVATE_KEY_FILE at its PEM file")
    else:
        pem = _pem(r, "JWT_PRIVATE_KEY_FILE", found[1])
        if pem is not None:
            try:
                private = serialization.load_pem_private_key(pem, password=None)
            except (ValueError, TypeError):
                private = None
            if not isinstance(private, wanted):
                r.problems.append(f"JWT_PRIVATE_KEY_FILE: not an unencrypted PEM {alg} private key")
            else:
                public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)
                keys.append(JwtKey(kid=kid_for(public, alg.lower()[:2]), alg=alg,
                                   private_pem=Secret(pem.decode()), public_pem=public))
    previous = r.raw("JWT_PUBLIC_KEY_FILES")
    for path in _split(previous[1]) if previous else ():
        pem = _pem(r, "JWT_PUBLIC_KEY_FILES", path)
        if pem is None:
            continue
        try:
            public_key = serialization.load_pem_public_key(pem)
        except ValueError:
            public_key = None
        kind: Literal["RS256", "EdDSA"] | None = (
            "RS256" if isinstance(public_key, rsa.RSAPublicKey)
            else "EdDSA" if isinstance(public_key, ed25519.Ed25519PublicKey) else None)
        if kind is None or public_key is None:
            r.problems.append(f"JWT_PUBLIC_KEY_FILES: {path!r} is not a PEM RSA or Ed25519 public key")
            continue
        public = public_key.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
        keys.append(JwtKey(kid=kid_for(public, kind.lower()[:2]), alg=kind, public_pem=public))
    return keys


def read_jwt(r: Reader) -> JwtConfig:
    found = r.raw("JWT_ALGORITHM")
    alg = found[1] if found else "HS256"
    hs = _hs_keys(r)
    if alg == "HS256":
        keys = hs
    elif alg == "RS256":
        keys = _asymmetric_keys(r, "RS256") + hs   # HS keys stay valid for verifying during a move
    elif alg == "EdDSA":
        keys = _asymmetric_keys(r, "EdDSA") + hs   # HS keys stay valid for verifying during a move
    else:
        r.problems.append(f"JWT_ALGORITHM: must be HS256, RS256 or EdDSA, but it is {alg!r}")
        keys = hs
    hours = r.integer("JWT_EXPIRATION_HOURS", round(_JWT.expiration / 3600), minimum=1, maximum=24 * 366)
    longest = r.integer("JWT_MAX_EXPIRATION_HOURS", round(_JWT.max_expiration / 3600), minimum=1,
                        maximum=24 * 3660)
    return JwtConfig(
        keys=tuple(keys),
        expiration=hours * 3600.0,
        max_expiration=longest * 3600.0,
        issuer=(r.raw("JWT_ISSUER") or ("", _JWT.issuer))[1],
        audience=(r.raw("JWT_AUDIENCE") or ("", _JWT.audience))[1],
    )


def template_problem(template: str) -> str | None:
    """Why an OTP_WEBHOOK_TEMPLATE cannot be used (None: it can): it must be a JSON object whose string
    values may hold {{code}}, {{minutes}}, {{time}}, {{username}}, {{client_ip}} and {{message}}."""
    try:
        data = json.loads(template)
    except json.JSONDecodeError as exc:
        return f"is not valid JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(data, dict):
        return "must be a JSON object, e.g. " + DEFAULT_TEMPLATE
    names = set(re.findall(r"\{\{(\w+)\}\}", template))
    unknown = names - set(TEMPLATE_FIELDS)
    if unknown:
        return (f"names unknown fields {', '.join(sorted(unknown))}; known: "
                + ", ".join("{{" + f + "}}" for f in TEMPLATE_FIELDS))
    if not names & {"code", "message"}:
        return "must carry the code: put {{code}} or {{message}} into one of its strings"
    return None


def _webhook_problems(otp: OtpConfig) -> list[str]:
    p: list[str] = []
    for name, url in (("DISCORD_WEBHOOK_URL", otp.discord_webhook_url), ("OTP_WEBHOOK_URL", otp.webhook_url)):
        if url is None:
            continue
        parts = urlsplit(url.reveal())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # The URL itself is a secret (a Discord webhook's token is in its path): never printed.
            p.append(f"{name}: must be an http:// or https:// URL (the value is not shown: it is a secret)")
    if otp.discord_webhook_url is not None and otp.webhook_url is not None:
        p.append("DISCORD_WEBHOOK_URL / OTP_WEBHOOK_URL: set one of them, not both")
    if otp.webhook_template:
        problem = template_problem(otp.webhook_template)
        if problem:
            p.append(f"OTP_WEBHOOK_TEMPLATE: {problem}")
        if otp.webhook_url is None:
            p.append("OTP_WEBHOOK_TEMPLATE: only OTP_WEBHOOK_URL uses it; set OTP_WEBHOOK_URL too")
    return p


def summary(config: Config) -> list[str]:
    """What `check-config` says about codes and tokens (never a secret: the kinds, counts and key ids)."""
    lines = []
    if config.otp_codes:
        hook = ("Discord webhook" if config.otp.discord_webhook_url is not None
                else "webhook (OTP_WEBHOOK_URL)" if config.otp.webhook_url is not None else "no webhook")
        sites = ", ".join(s.name for s in config.sites if config.otp_site(s))
        lines.append(f"one-time codes: at {sites}; sent by {hook}; valid {round(config.otp.expiration / 60)} "
                     f"min, {config.otp.max_attempts} tries; users {', '.join(config.otp.users)}"
                     + ("; legacy paths /api/v1/auth/login and /verify" if config.otp.legacy_paths else ""))
    if config.jwt.enabled:
        keys = ", ".join(f"{k.kid} ({k.alg})" for k in config.jwt.keys)
        jwt = config.jwt
        lines.append(f"JWTs: signed by {jwt.keys[0].kid}; verified with {keys}; "
                     f"{round(jwt.expiration / 3600)} h; iss={jwt.issuer} aud={jwt.audience}")
    return lines


def _site_auth(config: Config) -> list[str]:
    p: list[str] = []
    for site in config.sites:
        if site.auth not in SITE_AUTH:
            p.append(f"sites[{site.name!r}].auth: must be one of {', '.join(repr(a) for a in SITE_AUTH)}, "
                     f"but it is {site.auth!r}")
        elif site.auth == "otp" and config.auth_mode not in ("session", "hybrid", "otp"):
            p.append(f"sites[{site.name!r}].auth = \"otp\": people sign in there, which AUTH_MODE="
                     f"{config.auth_mode} does not do; set auth_mode to session, hybrid or otp")
    return p


def check(config: Config) -> list[str]:
    """One-time codes (AUTH_MODE=otp, or `auth = "otp"` at a site) need a webhook, signing keys and a
    service credential at each such site."""
    p = _webhook_problems(config.otp) + _site_auth(config)
    if not config.otp_codes:
        if config.otp.legacy_paths:
            p.append("OTP_LEGACY_PATHS: the aliases sign in with one-time codes; set AUTH_MODE=otp too")
        return p
    if not config.otp.webhook_configured:
        p.append("AUTH_MODE=otp: codes are sent by webhook; set DISCORD_WEBHOOK_URL or OTP_WEBHOOK_URL")
    if not config.jwt.enabled:
        p.append(f"JWT_SECRET: AUTH_MODE=otp answers a verified code with a JWT; set JWT_SECRET (or "
                 f"JWT_SECRET_FILE), at least {MIN_JWT_SECRET} random bytes; {_GENERATE}")
    elif config.jwt.keys[0].alg == "HS256" and config.jwt.keys[0].secret is None:
        p.append("JWT_SECRET: the signing key has no secret")
    for site in config.sites:
        if config.otp_site(site) and site.service_token is None:
            p.append(f"UPSTREAM_SERVICE_TOKEN (site {site.name!r}): AUTH_MODE=otp sends the upstream the "
                     "site's service credential; set UPSTREAM_SERVICE_TOKEN (or service_token in the site)")
    return p
