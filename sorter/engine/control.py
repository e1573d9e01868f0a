"""The engine's control socket: JSON requests in, JSON replies out (docs/engine.md).

`status`, `set_chute`, `stop` are answered at once; `load_plan` validates and compiles the plan
in a loader thread and is answered when it is done, between two batches, so a plan swap is
atomic for routing. Runs on the engine's thread, which owns the REP socket.
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from sorter.core.codes import CHUTE_STATES
from sorter.core.router import compile_plan
from sorter.engine.metrics import chute_table
from sorter.plan import PlanError, load_plan, summary

if TYPE_CHECKING:
    from sorter.engine.process import Engine

log = logging.getLogger("sorter.engine")


def _log(level: int, event: str, **fields) -> None:
    log.log(level, event, extra={"fields": fields})


class Control:
    """Answers the requests of `engine.control` (a REP socket) for `engine`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan-loader")
        self._pending_load: Future | None = None

    @property
    def loading(self) -> bool:
        """A plan load is in progress (its reply is still owed)."""
        return self._pending_load is not None

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _send(self, reply: dict) -> None:
        self.engine.control.send(json.dumps(reply, default=str).encode())

    def handle(self) -> None:
        """Receive one request and answer it (a plan load: when it finishes)."""
        frame = self.engine.control.recv()
        try:
            request = json.loads(frame)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            cmd = request.get("cmd")
            if cmd == "load_plan" and self._pending_load is None:
                path = request.get("path")
                self._pending_load = self._loader.submit(self._load_plan, path)
                return                           # the reply goes out when the load finishes
            reply = self.command(cmd, request)
        except (ValueError, KeyError, TypeError) as e:
            reply = {"ok": False, "error": str(e)}
        self._send(reply)

    def command(self, cmd: str | None, request: dict) -> dict:
        engine = self.engine
        if cmd == "status":
            return {"ok": True, **self.status()}
        if cmd == "set_chute":
            chute, state = int(request["chute"]), request["state"]
            if state not in CHUTE_STATES:
                raise ValueError(f"state must be one of {', '.join(CHUTE_STATES)}")
            engine.router.set_chute_state(chute, state)
            _log(logging.INFO, "chute state", chute=chute, state=state, source="control")
            return {"ok": True, "chute": chute, "state": state}
        if cmd == "stop":
            _log(logging.INFO, "stop requested", source="control")
            engine.request_stop()
            return {"ok": True, "stopping": True}
        if cmd == "load_plan":
            raise ValueError("a plan load is already in progress")
        raise ValueError(f"unknown cmd {cmd!r} (status, load_plan, set_chute, stop)")

    def status(self) -> dict:
        engine = self.engine
        engine._fold_metrics()
        states = engine.router.core.chute_states()
        unavailable = {int(c): CHUTE_STATES[s]
                       for c, s in zip(np.nonzero(states)[0], states[states != 0])}
        return {
            "plan": summary(engine.plan),
            "decision_seq": engine.decision_seq,
            "uptime_s": round(time.time() - engine.started, 3),
            "endpoints": engine.endpoints,
            "chutes_unavailable": unavailable,
            "audit_unavailable": engine.audit_unavailable,
            "decisions_withheld": engine.decisions_withheld,
            "chutes": self.chutes(),
            "counters": engine.metrics.snapshot(),
        }

    def chutes(self) -> list[dict]:
        """Every chute of the running plan in plan order: number, destination (None for a
        spare or special chute), the special reasons it takes, state, decisions sent there
        ever and since the PLC last reported it emptied (metrics.ChuteCounts)."""
        counts = self.engine.metrics.chutes
        states = self.engine.router.core.chute_states()
        with self.engine.metrics.lock:
            return [{"chute": chute, "destination": destination, "special": list(special),
                     "state": CHUTE_STATES[states[chute]],
                     "decisions": int(counts.decisions[chute]),
                     "since_emptied": counts.since_emptied(chute)}
                    for chute, destination, special in chute_table(self.engine.plan)]

    @staticmethod
    def _load_plan(path: str | None):
        """Runs in the loader thread: validate and compile, never touching the live router."""
        plan = load_plan(path)
        return plan, compile_plan(plan)

    def finish_plan_load(self) -> None:
        """If a plan load has finished: swap to it (or keep the running plan) and reply."""
        future = self._pending_load
        if future is None or not future.done():
            return
        self._pending_load = None
        metrics = self.engine.metrics
        try:
            plan, compiled = future.result()
        except PlanError as e:
            metrics.plan_load_failures += 1
            reply = {"ok": False, "error": "plan refused; the running plan stays",
                     "problems": [p.to_dict() for p in e.problems]}
            _log(logging.WARNING, "plan refused", problems=[str(p) for p in e.problems])
        except Exception as e:      # noqa: BLE001 - any failure keeps the running plan
            metrics.plan_load_failures += 1
            reply = {"ok": False, "error": f"plan refused; the running plan stays: {e}"}
            _log(logging.WARNING, "plan refused", error=str(e))
        else:
            self.engine.use_plan(plan, compiled)
            metrics.plan_loads += 1
            reply = {"ok": True, "plan": summary(plan)}
            _log(logging.INFO, "plan loaded", plan=plan.name, plan_version=plan.version,
                 source=plan.source)
        self._send(reply)
