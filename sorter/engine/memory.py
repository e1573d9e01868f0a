"""Give memory back to the operating system after a burst of scans.

A flood fills ZeroMQ's queues and the engine's buffers; once drained, glibc's malloc keeps the
freed pages (in every thread's arena: libzmq's I/O thread allocates the messages) and the
engine's RSS stays at its peak all shift. `malloc_trim(0)` returns them. It costs a few
milliseconds on a large heap, so it runs only once a burst is over (docs/engine.md, "Memory").
"""
from __future__ import annotations

import ctypes
import ctypes.util


def _malloc_trim():
    """glibc's malloc_trim, or None (another C library: nothing to do)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class MemoryReturn:
    """Call `tick(events_routed_so_far)` from a timer: once `burst_events` were routed since the
    last trim and the last interval routed fewer than a hundredth of that, trim the heap."""

    def __init__(self, burst_events: int = 1_000_000):
        self.burst_events = burst_events
        self.trims = 0
        self._trim = _malloc_trim()
        self._last = 0
        self._since = 0

    def tick(self, events: int) -> bool:
        delta, self._last = events - self._last, events
        self._since += max(delta, 0)
        if self._since < self.burst_events or delta * 100 >= self.burst_events:
            return False
        self._since = 0
        if self._trim is None:
            return False
        self._trim(0)
        self.trims += 1
        return True
