"""JWT verification pins key, algorithm, issuer, audience and claims; every tampering is refused.

Forged tokens are built with pyjwt itself (and by hand where pyjwt refuses to, e.g. `alg: none` with a
kid), the way an attacker would build them."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from authproxy.config.loader import load_config
from authproxy.config.passwordless import kid_for, secret_problem
from authproxy.config.schema import JwtConfig, JwtKey
from authproxy.crypto import Secret
from authproxy.errors import ConfigError
from authproxy.login.tokens import JwtTokens, TokenError
from authproxy.sessions.memory import MemoryStore
from tests.fakes.clock import OffsetClock

SECRET = "k7Qv2pW9zR4mT8nY1bX6cJ3hL5fD0sGa-Ue_Ni"
OLD_SECRET = "Zp3Lq8Wv1Rt6Yu0Io9Pa5Sd2Fg7Hj4Kl-Xc_Vb"


def hs_key(secret: str = SECRET) -> JwtKey:
    return JwtKey(kid=kid_for(secret.encode(), "hs"), alg="HS256", secret=Secret(secret))


def rsa_key() -> tuple[JwtKey, rsa.RSAPrivateKey]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return JwtKey(
        kid=kid_for(public, "rs"), alg="RS256", private_pem=Secret(pem.decode()), public_pem=public
    ), private


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    await s.start()
    yield s
    await s.close()


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "admin",
        "iat": now,
        "exp": now + 600,
        "jti": "j1",
        "iss": "authproxy",
        "aud": "authproxy",
        "roles": ["admin"],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def refused(tokens: JwtTokens, token: str) -> None:
    with pytest.raises(TokenError):
        await tokens.verify(token)


async def test_a_minted_token_verifies_with_its_claims(store: MemoryStore) -> None:
    tokens = JwtTokens(JwtConfig(keys=(hs_key(),)), store)
    token, minted = tokens.mint("admin", ["admin"], method="otp")
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256" and header["kid"] == hs_key().kid
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], audience="authproxy")
    assert set(payload) >= {"sub", "iat", "exp", "jti", "iss", "aud", "roles"}
    assert payload["exp"] - payload["iat"] == 24 * 3600  # JWT_EXPIRATION_HOURS=24 by default
    checked = await tokens.verify(token)
    assert (checked.sub, checked.roles, checked.jti, checked.method) == (
        "admin",
        ("admin",),
        minted.jti,
        "otp",
    )


async def test_tampering_is_refused(store: MemoryStore) -> None:
    key = hs_key()
    tokens = JwtTokens(JwtConfig(keys=(key,)), store)
    kid = {"kid": key.kid}
    good = jwt.encode(claims(), SECRET, algorithm="HS256", headers=kid)
    assert (await tokens.verify(good)).sub == "admin"
    # alg none (pyjwt would not sign it with a kid-less check; built by hand)
    none = (
        f"{b64(json.dumps({'alg': 'none', 'kid': key.kid}).encode())}.{b64(json.dumps(claims()).encode())}."
    )
    await refused(tokens, none)
    # a wrong key under the right kid
    await refused(tokens, jwt.encode(claims(), OLD_SECRET, algorithm="HS256", headers=kid))
    # another HMAC algorithm with the right secret: the key is pinned to HS256
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):  # pyjwt's own, when signing it
        hs512 = jwt.encode(claims(), SECRET, algorithm="HS512", headers=kid)
    await refused(tokens, hs512)
    # expired, wrong audience, wrong issuer
    await refused(
        tokens, jwt.encode(claims(exp=int(time.time()) - 1), SECRET, algorithm="HS256", headers=kid)
    )
    await refused(tokens, jwt.encode(claims(aud="other"), SECRET, algorithm="HS256", headers=kid))
    await refused(tokens, jwt.encode(claims(iss="evil"), SECRET, algorithm="HS256", headers=kid))
    # every required claim missing in turn
    for name in ("sub", "iat", "exp", "jti", "iss", "aud"):
        await refused(tokens, jwt.encode(claims(**{name: None}), SECRET, algorithm="HS256", headers=kid))
    # claims of the wrong type
    await refused(tokens, jwt.encode(claims(roles="admin"), SECRET, algorithm="HS256", headers=kid))
    await refused(tokens, jwt.encode(claims(sub=""), SECRET, algorithm="HS256", headers=kid))
    # an unknown kid, or none
    await refused(tokens, jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "hs-unknown"}))
    await refused(tokens, jwt.encode(claims(), SECRET, algorithm="HS256"))
    # a payload changed after signing
    head, _, sig = good.split(".")
    await refused(tokens, f"{head}.{b64(json.dumps(claims(sub='root')).encode())}.{sig}")
    # garbage
    for junk in ("a.b.c", "", "x" * 9000, good + "x"):
        await refused(tokens, junk)


async def test_hs_rs_confusion_is_refused(store: MemoryStore) -> None:
    rs, private = rsa_key()
    tokens = JwtTokens(JwtConfig(keys=(rs,)), store)
    token, _ = tokens.mint("admin", ["admin"])
    assert (await tokens.verify(token)).sub == "admin"
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    # The classic confusion: HMAC-sign with the *public* key as the secret, under the RSA key's kid.
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": rs.kid}).encode())
    body = b64(json.dumps(claims()).encode())
    import hashlib
    import hmac

    sig = b64(hmac.new(rs.public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest())
    await refused(tokens, f"{header}.{body}.{sig}")
    # RS256 signed by another RSA key, under this kid
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await refused(tokens, jwt.encode(claims(), other, algorithm="RS256", headers={"kid": rs.kid}))
    # An HS-only configuration refuses an RS256 token under the HS kid
    hs_tokens = JwtTokens(JwtConfig(keys=(hs_key(),)), store)
    await refused(hs_tokens, jwt.encode(claims(), private, algorithm="RS256", headers={"kid": hs_key().kid}))
    assert tokens.jwks()["keys"][0]["kid"] == rs.kid and "d" not in tokens.jwks()["keys"][0]
    assert hs_tokens.jwks() == {"keys": []}


async def test_rotation_old_kid_still_verifies_new_one_signs(store: MemoryStore) -> None:
    old = JwtTokens(JwtConfig(keys=(hs_key(OLD_SECRET),)), store)
    old_token, _ = old.mint("admin")
    rotated = JwtTokens(JwtConfig(keys=(hs_key(), hs_key(OLD_SECRET))), store)
    assert (await rotated.verify(old_token)).sub == "admin"
    new_token, _ = rotated.mint("admin")
    assert jwt.get_unverified_header(new_token)["kid"] == hs_key().kid
    await refused(old, new_token)  # the old configuration does not know the new kid


async def test_expiry_on_the_controlled_clock_and_revocation(store: MemoryStore) -> None:
    clock = OffsetClock()
    tokens = JwtTokens(JwtConfig(keys=(hs_key(),), expiration=3600), store, clock=clock)
    tokens.start()
    token, minted = tokens.mint("admin")
    assert (await tokens.verify(token)).jti == minted.jti
    clock.advance(3601)
    await refused(tokens, token)
    clock.advance(-3601)
    assert (await tokens.verify(token)).jti == minted.jti  # cached now
    await tokens.revoke(minted)
    await refused(tokens, token)
    fresh = JwtTokens(JwtConfig(keys=(hs_key(),)), store)  # another process: from the store
    await refused(fresh, token)


def test_secret_rules() -> None:
    assert secret_problem("short") is not None
    assert "placeholder" in (secret_problem("your-jwt-secret-goes-here-0123456789abc") or "")
    assert "placeholder" in (secret_problem("a" * 40) or "")
    assert secret_problem(SECRET) is None


def test_asymmetric_keys_from_files(tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "ed.pem"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    env = {
        "UPSTREAM_URL": "http://dns:5380",
        "UPSTREAM_TYPE": "technitium",
        "TRUST_PROXY": "true",
        "JWT_ALGORITHM": "EdDSA",
        "JWT_PRIVATE_KEY_FILE": str(path),
        "JWT_SECRET": SECRET,
    }
    config = load_config(env)
    assert [k.alg for k in config.jwt.keys] == ["EdDSA", "HS256"]
    with pytest.raises(ConfigError, match="JWT_PRIVATE_KEY_FILE: not an unencrypted PEM RS256"):
        load_config({**env, "JWT_ALGORITHM": "RS256"})
    with pytest.raises(ConfigError, match="JWT_ALGORITHM: must be HS256, RS256 or EdDSA"):
        load_config({**env, "JWT_ALGORITHM": "none"})
