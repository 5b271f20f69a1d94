"""Roles and keys of local accounts, through the real gateway in front of the echo upstream.

The role x request matrix (REST methods, a read path, JSON-RPC reads and writes), and upstream keys:
the echo must see the key's real secret and never the client's, and every way of naming a second key
(header case, duplicate headers, percent-encoding, a key in the query and another in a header, a zone
map) must either pick the one allowed key or be refused with 403 key_access_denied.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from authproxy.accounts.model import at_least
from tests.fakes.echo import EchoUpstream, ReceivedRequest
from tests.integration.conftest import Audit
from tests.integration.local_support import API, Local, body, start_local
from tests.support.gateway import Gateway, GatewayClient, MakeGateway

RULES = {
    "LOCAL_READ_PATHS": "/api/search",
    "LOCAL_READ_RPC_METHODS": "getZones,listRecords",
    "LOCAL_KEY_HEADER": "x-dns-key-name",
    "LOCAL_KEY_PARAM": "key",
    "LOCAL_ZONE_PARAM": "zone",
    "LOCAL_ZONE_KEYS": "example.com=tsig-a,other.org=tsig-b",
    "LOCAL_KEY_INJECT": "x-dns-key-name=name,x-dns-key-value=secret,x-dns-algorithm=algorithm",
}
SECRET_A, SECRET_B = "c2VjcmV0LWEtdmFsdWU=", "c2VjcmV0LWItdmFsdWU="


@pytest.fixture
async def local(make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
                echo_upstream: EchoUpstream) -> Local:
    return await start_local(make_gateway, client_for, echo_upstream, **RULES)


def rpc(*methods: str) -> bytes:
    calls = [{"jsonrpc": "2.0", "id": i, "method": m} for i, m in enumerate(methods)]
    return json.dumps(calls[0] if len(calls) == 1 else calls).encode()


# (method, path, body, needed role)
MATRIX: list[tuple[str, str, bytes | None, str]] = [
    ("GET", "/api/zones", None, "viewer"),
    ("HEAD", "/api/zones", None, "viewer"),
    ("OPTIONS", "/api/zones", None, "viewer"),
    ("POST", "/api/zones", b"a=1", "editor"),
    ("PUT", "/api/zones/x", b"{}", "editor"),
    ("DELETE", "/api/zones/x", None, "editor"),
    ("POST", "/api/search", b"{}", "viewer"),          # a read path, whatever the method
    ("POST", "/api/search/deep", b"{}", "viewer"),
    ("POST", "/api/searchable", b"{}", "editor"),      # a prefix of a segment is not the path
    ("POST", "/rpc", rpc("getZones"), "viewer"),
    ("POST", "/rpc", rpc("getZones", "listRecords"), "viewer"),
    ("POST", "/rpc", rpc("deleteZone"), "editor"),
    ("POST", "/rpc", rpc("getZones", "deleteZone"), "editor"),   # a batch with one write
    ("POST", "/rpc", b'{"method": "getZones"', "editor"),        # not JSON: not a read
    ("POST", "/rpc", b"[]", "editor"),
]


async def test_role_by_method_matrix_rest_and_json_rpc(local: Local, echo_upstream: EchoUpstream,
                                                       audit: Audit) -> None:
    people = {"viewer": (await local.user("vic", "viewer"))[1],
              "editor": (await local.user("eddie", "editor"))[1], "admin": local.admin}
    for role, person in people.items():
        for method, path, payload, needed in MATRIX:
            before = len(echo_upstream.requests)
            headers = {"Content-Type": "application/x-www-form-urlencoded" if payload == b"a=1"
                       else "application/json"} if payload is not None else {}
            resp = await person.request(method, path, data=payload, headers=headers)
            where = f"{role} {method} {path} {payload!r}"
            if at_least(role, needed):
                assert resp.status == 200, where
                assert len(echo_upstream.requests) == before + 1, where
                if payload is not None and method != "HEAD":
                    assert echo_upstream.last.body_length == len(payload), where   # the body went on whole
            else:
                data = await body(resp)
                assert resp.status == 403 and data["error"] == "insufficient_permissions", where
                assert data["requiredRole"] == needed and needed in data["message"], where
                assert len(echo_upstream.requests) == before, where
    refused = audit.lines("access")
    assert refused and all(line["outcome"] == "insufficient_permissions" for line in refused)


async def _keys(local: Local) -> tuple[str, str]:
    ids = []
    for name, secret in (("tsig-a", SECRET_A), ("tsig-b", SECRET_B)):
        resp = await local.admin.request("POST", f"{API}/keys", json={"name": name, "secret": secret,
                                                                      "algorithm": "hmac-sha256"})
        made = await body(resp)
        assert resp.status == 201 and "secret" not in made["key"] and made["key"]["name"] == name
        ids.append(made["key"]["id"])
    return ids[0], ids[1]


async def send(person: GatewayClient, path: str, pairs: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
    """A request with exactly these headers (repeated names kept), as the person."""
    headers: CIMultiDict[str] = CIMultiDict(person._headers(None))
    for name, value in pairs:
        headers.add(name, value)
    resp = await person.http.request("GET", person.base + path, headers=headers, allow_redirects=False)
    return resp.status, await body(resp)


def seen(answer: dict[str, Any]) -> ReceivedRequest:
    return ReceivedRequest.from_json(answer)


async def test_the_echo_sees_the_real_key_never_the_clients(local: Local, echo_upstream: EchoUpstream,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key_a, _ = await _keys(local)
    _, alice = await local.user("alice", "editor", allowedKeyIds=[key_a])
    status, answer = await send(alice, "/update", [("x-dns-key-name", "tsig-a"),
                                                   ("X-DNS-Key-Value", "the-client-says-this"),
                                                   ("x-dns-algorithm", "hmac-md5")])
    assert status == 200
    got = seen(answer)
    assert got.header_values("x-dns-key-value") == [SECRET_A]
    assert got.header_values("x-dns-algorithm") == ["hmac-sha256"]
    assert got.header_values("x-dns-key-name") == ["tsig-a"]
    # No key named: whatever key material the client sent is stripped, nothing is injected.
    status, answer = await send(alice, "/update", [("x-dns-key-value", "the-client-says-this"),
                                                   ("x-dns-algorithm", "hmac-md5")])
    got = seen(answer)
    assert status == 200 and got.header("x-dns-key-value") is None and got.header("x-dns-algorithm") is None
    # The key list never shows a secret, and no log line holds one.
    listed = await body(await local.admin.request("GET", f"{API}/keys"))
    assert [k["name"] for k in listed["keys"]] == ["tsig-a", "tsig-b"]
    assert SECRET_A not in json.dumps(listed)
    for record in caplog.records:
        text = record.getMessage() + json.dumps(getattr(record, "fields", {}), default=str)
        assert SECRET_A not in text and SECRET_B not in text


async def test_key_evasion_attempts_are_refused(local: Local, echo_upstream: EchoUpstream,
                                                audit: Audit) -> None:
    key_a, _ = await _keys(local)
    _, alice = await local.user("alice", "editor", allowedKeyIds=[key_a])
    refused: list[tuple[str, list[tuple[str, str]]]] = [
        ("/update", [("x-dns-key-name", "tsig-b")]),                                  # not hers
        ("/update", [("X-DNS-KEY-NAME", "tsig-b")]),                                  # header case
        ("/update", [("x-dns-key-name", "TSIG-A")]),                                  # names are exact
        ("/update", [("x-dns-key-name", "tsig-a"), ("x-dns-key-name", "tsig-b")]),    # duplicate headers
        ("/update", [("x-dns-key-name", "tsig-a, tsig-b")]),                          # a list in one header
        ("/update?key=tsig%2Db", []),                                                 # encoded, in the query
        ("/update?key=tsig-a&key=tsig-b", []),                                        # twice in the query
        ("/update?key=tsig-b", [("x-dns-key-name", "tsig-a")]),                       # query and header
        ("/update?zone=www.other.org", []),                                           # the zone map
        ("/update?zone=example.com&key=tsig-b", []),                                  # zone and key disagree
        (f"/update?key={key_a}x", []),                                                # an id that is not one
    ]
    before = len(echo_upstream.requests)
    for path, pairs in refused:
        status, answer = await send(alice, path, pairs)
        assert status == 403 and answer["error"] == "key_access_denied", (path, pairs, answer)
    assert len(echo_upstream.requests) == before
    named = await send(alice, "/update", [("x-dns-key-name", "tsig-b")])
    assert named[1]["key"] == "tsig-b" and "tsig-b" in named[1]["message"]
    allowed: list[tuple[str, list[tuple[str, str]]]] = [
        ("/update", [("x-dns-key-name", "tsig-a"), ("X-Dns-Key-Name", "tsig-a")]),   # the same, twice
        ("/update?key=tsig-a", [("x-dns-key-name", "tsig-a")]),
        (f"/update?key={key_a}", []),                                                 # by id
        ("/update?zone=www.Example.COM.", []),                                        # parent zone, any case
    ]
    for path, pairs in allowed:
        status, answer = await send(alice, path, pairs)
        assert status == 200, (path, pairs, answer)
        got = seen(answer)
        assert got.header_values("x-dns-key-value") == [SECRET_A], path
        assert "key=" not in got.query_string, path     # the client's key parameter does not go on
    assert any(line["outcome"] == "refused" and line["key"] == "tsig-b" and line["user"] == "alice"
               for line in audit.lines("key_use"))


async def test_admins_use_every_key_and_a_deleted_key_is_gone(local: Local,
                                                              echo_upstream: EchoUpstream) -> None:
    key_a, key_b = await _keys(local)
    status, answer = await send(local.admin, "/update", [("x-dns-key-name", "tsig-b")])
    assert status == 200 and seen(answer).header("x-dns-key-value") == SECRET_B
    assert (await local.admin.request("DELETE", f"{API}/keys/{key_b}")).status == 200
    assert (await local.admin.request("DELETE", f"{API}/keys/{key_b}")).status == 404
    status, answer = await send(local.admin, "/update", [("x-dns-key-name", "tsig-b")])
    assert status == 403 and answer["error"] == "key_access_denied"
    # A person's keys change: their sessions end (the new list applies from the next sign-in).
    made, bob = await local.user("bob", "viewer")
    resp = await local.admin.request("PATCH", f"{API}/users/{made['id']}", json={"allowedKeyIds": [key_a]})
    assert resp.status == 200 and (await body(resp))["sessionsEnded"] == 1
    assert (await bob.request("GET", "/x")).status in (302, 401)


async def test_a_viewer_opens_a_websocket_and_the_upgrade_carries_no_key(local: Local,
                                                                         echo_upstream: EchoUpstream) -> None:
    key_a, _ = await _keys(local)
    _, vic = await local.user("vic", "viewer", allowedKeyIds=[key_a])
    for extra, expected in (({}, None), ({"x-dns-key-name": "tsig-a"}, SECRET_A)):
        headers = vic._headers({"x-dns-key-value": "forged", **extra})
        ws = await vic.http.ws_connect(local.gw.url + "/ws", headers=headers)
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "hello"
        await ws.close()
        handshake = echo_upstream.last
        assert handshake.websocket and handshake.header_values("x-dns-key-value") == (
            [expected] if expected else [])
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await vic.http.ws_connect(local.gw.url + "/ws", headers=vic._headers({"x-dns-key-name": "tsig-b"}))
    assert refused.value.status == 403


async def test_a_plain_upstream_gets_its_one_key_for_every_signed_in_person(
        tmp_path: Path, make_gateway: MakeGateway, client_for: Callable[[Gateway], GatewayClient],
        echo_upstream: EchoUpstream) -> None:
    """type plain: no accounts upstream; whoever signs in with an authproxy account reaches it with the
    site's one key (here as X-Api-Key), never with a key of the client's choosing; nobody else does."""
    toml = tmp_path / "plain.toml"
    toml.write_text(f'''auth_mode = "local"
[[sites]]
name = "api"
type = "plain"
upstream_url = "{echo_upstream.url}"
service_token = "the-one-api-key-0123456789"
options = {{ header = "X-Api-Key", scheme = "" }}
''')
    local = await start_local(make_gateway, client_for, echo_upstream, config_file=toml)
    _, vic = await local.user("vic", "viewer", site="api")
    status, answer = await send(vic, "/api/things", [("X-Api-Key", "chosen-by-the-client")])
    assert status == 200
    assert seen(answer).header_values("X-Api-Key") == ["the-one-api-key-0123456789"]
    anonymous = client_for(local.gw)
    before = len(echo_upstream.requests)
    assert (await anonymous.request("GET", "/api/things")).status == 401
    assert (await anonymous.login("nobody", "no-password-123")).status == 401
    assert len(echo_upstream.requests) == before
