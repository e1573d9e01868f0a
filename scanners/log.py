"""JSON-lines logging for the scanner side (`sorter.jsonlog`: the engine's shape,
`{"ts", "level", "event", ...fields}` on stderr)."""
from __future__ import annotations

from sorter.jsonlog import JsonLogFormatter, log_event
from sorter.jsonlog import setup_logging as _setup

__all__ = ["JsonLogFormatter", "log_event", "setup_logging"]


def setup_logging(level: str = "INFO", stream=None, names=("scanners", "simulators")) -> None:
    """Send the scanner (and simulator) loggers to stderr as JSON lines."""
    _setup(names, level, stream=stream)
