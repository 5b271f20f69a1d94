"""Named loggers, a JSON formatter, a cheap access logger, and the audit trail.

    authproxy         operational messages
    authproxy.access  one line per request (cheap: no aiohttp format-string parsing)
    authproxy.audit   login, logout, expiry, throttling — JSON lines, never secrets

Redaction is structural: callers never pass secrets. As a second line of defence the formatter
masks anything shaped like a session ticket, bearer token or `token=`/`pass=` parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

log = logging.getLogger("authproxy")
access_log = logging.getLogger("authproxy.access")
audit_log = logging.getLogger("authproxy.audit")

_REDACT = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1[redacted]"),
    (re.compile(r"(?i)\b(token|pass|password|totp|sid|otp)=([^&\s\"']+)"), r"\1=[redacted]"),
    (re.compile(r"\bv1\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}(\.[A-Za-z0-9_-]+)?"), "[redacted-ticket]"),
]


def redact(text: str) -> str:
    # Each pattern needs one of these substrings to match at all; most lines (every access-log line
    # without a query) have none, and three regex scans per line were a third of the line's cost.
    if "=" not in text and "v1." not in text and "bearer" not in text.lower():
        return text
    for pattern, repl in _REDACT:
        text = pattern.sub(repl, text)
    return text


def where(tb: TracebackType | None) -> str:
    """Where an exception was raised (innermost frame: file:line in function), never its message.

    Exception messages can quote anything that was in play (a header value, a token in a URL), so
    unexpected errors are logged by type and place only; expected failures log their own safe text.
    """
    if tb is None:
        return ""
    frame = traceback.extract_tb(tb)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update({k: redact(v) if isinstance(v, str) else v for k, v in fields.items()})
        if record.exc_info and record.exc_info[0] is not None:
            data["exception"] = record.exc_info[0].__name__
            data["where"] = where(record.exc_info[2])
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = f"{record.levelname:<7} {record.name}: {redact(record.getMessage())}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            base += " " + " ".join(f"{k}={redact(v) if isinstance(v, str) else v}" for k, v in fields.items())
        if record.exc_info and record.exc_info[0] is not None:
            base += f" [{record.exc_info[0].__name__} at {where(record.exc_info[2])}]"
        return base


def setup_logging(*, level: str, fmt: str, audit_file: Path | None = None) -> None:
    """Configure the three loggers once, at start-up (tests use caplog instead)."""
    root = logging.getLogger("authproxy")
    root.setLevel(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.handlers[:] = [handler]
    root.propagate = False
    # Access lines are many: a cheap formatter and batched writes (one write per ~0.25 s, not one
    # write and flush per request, which is what halves throughput).
    access = BufferedStreamHandler(sys.stderr)
    access.setFormatter(AccessFormatter() if fmt == "json" else TextFormatter())
    access_log.handlers[:] = [access]
    access_log.propagate = False
    if audit_file is not None:
        audit_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(audit_file, encoding="utf-8")
        fh.setFormatter(JsonFormatter())
        audit_log.addHandler(fh)


def audit(event: str, *, outcome: str, user: str = "", site: str = "", client_ip: str = "",
          actor: str = "user", **extra: Any) -> None:
    """One audit line. Only names and outcomes: callers must never pass secrets here.

    `actor`: who acted, `user` (a person; `user` is their name) or `service` (a service client or
    authproxy's own background work; `user` is the service's name)."""
    fields = {"event": event, "outcome": outcome, "actor": actor, "user": user, "site": site,
              "client_ip": client_ip}
    fields.update(extra)
    audit_log.info("%s %s", event, outcome, extra={"fields": fields})


class AccessLogger(AbstractAccessLogger):
    """A cheap access logger: aiohttp's default parses a format string per request and halves throughput."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.logger.info(
            "%s %s %d", request.method, request.rel_url.path, response.status,
            extra={"fields": {"remote": request.remote, "method": request.method, "path": request.rel_url.path,
                              "status": response.status, "ms": round(time * 1000, 2)}},
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


_PLAIN = re.compile(r'^[\x20-\x7e]*$')


def _json_str(text: str) -> str:
    """A JSON string literal; the common case (printable ASCII, no quote or backslash) without json.dumps."""
    if _PLAIN.match(text) and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


class AccessFormatter(logging.Formatter):
    """The access line as JSON, built directly: json.dumps and strftime per request cost more than
    the request itself. The timestamp text is reused within a second."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        f = getattr(record, "fields", None) or {}
        return (f'{{"time":"{self._stamp}.{int(record.msecs):03d}Z","level":"{record.levelname.lower()}",'
                f'"logger":"{record.name}","message":{_json_str(redact(record.getMessage()))},'
                f'"remote":{_json_str(str(f.get("remote") or ""))},"method":{_json_str(str(f.get("method", "")))},'
                f'"path":{_json_str(redact(str(f.get("path", ""))))},"status":{int(f.get("status", 0))},'
                f'"ms":{float(f.get("ms", 0.0)):.2f}}}')


class BufferedStreamHandler(logging.Handler):
    """Writes formatted lines in batches: when 64 KiB are waiting, or 0.25 s after the first one.

    Outside an event loop (start-up, shutdown) every line is written at once; `logging.shutdown`
    (at exit) flushes what is left.
    """

    def __init__(self, stream: TextIO, *, interval: float = 0.25, limit: int = 64 * 1024) -> None:
        super().__init__()
        self.stream = stream
        self.interval = interval
        self.limit = limit
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never break a request
            self.handleError(record)
            return
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= self.limit:
            self.flush()
            return
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.interval, self._timed_flush)

    def _timed_flush(self) -> None:
        with self.lock if self.lock is not None else contextlib.nullcontext():
            self._timer = None
            self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        self._size = 0
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed at exit: nothing left to tell

    def close(self) -> None:
        self.flush()
        super().close()
