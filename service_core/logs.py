"""Structured logging: one JSON object per line, fields passed with ``extra=``."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

# The id of the call being served: set by the access-log interceptor for the call's
# task, inherited by the tasks it starts, so that every line the call logs carries it.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# Who the call being served is, "name (role)", once authentication knew it: set by the
# auth interceptor, read for the call's access-log line. None when auth is off.
caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)


class RequestIdFilter(logging.Filter):
    """Adds the current call's ``request_id`` to each record logged while serving it."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = request_id.get()
        if current is not None and not hasattr(record, "request_id"):
            record.request_id = current
        return True


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON with its ``extra`` fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Readable one-line format for a terminal, ``extra`` fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: "
        line += record.getMessage() + (f"  {extra}" if extra else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str, fmt: str) -> None:
    """Sends every log record to stderr in the chosen format."""
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    formatter.converter = time.gmtime  # timestamps in UTC, as the "Z" says
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
