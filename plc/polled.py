"""What the OPC UA and Modbus gateways share: an asyncio loop in a thread of its own that
writes decisions from the engine into the PLC's mailbox as the PLC frees it (the `Backlog`
drops stale ones), reconnects with backoff, and reports its counters."""
from __future__ import annotations

import asyncio
import threading

from .backlog import Backlog
from .engine_link import EngineLink

__all__ = ["LinkDown", "PolledGateway"]


class LinkDown(Exception):
    """The PLC stopped counting its life signal: the link is taken down and reconnected."""


class PolledGateway:
    """Subclasses set `protocol` and `thread_name`, write `async _main()` (which returns when
    `_stop` is set) and `peer()` (where the PLC is, for `snapshot`)."""

    protocol = ""
    thread_name = "plc-gateway"

    def __init__(self, decisions: str, feedback: str, *, max_age_s: float | None,
                 backoff_initial_s: float, backoff_max_s: float, timeout_s: float, context,
                 counters: dict[str, int]):
        self.timeout_s = timeout_s
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.engine = EngineLink(decisions, feedback, context=context)
        self.backlog = Backlog(max_age_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.link_up = False
        self.error: BaseException | None = None
        self.counters = counters

    def start(self):
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()),
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def peer(self) -> dict:
        raise NotImplementedError

    def snapshot(self) -> dict:
        with self._lock:
            return {"protocol": self.protocol, **self.peer(), "link_up": self.link_up,
                    "waiting": len(self.backlog), "stale_dropped": self.backlog.stale_dropped,
                    **self.counters, **self.engine.counters}

    def _drain(self, now: float) -> None:
        """Decisions from the engine into the backlog (stale ones expire there)."""
        items = self.engine.recv_decisions()
        with self._lock:
            self.backlog.extend(items)
            self.backlog.expire(now)
        self.engine.tick(now)

    async def _main(self) -> None:
        raise NotImplementedError
