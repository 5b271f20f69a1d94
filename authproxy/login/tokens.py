"""JWT bearer tokens (pyjwt): minted after a one-time code (or for a signed-in person's scripts),
checked on every request that carries one, revoked by `jti` on every replica.

Verification pins everything an attacker could otherwise choose: the key by `kid` (an unknown one is
refused, never "try them all"), the algorithm by that key (an HS256 key accepts only HS256, an RSA key
only RS256: no `alg: none`, no HS/RS confusion), the issuer, the audience and the claims that must be
there. Expiry is checked against this module's clock (controllable in tests), not pyjwt's.

A revoked `jti` is a store key that lives until the token's `exp`, announced with `store.revoke`;
verified tokens are cached in-process for `cache_ttl` seconds the way sessions are (the store's
generation is recorded and compared on every hit, the revocation channel drops entries), so a bearer
check costs about what a cached cookie check costs and a logout is in effect everywhere when it answers.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from authproxy.config.schema import JwtConfig, JwtKey
from authproxy.crypto import b64d, b64e, seal, unseal
from authproxy.sessions.store import SessionStore

CHANNEL = "jwt-revoked"
REQUIRED = ("sub", "iat", "exp", "jti", "iss", "aud")
MAX_TOKEN = 8192
CLOCK_SKEW = 60.0   # an `iat` this far in the future is still believed (clocks of replicas differ)
_CACHE_MAX = 4096


class TokenError(Exception):
    """The token is not one authproxy accepts; the reason is for the log, never for the client."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    sub: str
    jti: str
    exp: float
    iat: float
    roles: tuple[str, ...] = ()
    name: str = ""          # a person's label for a token they minted ("backup script")
    method: str = ""        # how its holder proved who they are (otp, passthrough, local)
    ck: str = field(default="", repr=False)   # the key of its sealed upstream credentials (base64url)


def rfc3339(when: float) -> str:
    """`expires_at` as the JSON answers write it: RFC 3339, UTC, whole seconds."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hashed(jti: str) -> str:
    return b64e(hashlib.sha256(jti.encode("utf-8", "surrogatepass")).digest()[:18])


def revocation_key(jti: str) -> str:
    return "jwt:rev:" + _hashed(jti)


def record_key(jti: str) -> str:
    """Where a minted token's public facts live until it expires or is revoked (what a WebSocket
    opened with the token watches, as a cookie's socket watches its session)."""
    return "jwt:meta:" + _hashed(jti)


def credentials_key(jti: str) -> str:
    """Where a token's copy of its holder's upstream credentials lives, sealed under the key only the
    token carries (its `ck` claim): a dump of the store opens nothing, as with a session's ticket."""
    return "jwt:cred:" + _hashed(jti)


def _credentials_aad(jti: str) -> bytes:
    return b"authproxy-token-credentials\x00" + jti.encode("utf-8", "surrogatepass")


def _owner_index(sub: str) -> str:
    return "jwt:owner:" + _hashed(sub)


ALL_INDEX = "jwt:all"


def _verifying_key(key: JwtKey) -> Any:
    if key.alg == "HS256":
        return key.secret.reveal().encode() if key.secret is not None else b""
    return serialization.load_pem_public_key(key.public_pem)


def _signing_key(key: JwtKey) -> Any:
    if key.alg == "HS256":
        return key.secret.reveal().encode() if key.secret is not None else b""
    if key.private_pem is None:
        raise ValueError("this key only verifies")
    return serialization.load_pem_private_key(key.private_pem.reveal().encode(), password=None)


def _claims(payload: dict[str, Any]) -> TokenClaims:
    sub, jti, exp, iat = payload.get("sub"), payload.get("jti"), payload.get("exp"), payload.get("iat")
    roles = payload.get("roles", [])
    if not isinstance(sub, str) or not sub or not isinstance(jti, str) or not jti:
        raise TokenError("sub and jti must be non-empty strings")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (exp, iat)):
        raise TokenError("exp and iat must be numbers")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise TokenError("roles must be a list of strings")
    name, method, ck = payload.get("name", ""), payload.get("amr", ""), payload.get("ck", "")
    return TokenClaims(sub=sub, jti=jti, exp=float(exp), iat=float(iat),  # type: ignore[arg-type]
                       roles=tuple(roles), name=name if isinstance(name, str) else "",
                       method=method if isinstance(method, str) else "", ck=ck if isinstance(ck, str) else "")


