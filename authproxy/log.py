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
import threading
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
    """Configure logging once, at start-up (tests use caplog instead): every record of the process,
    authproxy's or a library's, ends in one redacting handler on stderr.

    aiohttp logs a request its parser refuses ("Error handling request") with the exception, whose
    message quotes the raw request line or header: a cookie, a Bearer token, a query string. With no
    handler on the root logger that record reached Python's fallback handler (`logging.lastResort`),
    which prints the whole traceback unredacted. Now the root logger carries the handler (aiohttp.*,
    asyncio, redis, py.warnings all propagate to it), the fallback is the same handler, and the formatters
    log an exception as its type and place only. Whatever else Python would print to stderr by itself
    (uncaught exceptions in the main thread, other threads, `__del__`; a record that fails to format)
    goes through the same handler. Forked workers (WORKERS>1) inherit all of it.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_asyncio_first_line)
    root = logging.getLogger()
    root.setLevel(level.upper())
    root.handlers[:] = [handler]
    for name in ("authproxy", *_LIBRARY_LOGGERS):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("authproxy").setLevel(level.upper())
    logging.lastResort = handler
    logging.raiseExceptions = False  # else a record that fails to format is printed raw, with its arguments
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception
    sys.unraisablehook = _log_unraisable
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


# Loggers of the libraries authproxy runs on; none adds a handler of its own today, but one that did
# (or stopped propagating) would write around the redaction.
_LIBRARY_LOGGERS = ("aiohttp", "aiohttp.access", "aiohttp.client", "aiohttp.internal", "aiohttp.server",
                    "aiohttp.web", "aiohttp.websocket", "asyncio", "py.warnings", "redis")


def _asyncio_first_line(record: logging.LogRecord) -> bool:
    """asyncio's exception handler (uvloop's too) writes what happened on the first line and then the
    repr of everything in play (`future: <Task ... exception=OSError('...')>`, a handle, a transport):
    the exception's text again, and arguments. Only the first line is kept; the type comes with exc_info."""
    if record.name == "asyncio" or record.name.startswith("asyncio."):
        first = record.getMessage().split("\n", 1)[0]
        record.msg, record.args = first, ()
    return True


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    _log_exception(logging.CRITICAL, "authproxy stopped on an unexpected error", kind, exc, tb)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is not SystemExit:
        _log_exception(logging.ERROR, "unexpected error in a thread", args.exc_type, args.exc_value,
                       args.exc_traceback)


def _log_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    # Not `unraisable.object`: its repr may show anything the object held.
    _log_exception(
        logging.WARNING,
        "exception ignored (unraisable)",
        unraisable.exc_type,
        unraisable.exc_value,
        unraisable.exc_traceback,
    )


def _log_exception(level: int, message: str, kind: type[BaseException], exc: BaseException | None,
                   tb: TracebackType | None) -> None:
    if exc is None:
        log.log(level, message, extra={"fields": {"exception": kind.__name__}})
    else:
        log.log(level, message, exc_info=(kind, exc, tb))


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
            "%s %s %d",
            request.method,
            request.rel_url.path,
            response.status,
            extra={
                "fields": {
                    "remote": request.remote,
                    "method": request.method,
                    "path": request.rel_url.path,
                    "status": response.status,
                    "ms": round(time * 1000, 2),
                }
            },
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
        return (
            f'{{"time":"{self._stamp}.{int(record.msecs):03d}Z","level":"{record.levelname.lower()}",'
            f'"logger":"{record.name}","message":{_json_str(redact(record.getMessage()))},'
            f'"remote":{_json_str(str(f.get("remote") or ""))},'
            f'"method":{_json_str(str(f.get("method", "")))},'
            f'"path":{_json_str(redact(str(f.get("path", ""))))},"status":{int(f.get("status", 0))},'
            f'"ms":{float(f.get("ms", 0.0)):.2f}}}'
        )


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
