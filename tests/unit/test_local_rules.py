"""Local accounts, pure parts: configuration of local sites, the role a request needs, JSON-RPC method
names, password rules and hashes (argon2id written, bcrypt read)."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest

from authproxy.accounts import passwords, roles
from authproxy.accounts.model import Account, at_least
from authproxy.config.loader import load_config
from authproxy.config.schema import LocalRules
from authproxy.errors import ConfigError

BASE = {"UPSTREAM_URL": "http://127.0.0.1:9", "UPSTREAM_TYPE": "technitium", "TRUST_PROXY": "true"}


def problems(env: dict[str, str], config_file: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(env, config_file)
    return "\n".join(info.value.problems)


def test_auth_mode_local_makes_every_site_local_with_env_rules() -> None:
    config = load_config({**BASE, "AUTH_MODE": "local", "LOCAL_READ_RPC_METHODS": "getZones, listRecords",
                          "LOCAL_KEY_HEADER": "X-DNS-Key-Name",
                          "LOCAL_KEY_INJECT": "x-dns-key-name=name,X-DNS-Key-Value=secret",
                          "LOCAL_ZONE_PARAM": "zone", "LOCAL_ZONE_KEYS": "Example.COM.=tsig-a"})
    assert config.session_mode and config.local_accounts
    rules = config.sites[0].local
    assert config.sites[0].auth == "local"
    assert rules.read_rpc_methods == ("getZones", "listRecords")
    assert rules.key_header == "x-dns-key-name"
    assert rules.inject == (("x-dns-key-name", "name"), ("x-dns-key-value", "secret"))
    assert rules.zone_keys == (("example.com", "tsig-a"),)
    assert set(rules.strip_headers) == {"x-dns-key-name", "x-dns-key-value"}


def test_a_toml_site_can_be_local_beside_a_passthrough_site(tmp_path: Path) -> None:
    path = tmp_path / "authproxy.toml"
    path.write_text('''
[server]
trust_proxy = true
[[sites]]
name = "dns"
type = "technitium"
upstream_url = "http://127.0.0.1:5380"
hosts = ["dns.example.com"]
[[sites]]
name = "tsig"
type = "technitium"
upstream_url = "http://127.0.0.1:8053"
hosts = ["tsig.example.com"]
auth = "local"
[sites.local]
read_paths = ["/api/search"]
key_header = "x-dns-key-name"
inject = { "x-dns-key-value" = "secret" }
zone_keys = { "example.org" = "tsig-org" }
''')
    config = load_config({}, path)
    assert config.auth_mode == "session" and config.local_accounts
    dns, tsig = config.sites
    assert not dns.local_accounts and dns.local == LocalRules()
    assert tsig.local_accounts and tsig.local.read_paths == ("/api/search",)
    assert tsig.local.zone_keys == (("example.org", "tsig-org"),)


def test_local_configuration_problems_name_the_variable_and_the_fix(tmp_path: Path) -> None:
    text = problems({**BASE, "AUTH_MODE": "local", "LOCAL_KEY_HEADER": "x-key",
                     "AUTHPROXY_ADMIN_PASSWORD": "short"})
    assert "LOCAL_KEY_INJECT" in text and "never injected" in text
    assert "AUTHPROXY_ADMIN_PASSWORD: shorter than 12" in text
    text = problems({**BASE, "UPSTREAM_TYPE": "plain"})
    assert "type plain has no accounts of its own" in text and "AUTH_MODE=local" in text
    text = problems({**BASE, "AUTH_MODE": "local", "UPSTREAM_TYPE": "plain",
                     "LOCAL_KEY_INJECT": "x-key=password,broken"})
    assert "'x-key' takes 'password'" in text and "name=value pairs" in text
    path = tmp_path / "bad.toml"
    path.write_text('auth_mode = "none"\n[[sites]]\nname = "a"\ntype = "technitium"\n'
                    'upstream_url = "http://127.0.0.1:1"\nservice_token = "t"\nauth = "local"\n'
                    '[sites.local]\nbogus = 1\n'
                    '[[sites]]\nname = "b"\ntype = "technitium"\nupstream_url = "http://127.0.0.1:2"\n'
                    'service_token = "t"\nauth = "ldap"\npath_prefix = "/b/"\n')
    text = problems({}, path)
    assert "sites[0].local: unknown option 'bogus'" in text
    assert "local accounts sign in with a session; AUTH_MODE=none has none" in text
    assert "sites['b'].auth: must be one of" in text


RULES = LocalRules(read_paths=("/api/search",), read_rpc_methods=("getZones",))


@pytest.mark.parametrize(("method", "path", "rpc", "needed"), [
    ("GET", "/x", None, "viewer"), ("HEAD", "/x", None, "viewer"), ("OPTIONS", "/x", None, "viewer"),
    ("POST", "/x", None, "editor"), ("DELETE", "/x", None, "editor"), ("PATCH", "/x", None, "editor"),
    ("POST", "/api/search", None, "viewer"), ("POST", "/api/search/x", None, "viewer"),
    ("POST", "/api/searchx", None, "editor"), ("POST", "/rpc", ["getZones"], "viewer"),
    ("POST", "/rpc", ["getZones", "setZone"], "editor"), ("POST", "/rpc", [], "editor"),
    ("", "/x", None, "editor"),       # an unknown method (forward auth without the method header)
])
def test_the_role_a_request_needs(method: str, path: str, rpc: list[str] | None, needed: str) -> None:
    assert roles.needed_role(RULES, method, path, rpc) == needed


def test_role_order_and_rpc_parsing() -> None:
    assert at_least("admin", "editor") and at_least("editor", "viewer") and not at_least("viewer", "editor")
    assert not at_least("", "viewer") and not at_least("root", "viewer") and not at_least("admin", "root")
    assert roles.rpc_methods(b'{"jsonrpc":"2.0","method":"getZones","id":1}') == ["getZones"]
    assert roles.rpc_methods(b'[{"method":"a"},{"method":"b"}]') == ["a", "b"]
    for bad in (b"", b"nope", b'{"method": 1}', b'[{"method":"a"}, 3]', b"[" * 50_000, b'"x"'):
        assert roles.rpc_methods(bad) is None


def test_password_rules_and_hashes() -> None:
    assert passwords.problem("short", "alice") is not None
    assert passwords.problem("Password1234", "alice") is not None          # common, any case
    assert passwords.problem("ALICE-example", "alice-example") is not None  # the user name
    assert passwords.problem("aaaaaaaaaaaaaaab", "alice") is not None        # too few characters
    assert passwords.problem("a sound passphrase", "alice") is None
    stored = passwords.hash_password("a sound passphrase")
    assert stored.startswith("$argon2id$") and not passwords.needs_upgrade(stored)
    assert passwords.verify(stored, "a sound passphrase") and not passwords.verify(stored, "another one!")
    legacy = bcrypt.hashpw(b"legacy password", bcrypt.gensalt(12)).decode()
    assert passwords.verify(legacy, "legacy password") and passwords.needs_upgrade(legacy)
    assert not passwords.verify("plain text", "plain text") and not passwords.verify("$2b$broken", "x")


def test_imported_fields_and_aliases() -> None:
    account = Account.from_dict({"id": "1", "username": "dave", "password": "$2b$12$x", "role": "superuser",
                                 "allowedResources": ["k1"], "createdAt": "2024-05-01T10:00:00Z",
                                 "lastLoginAt": 1714557600000})
    assert account.role == "viewer"                       # an unknown role grants nothing more
    assert account.allowed_key_ids == ["k1"] and account.password_hash == "$2b$12$x"
    assert account.created_at == 1714557600.0 and account.last_login_at == 1714557600.0
    assert "passwordHash" not in account.public() and "totp" not in account.public()