class JwtTokens:
    """Mint, verify and revoke; `keys[0]` of the configuration signs, every key verifies."""

    def __init__(self, config: JwtConfig, store: SessionStore, *, clock: Callable[[], float] = time.time,
                 cache_ttl: float = 2.0) -> None:
        if not config.keys:
            raise ValueError("JWT tokens need at least one key")
        self.config = config
        self.store = store
        self.clock = clock
        self.cache_ttl = cache_ttl
        self._by_kid = {k.kid: (k, _verifying_key(k)) for k in config.keys}
        self._signer = config.keys[0]
        self._signing_key = _signing_key(self._signer)
        self._cache: dict[str, tuple[TokenClaims, int, float]] = {}
        self._revoked: dict[str, float] = {}   # jti -> exp, told by the revocation channel

    def start(self) -> None:
        """Listen for revocations from every process (after the store started)."""
        self.store.subscribe(CHANNEL, self._on_revoked)

    def _on_revoked(self, message: str) -> None:
        jti, _, exp = message.partition(" ")
        try:
            self._revoked[jti] = float(exp)
        except ValueError:
            self._revoked[jti] = self.clock() + self.config.max_expiration
        self._cache.clear()
        if len(self._revoked) > _CACHE_MAX:
            now = self.clock()
            self._revoked = {j: e for j, e in self._revoked.items() if e > now}

    def mint(self, sub: str, roles: Sequence[str] = (), *, ttl: float | None = None, name: str = "",
             method: str = "", ck: str = "") -> tuple[str, TokenClaims]:
        now = self.clock()
        lifetime = self.config.expiration if ttl is None else ttl
        claims = TokenClaims(sub=sub, jti=secrets.token_urlsafe(18), exp=float(int(now + lifetime)),
                             iat=float(int(now)), roles=tuple(roles), name=name, method=method, ck=ck)
        payload: dict[str, Any] = {"sub": sub, "iat": int(claims.iat), "exp": int(claims.exp),
                                   "jti": claims.jti, "iss": self.config.issuer, "aud": self.config.audience,
                                   "roles": list(roles)}
        if name:
            payload["name"] = name
        if method:
            payload["amr"] = method
        if ck:
            payload["ck"] = ck
        token = jwt.encode(payload, self._signing_key, algorithm=self._signer.alg,
                           headers={"kid": self._signer.kid, "typ": "JWT"})
        return token, claims

    def ours(self, token: str) -> bool:
        """Whether the token names one of authproxy's keys (its `kid`; nothing is verified here)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid") if len(token) <= MAX_TOKEN else None
        except jwt.PyJWTError:
            return False
        return isinstance(kid, str) and kid in self._by_kid

    def _decode(self, token: str) -> TokenClaims:
        if len(token) > MAX_TOKEN:
            raise TokenError("too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"unreadable header ({type(exc).__name__})") from None
        kid = header.get("kid")
        found = self._by_kid.get(kid) if isinstance(kid, str) else None
        if found is None:
            raise TokenError("unknown kid")
        key, verifying = found
        try:
            payload = jwt.decode(
                token, verifying, algorithms=[key.alg], audience=self.config.audience,
                issuer=self.config.issuer,
                options={"require": list(REQUIRED), "verify_exp": False, "verify_iat": False,
                         "verify_nbf": False},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(type(exc).__name__) from None
        claims = _claims(payload)
        now = self.clock()
        if claims.exp <= now:
            raise TokenError("expired")
        if claims.iat > now + CLOCK_SKEW:
            raise TokenError("issued in the future")
        return claims

    async def verify(self, token: str) -> TokenClaims:
        """The token's claims, or TokenError. StoreError when revocations cannot be read (fail closed)."""
        now = self.clock()
        hit = self._cache.get(token)
        generation = self.store.generation()
        if hit is not None:
            claims, seen, cached_at = hit
            if (seen == generation >= 0 and now - cached_at < self.cache_ttl and claims.exp > now
                    and claims.jti not in self._revoked):
                return claims
            del self._cache[token]
        claims = self._decode(token)
        if claims.jti in self._revoked or await self.store.get(revocation_key(claims.jti)) is not None:
            raise TokenError("revoked")
        if generation >= 0 and self.cache_ttl > 0:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[token] = (claims, generation, now)
        return claims

    async def revoke(self, claims: TokenClaims) -> None:
        """Refused on every replica until it expires, when this returns."""
        ttl = max(1.0, claims.exp - self.clock() + CLOCK_SKEW)
        await self.store.set(revocation_key(claims.jti), b"1", ttl)
        await self.forget(claims)   # first: what the announcement wakes (a socket's watch) finds it gone
        message = f"{claims.jti} {claims.exp}"
        await self.store.revoke(CHANNEL, message)
        self._on_revoked(message)   # here too, whether or not this process listens

    # ---- the list of minted tokens (so their holders and admins can see and revoke them) -----------

    async def record(self, claims: TokenClaims) -> None:
        """Remember a minted token's public facts (never the token) until it expires."""
        ttl = max(1.0, claims.exp - self.clock())
        facts = {"jti": claims.jti, "sub": claims.sub, "name": claims.name, "roles": list(claims.roles),
                 "iat": claims.iat, "exp": claims.exp, "method": claims.method}
        await self.store.set(record_key(claims.jti), json.dumps(facts).encode(), ttl)
        await self.store.index_add(_owner_index(claims.sub), claims.jti, ttl)
        await self.store.index_add(ALL_INDEX, claims.jti, ttl)

    async def find(self, jti: str) -> TokenClaims | None:
        raw = await self.store.get(record_key(jti))
        if raw is None:
            return None
        facts = json.loads(raw)
        return TokenClaims(sub=facts["sub"], jti=facts["jti"], exp=facts["exp"], iat=facts["iat"],
                           roles=tuple(facts["roles"]), name=facts["name"], method=facts["method"])

    async def listed(self, sub: str | None) -> list[TokenClaims]:
        """The live tokens minted for `sub` (None: everyone's), newest first."""
        index = ALL_INDEX if sub is None else _owner_index(sub)
        found = []
        for jti in await self.store.index_members(index):
            claims = await self.find(jti)
            if claims is None or claims.exp <= self.clock():
                await self.store.index_remove(index, jti)
                continue
            found.append(claims)
        return sorted(found, key=lambda c: c.iat, reverse=True)

    # ---- a token's sealed copy of its holder's upstream credentials (web/tokens_api.py, bearer.py) ---

    async def keep_credentials(self, claims: TokenClaims, key: bytes, credentials: dict[str, Any]) -> None:
        """Seal `credentials` (site -> Credential.to_dict()) under `key` until the token expires."""
        ttl = max(1.0, claims.exp - self.clock())
        blob = seal(key, json.dumps(credentials).encode(), _credentials_aad(claims.jti))
        await self.store.set(credentials_key(claims.jti), blob, ttl)

    async def credentials(self, claims: TokenClaims) -> dict[str, Any] | None:
        """The token's upstream credentials (site -> dict); None when they are gone (revoked, expired
        upstream) or do not open with the token's `ck` (tampered)."""
        try:
            key = b64d(claims.ck)
        except ValueError:
            return None
        blob = await self.store.get(credentials_key(claims.jti))
        if blob is None or len(key) != 32:
            return None
        opened = unseal(key, blob, _credentials_aad(claims.jti))
        if opened is None:
            return None
        found = json.loads(opened)
        return found if isinstance(found, dict) else None

    async def drop_credential(self, claims: TokenClaims, site: str) -> None:
        """The upstream ended one of the token's credentials: that site's copy goes (all of it, when
        it was the last)."""
        found = await self.credentials(claims)
        if found is not None:
            found.pop(site, None)
        if not found:
            await self.store.delete(credentials_key(claims.jti))
            return
        await self.keep_credentials(claims, b64d(claims.ck), found)

    async def forget(self, claims: TokenClaims) -> None:
        await self.store.delete(credentials_key(claims.jti))
        await self.store.delete(record_key(claims.jti))
        await self.store.index_remove(_owner_index(claims.sub), claims.jti)
        await self.store.index_remove(ALL_INDEX, claims.jti)

    def jwks(self) -> dict[str, Any]:
        """The public keys (RS256/EdDSA) as a JWK Set, for services that verify tokens themselves;
        HS256 secrets are never published."""
        out: list[dict[str, Any]] = []
        for key, verifying in self._by_kid.values():
            if key.alg == "HS256":
                continue
            algorithm = jwt.algorithms.RSAAlgorithm if key.alg == "RS256" else jwt.algorithms.OKPAlgorithm
            jwk = algorithm.to_jwk(verifying, as_dict=True)
            jwk.update(kid=key.kid, alg=key.alg, use="sig")
            out.append(jwk)
        return {"keys": out}
