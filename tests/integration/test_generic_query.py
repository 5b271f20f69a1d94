"""A generic site whose credential rides in the query, in front of an upstream that reflects its own URL.

Upstreams echo the request URL into redirects, Content-Location, Refresh, Link and the page itself, and
re-encode it as they like (`+` as `%2B` or `%2b`, `/` as `%2F`): the injected credential must come
back to the browser in none of them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import web
from yarl import URL

from tests.fakes.server import serving
from tests.support.gateway import SECRET, Gateway, GatewayClient, MakeGateway

SID = "Zm9v+YmFy/c2lk=="   # base64 with every character a URL encoder touches


@pytest.fixture
async def reflector() -> AsyncIterator[str]:
    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("password") != "right":
            return web.json_response({"error": "no"}, status=401)
        return web.json_response({"sid": SID})

    async def reflect(request: web.Request) -> web.StreamResponse:
        if request.query.get("sid") != SID:
            return web.json_response({"error": "unauthorized"}, status=401)
        url = str(request.url)
        reencoded = str(URL(str(request.url.with_query(request.query))))  # aiohttp's own re-encoding
        lower = url.replace("%2B", "%2b").replace("%2F", "%2f")
        if request.path == "/go":
            raise web.HTTPFound(reencoded)
        page = (f'<a href="{url}">self</a> <a href="{lower}">lower</a> <form action="{reencoded}"></form> '
                f"<p>{request.query['sid']}</p>")
        resp = web.Response(text=page, content_type="text/html", headers={
            "Content-Location": lower, "Refresh": f"30; url={reencoded}", "Link": f"<{url}>; rel=canonical",
            "X-Echo": json.dumps(dict(request.query))})
        resp.enable_compression()   # gzip when the request accepts it, as most web servers do
        return resp

    async def form(request: web.Request) -> web.Response:
        if request.query.get("sid") != SID:
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"body": (await request.read()).decode("latin-1")})

    app = web.Application(client_max_size=8 << 20)
    app.router.add_post("/login", login)
    app.router.add_post("/form", form)
    app.router.add_get("/{tail:.*}", reflect)
    async with serving(app) as url:
        yield url


async def _client(make_gateway: MakeGateway, reflector: str, client_for: Callable[[Gateway], GatewayClient],
                  tmp_path: Path) -> GatewayClient:
    config = tmp_path / "authproxy.toml"
    config.write_text(f"""
[[sites]]
name = "reflect"
type = "generic"
upstream_url = "{reflector}"
[sites.options.login]
path = "/login"
encoding = "json"
[sites.options.credential]
from = "json"
pointer = "/sid"
[sites.options.inject]
as = "query"
name = "sid"
""", encoding="utf-8")
    client = client_for(
        await make_gateway(
            {"TRUST_PROXY": "true", "SESSION_SECRET": SECRET, "ACCESS_LOG": "false"}, config_file=config
        )
    )
    assert (await client.login("anyone", "right")).status == 200
    return client


async def test_a_query_credential_never_comes_back_in_any_spelling(
        make_gateway: MakeGateway, reflector: str, client_for: Callable[[Gateway], GatewayClient],
        tmp_path: Path) -> None:
    client = await _client(make_gateway, reflector, client_for, tmp_path)
    spellings = {SID, quote(SID, safe=""), quote(SID, safe="").lower(), quote(SID, safe="/"),
                 quote(SID, safe="").replace("%2F", "%2f")}
    for path in ("/page?x=1", "/go?x=1", "/page"):
        resp = await client.request("GET", path, headers={"Accept-Encoding": "gzip"})
        body = await resp.text()
        assert resp.status in (200, 302), (path, resp.status, body)
        for spelled in spellings:
            assert spelled not in body, (path, spelled)
            for name, value in resp.headers.items():
                assert spelled not in value and spelled.lower() not in value.lower(), (path, name, value)
        if resp.status == 302:
            assert "x=1" in resp.headers["Location"]   # the rest of the redirect survives
        else:
            assert "self</a>" in body


async def test_the_credentials_name_leaves_form_bodies_of_any_size(
        make_gateway: MakeGateway, reflector: str, client_for: Callable[[Gateway], GatewayClient],
        tmp_path: Path) -> None:
    """`inject.as = "query"` names `sid`: a client's `sid` field goes from urlencoded bodies, small or
    streamed, and a multipart part of that name is refused."""
    client = await _client(make_gateway, reflector, client_for, tmp_path)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for filler in (b"", b"x" * (2 << 20)):
        body = b"a=" + filler + b"&sid=forged&SID=again&b=2"
        resp = await client.request("POST", "/form", data=body, headers=form)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["body"] == "a=" + filler.decode() + "&b=2"
    multipart = b'--b0\r\nContent-Disposition: form-data; name="Sid"\r\n\r\nforged\r\n--b0--\r\n'
    resp = await client.request("POST", "/form", data=multipart,
                                headers={"Content-Type": "multipart/form-data; boundary=b0"})
    assert resp.status == 400 and (await resp.json())["error"] == "credential_field"
