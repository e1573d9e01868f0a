"""Decisions waiting for a mailbox or ring slot (OPC UA, Modbus), oldest first, with the rule
every protocol shares: a decision older than `max_age_s` is dropped, counted and logged instead
of being written to the PLC."""
from __future__ import annotations

import logging
from collections import deque

from .log import log_event
from .session import Instruction

log = logging.getLogger("plc.backlog")

__all__ = ["Backlog"]


class Backlog:
    def __init__(self, max_age_s: float | None):
        self.max_age_s = max_age_s
        self.items: deque[Instruction] = deque()
        self.stale_dropped = 0

    def __len__(self) -> int:
        return len(self.items)

    def extend(self, items) -> None:
        self.items.extend(items)

    def _stale(self, ins: Instruction, now: float) -> bool:
        return self.max_age_s is not None and now - ins.born > self.max_age_s

    def _dropped(self, first: Instruction, n: int, now: float) -> None:
        """Count n stale drops; one log line with the first one's fields and the count."""
        self.stale_dropped += n
        log_event(log, logging.WARNING, "stale decision dropped", tracking_id=first.tracking_id,
                  chute=first.chute, age_ms=round((now - first.born) * 1000, 1),
                  max_age_ms=round(self.max_age_s * 1000, 1), count=n)

    def take(self, k: int, now: float) -> list[Instruction]:
        """Up to k fresh decisions, oldest first; stale ones on the way are dropped."""
        self.expire(now)
        out: list[Instruction] = []
        while self.items and len(out) < k:
            out.append(self.items.popleft())
        return out

    def expire(self, now: float) -> None:
        """Drop the stale decisions at the head (decisions arrive in time order)."""
        first, n = None, 0
        while self.items and self._stale(self.items[0], now):
            ins = self.items.popleft()
            first = first or ins
            n += 1
        if n:
            self._dropped(first, n, now)
