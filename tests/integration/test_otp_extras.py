"""The rest of AUTH_MODE=otp and JWTs: the legacy aliases, the login page without script, tokens for
people signed in another way (mint, list, revoke; bounds), and EdDSA/RS256 keys published as a JWKS."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.fakes.technitium import FakeTechnitium
from tests.fakes.webhook import WebhookReceiver
from tests.integration.test_otp import JWT_SECRET, REQUEST, VERIFY, otp_env, post
from tests.support.gateway import Gateway, GatewayClient, MakeGateway, gateway_env
from tests.support.technitium import ALICE

TOKENS = "/_authproxy/api/auth/tokens"
JWKS = "/_authproxy/.well-known/jwks.json"
BAD_TOKEN = {"error": "invalid_token", "message": "Invalid or expired token"}
BROWSER = {"Accept": "text/html"}


async def test_legacy_paths_serve_the_old_scripts_unchanged(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    c = client_for(
        await make_gateway(otp_env(technitium, webhook_receiver.discord_url, OTP_LEGACY_PATHS="true"))
    )
    assert await post(c, "/api/v1/auth/login") == (200, {"message": "OTP sent to Discord webhook"})
    status, body = await post(c, "/api/v1/auth/verify", {"otp": webhook_receiver.code()})
    assert status == 200 and set(body) == {"token", "expires_at"}
    c.cookie = None
    resp = await c.request("GET", "/api/zones/list", headers={"Authorization": f"Bearer {body['token']}"})
    assert resp.status == 200
    assert not technitium.requests_to("/api/v1/auth/login")  # answered by authproxy, not the upstream


async def test_without_the_flag_the_legacy_paths_are_the_upstreams(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    c = client_for(await make_gateway(otp_env(technitium, webhook_receiver.discord_url)))
    resp = await c.request("POST", "/api/v1/auth/login")
    assert resp.status == 401 and (await resp.json())["error"] == "missing_authorization"
    assert webhook_receiver.posts == []


async def test_the_login_page_sends_a_code_and_takes_it_without_script(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    c = client_for(await make_gateway(otp_env(technitium, webhook_receiver.discord_url)))
    page = await c.request("GET", "/_authproxy/login?rd=/api/zones/list", headers={"Accept": "text/html"})
    text = await page.text()
    assert page.status == 200 and "Send me a code" in text and 'name="otp"' in text
    from authproxy.web import otp_page, portal

    assert page.headers["Content-Security-Policy"] == portal.CSP == otp_page.CSP   # one policy, two pages
    form = {"Origin": c.origin, "Sec-Fetch-Site": "same-origin", "Accept": "text/html"}
    resp = await c.request("POST", REQUEST, data={"username": "admin", "rd": "/api/zones/list"}, headers=form)
    text = await resp.text()
    assert resp.status == 200 and "OTP sent to Discord webhook. Enter the code below." in text
    assert re.search(r'name="username" value="admin"', text)
    bad = await c.request("POST", VERIFY, data={"otp": "abcdef", "username": "admin"}, headers=form)
    assert bad.status == 401 and "Invalid or expired OTP" in await bad.text()
    resp = await c.request(
        "POST",
        VERIFY,
        data={"otp": webhook_receiver.code(), "username": "admin", "rd": "/api/zones/list"},
        headers=form,
    )
    assert resp.status == 303 and resp.headers["Location"] == "/api/zones/list" and c.cookie
    assert (await c.request("GET", "/api/zones/list")).status == 200
    evil = await c.request(
        "POST",
        REQUEST,
        data={"username": "admin"},
        headers={**form, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert evil.status == 403 and len(webhook_receiver.posts) == 1


async def test_a_person_signed_in_upstream_mints_lists_and_revokes_tokens(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    gw = await make_gateway(gateway_env(technitium.url, JWT_SECRET=JWT_SECRET, JWT_MAX_EXPIRATION_HOURS="48"))
    c = client_for(gw)
    assert (await c.request("POST", TOKENS, json={"name": "x", "expiresIn": 3600})).status == 401
    assert (await c.login(*ALICE)).status == 200
    resp = await c.request("POST", TOKENS, json={"name": "backup script", "expiresIn": "12h"})
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    claims = jwt.decode(made["token"], JWT_SECRET, algorithms=["HS256"], audience="authproxy")
    assert (
        claims["sub"] == "alice"
        and claims["exp"] - claims["iat"] == 12 * 3600
        and "service" not in claims["roles"]
    )
    assert claims["amr"] == "passthrough"
    for too_long in (49 * 3600, "3d", "soon", 10, True):
        resp = await c.request("POST", TOKENS, json={"name": "x", "expiresIn": too_long})
        assert resp.status == 400, too_long
    listed = await (await c.request("GET", TOKENS)).json()
    assert [(t["jti"], t["name"]) for t in listed["tokens"]] == [(made["jti"], "backup script")]
    assert made["token"] not in str(listed)
    # The token carries a sealed copy of the person's own upstream sign-in (tests/integration/
    # test_upstream_tokens.py): the upstream sees that, never the JWT.
    script = client_for(gw)
    resp = await script.request(
        "GET", "/api/zones/list", headers={"Authorization": f"Bearer {made['token']}"}
    )
    assert resp.status == 200
    assert made["token"] not in str(technitium.requests_to("/api/zones/list")[-1].headers)
    # A token does not mint, list or revoke (the session does).
    resp = await script.request("GET", TOKENS, headers={"Authorization": f"Bearer {made['token']}"})
    assert resp.status == 401
    assert (await c.request("DELETE", f"{TOKENS}/unknown")).status == 404
    resp = await c.request("DELETE", f"{TOKENS}/{made['jti']}")
    assert resp.status == 200 and (await resp.json())["revoked"] is True
    resp = await script.request(
        "GET", "/api/zones/list", headers={"Authorization": f"Bearer {made['token']}"}
    )
    assert (resp.status, await resp.json()) == (401, BAD_TOKEN)
    assert (await (await c.request("GET", TOKENS)).json())["tokens"] == []


async def test_the_owner_of_an_otp_box_lists_and_revokes_its_tokens(
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    c = client_for(await make_gateway(otp_env(technitium, webhook_receiver.discord_url)))
    await post(c, REQUEST)
    _, first = await post(c, VERIFY, {"otp": webhook_receiver.code()})
    made = await (await c.request("POST", TOKENS, json={"name": "cron", "expiresIn": 3600})).json()
    tokens = (await (await c.request("GET", TOKENS)).json())["tokens"]
    assert {t["name"] for t in tokens} == {"", "cron"} and all(t["user"] == "admin" for t in tokens)
    script = client_for(await make_gateway(otp_env(technitium, webhook_receiver.discord_url)))
    resp = await script.request(
        "GET", "/api/zones/list", headers={"Authorization": f"Bearer {made['token']}"}
    )
    assert resp.status == 200  # otp: a token gets the service credential
    jti = jwt.decode(first["token"], options={"verify_signature": False})["jti"]
    assert (await c.request("DELETE", f"{TOKENS}/{jti}")).status == 200
    resp = await script.request(
        "GET", "/api/zones/list", headers={"Authorization": f"Bearer {first['token']}"}
    )
    assert resp.status == 401


def _pem(private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey, path: Path) -> str:
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(path)


@pytest.mark.parametrize("alg", ["EdDSA", "RS256"])
async def test_asymmetric_tokens_verify_with_the_published_jwks(
    alg: str,
    tmp_path: Path,
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    private = (
        ed25519.Ed25519PrivateKey.generate() if alg == "EdDSA" else rsa.generate_private_key(65537, 2048)
    )
    env = otp_env(
        technitium,
        webhook_receiver.discord_url,
        JWT_ALGORITHM=alg,
        JWT_PRIVATE_KEY_FILE=_pem(private, tmp_path / "key.pem"),
    )
    c = client_for(await make_gateway(env))
    await post(c, REQUEST)
    _, body = await post(c, VERIFY, {"otp": webhook_receiver.code()})
    resp = await c.request("GET", JWKS)
    jwks = await resp.json()
    assert resp.status == 200 and [k["alg"] for k in jwks["keys"]] == [
        alg
    ]  # the HS secret is never published
    assert "d" not in jwks["keys"][0]
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == alg and header["kid"] == jwks["keys"][0]["kid"]
    # Another service verifies the token with nothing but the JWKS.
    key = jwt.PyJWK(jwks["keys"][0])
    claims = jwt.decode(body["token"], key.key, algorithms=[alg], audience="authproxy", issuer="authproxy")
    assert claims["sub"] == "admin"
    c.cookie = None
    resp = await c.request("GET", "/api/zones/list", headers={"Authorization": f"Bearer {body['token']}"})
    assert resp.status == 200
    # An HS256 token made with the *public* key as its secret, under the published kid: refused.
    public = jwks["keys"][0]
    forged = jwt.encode({**claims}, JWT_SECRET, algorithm="HS256", headers={"kid": public["kid"]})
    resp = await c.request("GET", "/api/zones/list", headers={"Authorization": f"Bearer {forged}"})
    assert (resp.status, await resp.json()) == (401, BAD_TOKEN)


async def test_auth_otp_at_one_site_beside_a_site_with_its_own_sign_in(
    tmp_path: Path,
    make_gateway: MakeGateway,
    technitium: FakeTechnitium,
    technitium_v14: FakeTechnitium,
    webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient],
) -> None:
    service = technitium_v14.create_session(ALICE[0], type="ApiToken", token_name="backup")
    config = tmp_path / "authproxy.toml"
    config.write_text(
        'auth_mode = "session"\n'
        f'[[sites]]\nname = "dns"\ntype = "technitium"\nupstream_url = "{technitium.url}"\n'
        'hosts = ["dns.test"]\n'
        f'[[sites]]\nname = "backup"\ntype = "technitium"\nupstream_url = "{technitium_v14.url}"\n'
        f'hosts = ["backup.test"]\nauth = "otp"\nservice_token = "{service}"\n',
        encoding="utf-8",
    )
    env = {
        "TRUST_PROXY": "true",
        "SESSION_SECRET": "s" * 48,
        "ACCESS_LOG": "false",
        "JWT_SECRET": JWT_SECRET,
        "DISCORD_WEBHOOK_URL": webhook_receiver.discord_url,
    }
    gw = await make_gateway(env, config_file=config)
    backup, dns = {"Host": "backup.test"}, {"Host": "dns.test"}
    page = await (
        await client_for(gw).request("GET", "/_authproxy/login", headers={**backup, **BROWSER})
    ).text()
    assert "Send me a code" in page
    page = await (await client_for(gw).request("GET", "/_authproxy/login", headers={**dns, **BROWSER})).text()
    assert 'name="password"' in page and "Send me a code" not in page

    c = client_for(gw)
    assert (await c.request("POST", REQUEST, headers=backup)).status == 200
    resp = await c.request("POST", VERIFY, headers=backup, json={"otp": webhook_receiver.code()})
    token = (await resp.json())["token"]
    assert (await c.request("GET", "/api/zones/list", headers=backup)).status == 200  # the cookie
    assert technitium_v14.requests_to("/api/zones/list")[-1].query.get("token") == service
    # The code's session and token open the backup site only: never the other site's upstream.
    resp = await c.request("GET", "/api/zones/list", headers=dns)
    assert resp.status == 401 and not technitium.requests_to("/api/zones/list")
    script = client_for(gw)
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await script.request("GET", "/api/zones/list", headers={**backup, **bearer})).status == 200
    resp = await script.request("GET", "/api/zones/list", headers={**dns, **bearer})
    assert resp.status == 403 and (await resp.json())["error"] == "token_not_served"
    # A person signed in at the other site gets nothing of the backup site's service credential.
    alice = client_for(gw)
    resp = await alice.request(
        "POST",
        "/_authproxy/api/auth/login",
        headers=dns,
        json={"username": ALICE[0], "password": ALICE[1], "site": "dns"},
    )
    assert resp.status == 200
    before = len(technitium_v14.requests_to("/api/zones/list"))
    assert (await alice.request("GET", "/api/zones/list", headers=backup)).status == 401
    assert len(technitium_v14.requests_to("/api/zones/list")) == before


def test_site_auth_is_checked(tmp_path: Path) -> None:
    from authproxy.config.loader import load_config
    from authproxy.errors import ConfigError

    def problems(mode: str, auth: str, token: str = 'service_token = "t"\n') -> str:
        path = tmp_path / "c.toml"
        path.write_text(f'auth_mode = "{mode}"\n[[sites]]\nname = "b"\ntype = "technitium"\n'
                        f'upstream_url = "http://127.0.0.1:1"\nauth = "{auth}"\n{token}', encoding="utf-8")
        env = {"TRUST_PROXY": "true", "JWT_SECRET": JWT_SECRET, "DISCORD_WEBHOOK_URL": "https://x.test/h"}
        with pytest.raises(ConfigError) as caught:
            load_config(env, path)
        return str(caught.value)

    assert ("sites['b'].auth: must be one of '', 'otp', 'local', but it is 'magic'"
            in problems("session", "magic"))
    assert "AUTH_MODE=none does not do" in problems("none", "otp")
    assert "UPSTREAM_SERVICE_TOKEN (site 'b'): AUTH_MODE=otp sends" in problems("session", "otp", token="")


async def test_code_sign_ins_are_counted_in_the_metrics(
    make_gateway: MakeGateway, technitium: FakeTechnitium, webhook_receiver: WebhookReceiver,
    client_for: Callable[[Gateway], GatewayClient], http_client: aiohttp.ClientSession,
) -> None:
    from tests.integration.test_metrics import scrape, value

    gw = await make_gateway(otp_env(technitium, webhook_receiver.discord_url, FORWARD_AUTH_PORT="0"))
    c = client_for(gw)
    await post(c, REQUEST)
    assert (await post(c, VERIFY, {"otp": "000000"}))[0] == 401
    assert (await post(c, VERIFY, {"otp": webhook_receiver.code()}))[0] == 200
    samples = await scrape(http_client, gw.forward_auth_url)
    assert value(samples, "authproxy_sign_ins_total", site="technitium", outcome="failure") == 1
    assert value(samples, "authproxy_sign_ins_total", site="technitium", outcome="success") == 1
