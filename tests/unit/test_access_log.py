"""The access log: valid JSON lines, nothing from the query, and batched writes."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from authproxy.log import AccessFormatter, BufferedStreamHandler


def record(path: str, *, status: int = 200, remote: str = "203.0.113.7") -> logging.LogRecord:
    rec = logging.LogRecord("authproxy.access", logging.INFO, __file__, 1, "%s %s %d",
                            ("GET", path, status), None)
    rec.fields = {"remote": remote, "method": "GET", "path": path, "status": status, "ms": 1.234}
    return rec


def test_lines_are_json_with_the_request_facts() -> None:
    line = json.loads(AccessFormatter().format(record("/api/zones/list", status=404)))
    assert line["logger"] == "authproxy.access" and line["level"] == "info"
    assert (line["method"], line["path"], line["status"], line["ms"], line["remote"]) == \
        ("GET", "/api/zones/list", 404, 1.23, "203.0.113.7")
    assert line["time"].endswith("Z") and len(line["time"]) == 24


def test_odd_paths_stay_valid_json_and_token_shaped_parts_are_masked() -> None:
    for path in ['/a"b\\c', "/ünïcode/\u2028", "/x\x01y", "/api/x/token=abcdef0123456789"]:
        line = json.loads(AccessFormatter().format(record(path)))
        assert line["path"] == path or "[redacted]" in line["path"]
    assert "abcdef0123456789" not in AccessFormatter().format(record("/api/x/token=abcdef0123456789"))


async def test_writes_are_batched_inside_the_event_loop() -> None:
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream, interval=0.05)
    handler.setFormatter(AccessFormatter())
    for i in range(100):
        handler.handle(record(f"/p{i}"))
    assert stream.getvalue() == ""                     # nothing written per request
    await asyncio.sleep(0.15)
    lines = stream.getvalue().splitlines()
    assert [json.loads(x)["path"] for x in lines] == [f"/p{i}" for i in range(100)]


async def test_a_full_buffer_is_written_at_once_and_close_flushes() -> None:
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream, interval=60, limit=1000)
    handler.setFormatter(AccessFormatter())
    for i in range(20):
        handler.handle(record(f"/p{i}"))
    assert 0 < len(stream.getvalue().splitlines()) < 20    # the limit forced a write
    handler.close()
    assert len(stream.getvalue().splitlines()) == 20


def test_outside_an_event_loop_every_line_is_written_at_once() -> None:
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(AccessFormatter())
    handler.handle(record("/now"))
    assert json.loads(stream.getvalue())["path"] == "/now"


def test_unexpected_errors_are_logged_by_type_and_place_never_by_message() -> None:
    """An exception's text may quote a token; the formatters keep only its type and where it was raised."""
    from authproxy.log import JsonFormatter, TextFormatter

    secret = "9f" * 32
    try:
        raise KeyError(f"no session for {secret}")
    except KeyError:
        import sys

        rec = logging.LogRecord(
            "authproxy", logging.ERROR, __file__, 1, "unhandled error", (), sys.exc_info()
        )
    line = json.loads(JsonFormatter().format(rec))
    assert line["exception"] == "KeyError" and line["where"].startswith("test_access_log.py:")
    assert secret not in json.dumps(line)
    assert secret not in TextFormatter().format(
        rec
    ) and "KeyError at test_access_log.py:" in TextFormatter().format(rec)


def test_field_values_are_redacted_like_messages_in_both_formats() -> None:
    from authproxy.log import JsonFormatter, TextFormatter

    token = "a" * 64
    record = logging.LogRecord("authproxy.access", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
    record.fields = {"path": f"/x?token={token}", "auth": f"Bearer {token}", "status": 200}
    for fmt in (JsonFormatter(), TextFormatter()):
        line = fmt.format(record)
        assert token not in line and "[redacted]" in line and "200" in line
