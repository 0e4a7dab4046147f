"""Logs: one JSON line per event on stderr, at the configured level.

Structured so a log pipeline can filter on fields. Events pass their fields
as ``extra={"fields": {...}}``. Nothing here ever logs a request header: keys
reach the logs only if someone passes one in, and the relay never does. Nor
does anything log a record's data (an answer, whole or partial, is the user's):
the proxy logs ids and counts, and libraries that trace their arguments are
held above that level (``_QUIET_LIBRARIES``).

A dozen lines of formatter instead of a logging library: the format is the
whole need, and one dependency fewer is one less thing for a sidecar to ship.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "setup_logging"]

# Loggers that never go below this level, whatever log_level says.
_QUIET_LIBRARIES: tuple[tuple[str, int], ...] = (
    # aiohttp's access log is off (see app.RUNNER_OPTIONS); its server errors stay.
    ("aiohttp.access", logging.WARNING),
    # At debug, aiosqlite logs every call it runs with its arguments: each
    # record's JSON, partial answers included, at every flush.
    ("aiosqlite", logging.INFO),
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, floor in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(floor, root.level))
