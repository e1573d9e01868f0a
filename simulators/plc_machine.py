"""The machine behind every simulated protocol PLC: the sorter-loop model, or an echo.

The protocol PLCs (`plc_tcp`, `plc_opcua`, `plc_modbus`) differ only in how instructions come
in and reports go out; what happens to a parcel is `SorterLoop`'s business (docs/simulators.md).
`echo=True` replaces the loop with a machine that sorts every parcel into its chute at once
(the benchmark: confirmations come back as fast as the protocol carries them).
Codes are the wire's: outcome 0 sorted, 1 failed_divert, 2 lost; state 0 available, 1
disabled, 2 full; reason = index into sorter.core.codes.REASONS.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

from sorter import wire
from sorter.core.codes import CHUTE_STATES, REASONS
from sorter.plan import Plan

from .model import LoopBack, Registry
from .plc import SorterLoop

__all__ = ["Machine"]

_OUTCOME = {name: i for i, name in enumerate(wire.OUTCOMES)}
_STATE = {name: i for i, name in enumerate(CHUTE_STATES)}


class Machine:
    """Instructions in (`instruct`), confirmations and chute changes out (`poll`), as codes."""

    def __init__(self, plan: Plan | None = None, *, echo: bool = False,
                 registry: Registry | None = None, loopback: LoopBack | None = None,
                 seed: int = 0, now_s: float = 0.0, **loop_kw: Any):
        self.echo = echo or plan is None
        self.loop = None if self.echo else SorterLoop(plan, registry=registry, loopback=loopback,
                                                      seed=seed, now_s=now_s, **loop_kw)
        self._echo_out: list[tuple[int, int, int]] = []
        self.instructions = 0

    def instruct(self, tracking_id: int, chute: int, reason: int, now_s: float) -> None:
        self.instructions += 1
        if self.echo:
            if chute:
                self._echo_out.append((tracking_id, chute, 0))
            return
        name = REASONS[reason] if 0 <= reason < len(REASONS) else str(reason)
        self.loop.on_decision(tracking_id, chute, now_s, name)

    def chute_states(self) -> list[tuple[int, int]]:
        """Every chute's state (a full status, sent when a host connects)."""
        if self.echo:
            return []
        return [(c, _STATE[s]) for c, s in self.loop.chute_states()]

    def poll(self, now_s: float) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
        """(confirmations [(tracking_id, chute, outcome)], chute changes [(chute, state)])
        up to `now_s`."""
        if self.echo:
            out, self._echo_out = self._echo_out, []
            return out, []
        self.loop.advance(now_s)
        confirms = [(p, c, _OUTCOME[o]) for p, c, o in self.loop.take_confirmations()]
        changes = [(c, _STATE[s]) for c, s in self.loop.take_chute_changes()]
        return confirms, changes

    def snapshot(self) -> dict:
        if self.echo:
            return {"instructions": self.instructions}
        return {"instructions": self.instructions, **self.loop.snapshot()}


class ServedPlc:
    """A simulated PLC whose protocol server runs on an asyncio loop in a thread of its own
    (the OPC UA and Modbus simulators). `start()` returns once it serves, or raises what
    stopped it; `stop()` ends it. Subclasses set `thread_name` and `title` and write
    `async _main()`, which sets `self._loop` and `self._stop_evt`, calls `self._ready.set()`
    when serving and returns when `_stop_evt` is set."""

    thread_name = "plc-sim"
    title = "PLC simulator"
    start_timeout_s = 20.0
    join_timeout_s = 10.0

    def __init__(self, plan: Plan | None, *, port: int = 0, echo: bool = False, seed: int = 0,
                 cycle_s: float = 0.001, registry=None, loopback=None, **loop_kw: Any):
        self.port = port or free_port()
        self.machine = Machine(plan, echo=echo, registry=registry, loopback=loopback, seed=seed,
                               now_s=time.monotonic(), **loop_kw)
        self.cycle_s = cycle_s
        self.lock = threading.Lock()
        self.instructions: list[int] = []          # tracking ids taken, in order
        self.silent = False                        # tests: stop the PLC program (life stops)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_evt: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self):
        self._thread = threading.Thread(target=self._thread_main, name=self.thread_name,
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(self.start_timeout_s):
            raise RuntimeError(f"the {self.title} did not start: {self.error!r}")
        if self.error:
            raise RuntimeError(f"the {self.title} failed: {self.error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop_evt is not None:
            self._loop.call_soon_threadsafe(self._stop_evt.set)
        if self._thread is not None:
            self._thread.join(self.join_timeout_s)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def snapshot(self) -> dict:
        with self.lock:
            return {**self.counters, "machine": self.machine.snapshot()}

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - reported to start()/the owner
            self.error = e
            self._ready.set()

    async def _main(self) -> None:
        raise NotImplementedError


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server library that cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
