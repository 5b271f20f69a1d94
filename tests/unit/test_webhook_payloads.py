"""What the webhooks send: a template filled after parsing (a value never changes the JSON's shape),
and how long a 429 asks to wait (Retry-After, else Discord's `retry_after` in the body)."""

from __future__ import annotations

import json

from authproxy.config.passwordless import template_problem
from authproxy.login.webhook import _retry_after, fill


def test_a_value_cannot_break_out_of_its_string() -> None:
    template = json.loads('{"text": "{{message}}", "tags": ["{{username}}"], "n": 4, "{{code}}": true}')
    hostile = '", "admin": true, "x": "'
    body = fill(template, {"message": hostile, "username": "a\nb", "code": "123456"})
    assert body == {"text": hostile, "tags": ["a\nb"], "n": 4, "123456": True}
    assert json.loads(json.dumps(body)) == body


def test_retry_after_from_the_header_or_the_body() -> None:
    assert _retry_after("2", None) == 2.0
    assert _retry_after("0.35", {"retry_after": 9}) == 0.35
    assert _retry_after(None, {"retry_after": 1.5, "global": False}) == 1.5
    assert _retry_after("soon", {"retry_after": "x"}) is None
    assert _retry_after("-1", None) is None and _retry_after("nan", None) is None


def test_templates_are_checked() -> None:
    assert template_problem('{"text": "{{message}}"}') is None
    assert "not valid JSON" in (template_problem('{"text": {{message}}}') or "")
    assert "must be a JSON object" in (template_problem('["{{code}}"]') or "")
    assert "must carry the code" in (template_problem('{"text": "hello"}') or "")
