"""The machine behind every simulated protocol PLC: the sorter-loop model, or an echo.

The protocol PLCs (`plc_tcp`, `plc_opcua`, `plc_modbus`) differ only in how instructions come
in and reports go out; what happens to a parcel is `SorterLoop`'s business (docs/simulators.md).
`echo=True` replaces the loop with a machine that sorts every parcel into its chute at once
(the benchmark: confirmations come back as fast as the protocol carries them).
Codes are the wire's: outcome 0 sorted, 1 failed_divert, 2 lost; state 0 available, 1
disabled, 2 full; reason = index into sorter.core.codes.REASONS.
"""
from __future__ import annotations

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
