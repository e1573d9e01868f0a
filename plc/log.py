"""JSON-lines logging for the gateway (`sorter.jsonlog`: the shape of the engine's and the
scanner drivers' log lines, `{"ts", "level", "event", ...fields}` on stderr)."""
from __future__ import annotations

from sorter.jsonlog import JsonLogFormatter, log_event
from sorter.jsonlog import setup_logging as _setup

__all__ = ["JsonLogFormatter", "log_event", "setup_logging"]


def setup_logging(level: str = "INFO", stream=None) -> None:
    """Send the `plc` loggers to stderr as JSON lines."""
    _setup(("plc",), level, stream=stream)
