"""JSON-lines logging for the gateway, in the shape of the engine's and the scanner drivers' log
lines (`{"ts", "level", "event", ...fields}` on stderr), without importing either."""
from __future__ import annotations

import json
import logging
import sys


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                 "event": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", stream=None) -> None:
    """Send the `plc` loggers to stderr as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("plc")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def log_event(logger: logging.Logger, level: int, event: str, **fields) -> None:
    """Log `event` with structured fields (they become keys of the JSON line)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})
