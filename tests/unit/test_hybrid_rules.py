"""Hybrid mode's pure parts: the background token's verdict, service API keys, and their configuration."""

from __future__ import annotations

import hashlib
import timeit
from typing import Any

import pytest

from authproxy.config.loader import load_config
from authproxy.config.schema import ServiceKey
from authproxy.errors import ConfigError
from authproxy.login.service import REFUSED, ApiKeys, ServiceClient, ServiceGate, new_key
from authproxy.upstreams.technitium_admin import candidate_names, judge, ptr_from, table_with

SECTIONS = (
    "Dashboard",
    "Zones",
    "Cache",
    "Allowed",
    "Blocked",
    "Apps",
    "DnsClient",
    "Settings",
    "DhcpServer",
    "Administration",
    "Logs",
)
EVERYONE_VIEWS = (
    "Dashboard",
    "Zones",
    "Cache",
    "Allowed",
    "Blocked",
    "Apps",
    "DnsClient",
    "DhcpServer",
    "Logs",
)


def perms(
    view: tuple[str, ...] = EVERYONE_VIEWS, modify: tuple[str, ...] = (), delete: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`info.permissions` as session/get writes it: every section, three flags each."""
    return {s: {"canView": s in view, "canModify": s in modify, "canDelete": s in delete} for s in SECTIONS}


def test_what_everyone_sees_by_default_plus_dns_client_is_safe() -> None:
    verdict = judge(perms())
    assert verdict.ok and verdict.validated and verdict.too_privileged == ()


def test_an_administrator_is_too_privileged_in_every_section() -> None:
    verdict = judge(perms(view=SECTIONS, modify=SECTIONS, delete=SECTIONS))
    assert not verdict.ok and verdict.validated
    assert verdict.too_privileged == tuple(sorted(SECTIONS))
    assert "Administration can modify and delete" in verdict.reason


def test_modify_anywhere_or_merely_seeing_administration_is_refused() -> None:
    zones = judge(perms(modify=("Zones",)))
    assert not zones.ok and zones.too_privileged == ("Zones",) and "Zones can modify" in zones.reason
    deleting = judge(perms(delete=("Logs",)))
    assert not deleting.ok and deleting.too_privileged == ("Logs",) and "Logs can delete" in deleting.reason
    admin_view = judge(perms(view=(*EVERYONE_VIEWS, "Administration")))
    assert not admin_view.ok and admin_view.too_privileged == ("Administration",)
    assert "Administration can view" in admin_view.reason


def test_a_token_that_cannot_view_dns_client_is_refused() -> None:
    verdict = judge(perms(view=tuple(s for s in EVERYONE_VIEWS if s != "DnsClient")))
    assert not verdict.ok and verdict.validated and verdict.too_privileged == ()
    assert "lacks DnsClient: View" in verdict.reason


def test_ptr_names_and_permission_tables() -> None:
    answer = {
        "status": "ok",
        "response": {
            "result": {
                "Answer": [
                    {"Name": "10.2.0.192.in-addr.arpa", "Type": "PTR", "RDATA": {"Domain": "Laptop.LAN."}}
                ]
            }
        },
    }
    assert ptr_from(answer) == "laptop.lan"
    assert ptr_from({"status": "ok", "response": {"result": {"Answer": []}}}) is None
    assert ptr_from({"status": "ok", "response": {"result": {"Answer": [{"Type": "CNAME"}]}}}) is None
    rows = [
        {"username": "alice", "canView": True, "canModify": True, "canDelete": False},
        {"username": "bg", "canView": True, "canModify": True, "canDelete": True},
    ]
    # the other rows written back as they were; the background user's row view-only
    assert table_with(rows, "username", "bg", view=True) == "alice|true|true|false|bg|true|false|false"
    assert candidate_names("authproxy-background", {"authproxy-background", "authproxy-background-2"})[
        :2
    ] == ["authproxy-background-3", "authproxy-background-4"]


# ---- service API keys --------------------------------------------------------------------------------------


def test_service_keys_match_by_digest_and_say_which_service() -> None:
    key, entry = new_key("backup-job")
    name, algo, hexdigest = entry.split(":")
    assert (name, algo) == ("backup-job", "sha256") and hexdigest == hashlib.sha256(key.encode()).hexdigest()
    gate = ServiceGate(
        [ApiKeys([ServiceKey("other", b"\0" * 32), ServiceKey(name, bytes.fromhex(hexdigest))])]
    )
    assert gate.authenticate({"X-API-Key": key}) == ServiceClient("backup-job", "api_key")
    assert gate.authenticate({"Authorization": f"Bearer {key}"}) == ServiceClient("backup-job", "api_key")
    assert gate.authenticate({"X-API-Key": key + "x"}) == REFUSED  # said it is a service: wrong key
    assert gate.authenticate({"Authorization": "Bearer " + "a" * 64}) is None  # e.g. a UI placeholder
    assert gate.authenticate({}) is None
    assert not ServiceGate([]) and ServiceGate([]).authenticate({"X-API-Key": key}) is None


def test_every_configured_digest_is_compared_whichever_matches() -> None:
    """No early exit: the first key matching costs what the last one (or none) does."""
    keys = [ServiceKey(f"k{i}", hashlib.sha256(f"key-{i}".encode()).digest()) for i in range(200)]
    api = ApiKeys(keys)
    first = min(timeit.repeat(lambda: api.authenticate({"X-API-Key": "key-0"}), number=200, repeat=5))
    none = min(timeit.repeat(lambda: api.authenticate({"X-API-Key": "nope"}), number=200, repeat=5))
    assert 0.33 < first / none < 3.0


# ---- configuration -----------------------------------------------------------------------------------------

OK = {"UPSTREAM_URL": "http://127.0.0.1:5380", "UPSTREAM_TYPE": "technitium", "TRUST_PROXY": "true"}


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(env)
    return info.value.problems


@pytest.mark.parametrize(("value", "mode"), [("apiKey", "none"), ("APIKEY", "none"), ("truenas", "session")])
def test_mode_aliases(value: str, mode: str) -> None:
    assert load_config({**OK, "AUTH_MODE": value, "TECHNITIUM_TOKEN": "t" * 64}).auth_mode == mode


def test_service_api_keys_are_read_hashed_and_only_in_hybrid() -> None:
    _, entry = new_key("ci")
    config = load_config(
        {
            **OK,
            "AUTH_MODE": "hybrid",
            "TECHNITIUM_BACKGROUND_TOKEN": "t" * 64,
            "SERVICE_API_KEYS": f"{entry}, {new_key('backup')[1]}",
        }
    )
    assert [k.name for k in config.server.service_api_keys] == ["ci", "backup"]
    assert "sha256" not in repr(config.server.service_api_keys[0])  # the digest is not printed either
    [found] = problems({**OK, "AUTH_MODE": "session", "SERVICE_API_KEYS": entry})
    assert found.startswith("SERVICE_API_KEYS:") and "AUTH_MODE=hybrid" in found
    bad = problems(
        {
            **OK,
            "AUTH_MODE": "hybrid",
            "TECHNITIUM_BACKGROUND_TOKEN": "t" * 64,
            "SERVICE_API_KEYS": "ci:apk_the-raw-key-by-mistake",
        }
    )
    assert len(bad) == 1 and "name:sha256:<64 hex digits>" in bad[0] and "apk_the-raw-key" not in bad[0]
    twice = problems(
        {
            **OK,
            "AUTH_MODE": "hybrid",
            "TECHNITIUM_BACKGROUND_TOKEN": "t" * 64,
            "SERVICE_API_KEYS": f"{entry} {entry}",
        }
    )
    assert twice == ["SERVICE_API_KEYS: the name 'ci' is used twice; give every key its own name"]


def test_the_cluster_token_is_only_a_migration_source() -> None:
    config = load_config({**OK, "AUTH_MODE": "hybrid", "TECHNITIUM_CLUSTER_TOKEN": "c" * 64})
    [site] = config.sites
    assert site.cluster_token is not None and site.service_token is None  # never the service credential
    assert (
        load_config({**OK, "AUTH_SESSION_ENABLED": "true", "TECHNITIUM_CLUSTER_TOKEN": "c" * 64})
        .sites[0]
        .cluster_token
        is not None
    )
    [none] = problems(
        {**OK, "AUTH_MODE": "none", "TECHNITIUM_TOKEN": "t" * 64, "TECHNITIUM_CLUSTER_TOKEN": "c" * 64}
    )
    assert none.startswith("TECHNITIUM_CLUSTER_TOKEN") and "TECHNITIUM_TOKEN instead" in none
    [other] = problems({**OK, "UPSTREAM_TYPE": "pihole", "TECHNITIUM_CLUSTER_TOKEN": "c" * 64})
    assert "only a technitium site" in other
    [missing] = problems({**OK, "AUTH_MODE": "hybrid"})
    assert "needs a service credential" in missing and "TECHNITIUM_BACKGROUND_TOKEN" in missing


def test_background_check_interval() -> None:
    assert load_config(OK).server.background_check_interval == 300.0
    assert load_config({**OK, "BACKGROUND_CHECK_INTERVAL": "2m"}).server.background_check_interval == 120.0
    [found] = problems({**OK, "BACKGROUND_CHECK_INTERVAL": "0.2"})
    assert found.startswith("BACKGROUND_CHECK_INTERVAL")
