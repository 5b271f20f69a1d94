"""Named loggers, a JSON formatter, a cheap access logger, and the audit trail.

    authproxy         operational messages
    authproxy.access  one line per request (cheap: no aiohttp format-string parsing)
    authproxy.audit   login, logout, expiry, throttling — JSON lines, never secrets

Redaction is structural: callers never pass secrets. As a second line of defence the formatter
masks anything shaped like a session ticket, bearer token or `token=`/`pass=` parameter.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

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
            data.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            data["exception"] = record.exc_info[0].__name__
            data["error"] = redact(str(record.exc_info[1]))
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = f"{record.levelname:<7} {record.name}: {redact(record.getMessage())}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info and record.exc_info[0] is not None:
            base += f" [{record.exc_info[0].__name__}: {redact(str(record.exc_info[1]))}]"
        return base


def setup_logging(*, level: str = "INFO", fmt: str = "json", audit_file: Path | None = None) -> None:
    """Configure the three loggers once, at start-up (tests use caplog instead)."""
    root = logging.getLogger("authproxy")
    root.setLevel(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.handlers[:] = [handler]
    root.propagate = False
    if audit_file is not None:
        audit_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(audit_file, encoding="utf-8")
        fh.setFormatter(JsonFormatter())
        audit_log.addHandler(fh)


def audit(event: str, *, outcome: str, user: str = "", site: str = "", client_ip: str = "",
          **extra: Any) -> None:
    """One audit line. Only names and outcomes: callers must never pass secrets here."""
    fields = {"event": event, "outcome": outcome, "user": user, "site": site, "client_ip": client_ip}
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
