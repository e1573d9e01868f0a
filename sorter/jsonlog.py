"""JSON-lines logging: one object per line, `{"ts", "level", "event", ...fields}`.

Every process of the house logs in this shape (the engine, the scanner drivers, the PLC
gateway, the simulators), so one tool reads all their logs. It sits below every layer (it
imports nothing of ours), so each of them can use it without importing another.
"""
from __future__ import annotations

import json
import logging
import sys


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, and the event's fields (`extra={"fields":
    {...}}`, as `log_event` passes them)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                 "event": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def setup_logging(names, level: str = "INFO", *, stream=None, log_file: str | None = None) -> None:
    """Send the loggers `names` (and their children) to `stream` (stderr by default) as JSON
    lines, and also append them to `log_file` if given; they stop propagating to the root."""
    handlers = [logging.StreamHandler(stream or sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(JsonLogFormatter())
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level.upper())
        logger.propagate = False


def log_event(logger: logging.Logger, level: int, event: str, **fields) -> None:
    """Log `event` with structured fields (they become keys of the JSON line)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})
