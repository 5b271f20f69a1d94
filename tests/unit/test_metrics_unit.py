"""The pure parts of metrics.py: label values stay within their documented sets whatever comes in."""

from __future__ import annotations

from prometheus_client import generate_latest

from authproxy.metrics import (
    SIGN_IN_OUTCOMES,
    VERIFY_OUTCOMES,
    Metrics,
    sign_in_outcome,
    status_class,
    verify_outcome,
)


def test_status_classes() -> None:
    statuses = (101, 200, 304, 404, 502, 599)
    assert [status_class(s) for s in statuses] == ["1xx", "2xx", "3xx", "4xx", "5xx", "5xx"]
    assert status_class(0) == status_class(600) == status_class(999) == "other"


def test_verify_outcomes_cover_every_status() -> None:
    assert {verify_outcome(s) for s in range(100, 600)} == set(VERIFY_OUTCOMES)
    assert (verify_outcome(200), verify_outcome(302), verify_outcome(401), verify_outcome(403)) == (
        "allow", "sign_in", "sign_in", "deny")


def test_sign_in_outcomes_are_bounded() -> None:
    assert sign_in_outcome("invalid_credentials") == "failure"
    assert sign_in_outcome("too_many_attempts") == "throttled"
    assert sign_in_outcome("totp_required") == "totp_required"
    assert sign_in_outcome("store_unavailable") == "store_unavailable"
    assert sign_in_outcome("signed_out_everywhere") == "revoked"
    for anything in ("upstream_protocol_error", "alice", "/etc/passwd", ""):
        assert sign_in_outcome(anything) in SIGN_IN_OUTCOMES and sign_in_outcome(anything) == "error"


def test_unknown_proxy_kinds_share_one_label_and_the_memo_is_bounded() -> None:
    m = Metrics()
    for i in range(1000):
        m.on_verify(f"kind{i}", 404)
    m.on_verify(None, 200)
    text = generate_latest(m.registry).decode()
    assert 'authproxy_verify_decisions_total{outcome="not_found",proxy="other"} 1000.0' in text
    assert 'authproxy_verify_decisions_total{outcome="allow",proxy="auto"} 1.0' in text
    assert "kind1" not in text and len(m._verify_children) <= 256


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.on_sign_in("dns", "success")
    assert b"authproxy_sign_ins_total{" not in generate_latest(b.registry)
    assert b'authproxy_sign_ins_total{outcome="success",site="dns"} 1.0' in generate_latest(a.registry)
