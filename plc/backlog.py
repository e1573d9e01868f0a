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

    def take(self, k: int, now: float) -> list[Instruction]:
        """Up to k fresh decisions, oldest first; stale ones on the way are dropped."""
        out: list[Instruction] = []
        while self.items and len(out) < k:
            ins = self.items.popleft()
            if self.max_age_s is not None and now - ins.born > self.max_age_s:
                self.stale_dropped += 1
                log_event(log, logging.WARNING, "stale decision dropped",
                          tracking_id=ins.tracking_id, chute=ins.chute,
                          age_ms=round((now - ins.born) * 1000, 1),
                          max_age_ms=round(self.max_age_s * 1000, 1))
                continue
            out.append(ins)
        return out

    def expire(self, now: float) -> None:
        """Drop the stale decisions at the head (while the link is down)."""
        while self.items and self.max_age_s is not None and now - self.items[0].born > self.max_age_s:
            ins = self.items.popleft()
            self.stale_dropped += 1
            log_event(log, logging.WARNING, "stale decision dropped", tracking_id=ins.tracking_id,
                      chute=ins.chute, age_ms=round((now - ins.born) * 1000, 1),
                      max_age_ms=round(self.max_age_s * 1000, 1))
