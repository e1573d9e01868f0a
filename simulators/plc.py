"""The PLC / sorter simulator: a sorter loop that consumes the engine's decisions.

Two layers, as docs/simulators.md describes:

- `SorterLoop`, a sans-IO model of the machine: carriers travelling from the scanner to the
  chutes, chutes that fill up and are emptied, failed diverts, jams and disabled chutes, and
  parcels that stay on the loop and come round to the scanner again (through
  `simulators.model.LoopBack`). No sockets, no clock: time is given to every call
  (`on_decisions(batch, now_s)`, `advance(now_s)`), randomness comes from a seeded
  `random.Random`, so a run is reproducible to the event.
- `PlcSimulator`, the I/O shell: a thread with a PULL socket on the engine's decisions endpoint
  and a PUSH socket on its feedback endpoint. It feeds the model and sends what the model
  reports: CHUTE_STATUS and SORT_CONFIRM messages (batched), and a HEARTBEAT every second.

    loop = SorterLoop(plan, capacity=5, seed=1)
    loop.on_decisions(batch, now_s=0.0)          # a decoded wire.DecisionBatch
    loop.advance(3.0)                            # carriers reach their chutes
    loop.take_chute_changes()                    # [(5, "full")]
    loop.take_confirmations()                    # [(parcel_id, chute, "sorted"), ...]

    sim = PlcSimulator(plan, "tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557", seed=1,
                       capacity=10, empty_after_s=30)
    sim.start(); ...; print(sim.snapshot()); sim.stop()
"""
from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import zmq

from sorter import wire
from sorter.core.codes import CHUTE_STATES, REASONS
from sorter.plan import Plan

from .model import LoopBack, Registry

__all__ = ["LoopConfig", "SorterLoop", "PlcSimulator", "plan_chutes", "main"]

AVAILABLE, DISABLED, FULL = CHUTE_STATES      # "available", "disabled", "full"
SORTED, FAILED_DIVERT, LOST = wire.OUTCOMES   # "sorted", "failed_divert", "lost"


@dataclass(frozen=True)
class LoopConfig:
    """The machine's parameters. Every field can also be passed to `SorterLoop` and
    `PlcSimulator` as a keyword argument."""
    # chutes
    capacity: int = 40                      # parcels a chute holds before it reports full
    capacities: Mapping[int, int] = field(default_factory=dict)   # per-chute override
    empty_after_s: float | None = 60.0      # an operator empties a full chute after this; None: never
    drain_per_s: float = 0.0                # continuous emptying, parcels per second per chute; 0: off
    resume_fill: float = 0.5                # with draining: a full chute is available again at this fraction
    disabled: Sequence[int] = ()            # chutes disabled from the start (until enable())
    jam_rate_per_h: float = 0.0             # random jams over the whole machine, per hour
    jam_clear_s: float = 60.0               # a jammed chute is disabled this long
    # carriers
    speed_mps: float = 2.5                  # loop speed
    first_chute_m: float = 10.0             # scanner to the first chute
    chute_spacing_m: float = 1.5            # between neighbouring chutes
    return_m: float = 20.0                  # last chute back to the scanner
    # divert outcomes
    failed_divert_p: float = 0.005          # the divert fails, the parcel stays on the carrier
    lost_p: float = 0.0                     # the parcel falls off / is not found at the divert

    def __post_init__(self):
        if self.capacity < 1 or any(c < 1 for c in self.capacities.values()):
            raise ValueError("chute capacities must be at least 1")
        if self.empty_after_s is not None and self.empty_after_s < 0:
            raise ValueError("empty_after_s must be >= 0 or None")
        if self.drain_per_s < 0 or self.jam_rate_per_h < 0 or self.jam_clear_s < 0:
            raise ValueError("rates and durations must be >= 0")
        if not 0 <= self.resume_fill < 1:
            raise ValueError("resume_fill must be within [0, 1)")
        if self.speed_mps <= 0:
            raise ValueError("speed_mps must be > 0")
        if min(self.first_chute_m, self.chute_spacing_m, self.return_m) < 0:
            raise ValueError("distances must be >= 0")
        if not (0 <= self.failed_divert_p <= 1 and 0 <= self.lost_p <= 1
                and self.failed_divert_p + self.lost_p <= 1):
            raise ValueError("failed_divert_p and lost_p are probabilities (sum at most 1)")


def plan_chutes(plan: Plan) -> list[int]:
    """The chutes the simulator manages: every chute of a destination group and every special
    chute (sorted). Spare chutes (declared, in no group) are never decided, so never reported."""
    chutes = {c for d in plan.destinations for c in d.chutes} | set(plan.special.values())
    chutes.discard(0)
    return sorted(chutes)


@dataclass
class _Chute:
    number: int
    position: int                 # index along the loop (0 = first after the scanner)
    capacity: int
    fill: int = 0
    full: bool = False
    full_token: int = 0           # which "full" episode an EMPTY event belongs to
    drain_t: float = 0.0          # draining clock (lazy, discrete parcels)
    disabled: bool = False        # by configuration or by an operator
    jammed: bool = False
    reported: str | None = None   # last state emitted
    diverted: int = 0             # parcels sorted into it, ever
    emptied: int = 0

    @property
    def state(self) -> str:
        if self.disabled or self.jammed:
            return DISABLED
        return FULL if self.full else AVAILABLE


@dataclass
class _Carrier:
    parcel_id: int
    chute: int
    decided_at: float
    gen: int
    reason: str


# event kinds
_ARRIVE, _BACK, _EMPTY, _JAM, _UNJAM = range(5)


class SorterLoop:
    """Sans-IO model of a sorter loop (see the module docstring and docs/simulators.md).

    Inputs: `on_decisions(batch, now_s)` / `on_decision(...)`, `advance(now_s)`, and the
    operator actions `disable`, `enable`, `empty`. Outputs, polled: `take_chute_changes()`,
    `take_confirmations()`, `snapshot()`; recirculating parcels go to `loopback`.
    """

    def __init__(self, plan: Plan, config: LoopConfig | None = None, *,
                 registry: Registry | None = None, loopback: LoopBack | None = None,
                 seed: int | None = 0, now_s: float = 0.0, chutes: Iterable[int] | None = None,
                 **overrides: Any):
        cfg = config or LoopConfig()
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        self.config = cfg
        self.plan = plan
        self.registry = registry
        self.loopback = loopback
        self.now = float(now_s)
        self._present = self.now           # the `now_s` of the call being processed
        self._rng = random.Random(seed)                  # divert outcomes
        self._jam_rng = random.Random(f"{seed}/jams")    # jams: independent of the traffic

        managed = sorted(set(chutes) if chutes is not None else plan_chutes(plan))
        # positions along the loop: the machine's chutes in number order, spare ones included
        machine = sorted(set(plan.chutes) | set(managed))
        position = {c: i for i, c in enumerate(machine)}
        self.chutes: dict[int, _Chute] = {
            c: _Chute(c, position[c], int(cfg.capacities.get(c, cfg.capacity)), drain_t=self.now)
            for c in managed}
        for c in list(cfg.capacities) + list(cfg.disabled):
            if c not in self.chutes:
                raise ValueError(f"chute {c} is not a chute of the plan's groups or special chutes")
        for c in cfg.disabled:
            self.chutes[c].disabled = True
        self._destination_of = {c: d.name for d in plan.destinations for c in d.chutes}
        last = max(position.values(), default=0)
        self.loop_length_m = cfg.first_chute_m + last * cfg.chute_spacing_m + cfg.return_m
        self.loop_time_s = self.loop_length_m / cfg.speed_mps

        self._carriers: dict[int, _Carrier] = {}
        self._events: list[tuple[float, int, int, Any]] = []
        self._event_seq = 0
        self._gen = 0
        self._changes: list[tuple[int, str]] = []
        self._confirms: list[tuple[int, int, str]] = []
        self.counts: dict[str, int] = {
            "decisions": 0, "duplicates": 0, "sorted": 0, "recirculated": 0,
            "failed_diverts": 0, "refused_diverts": 0, "unknown_chute": 0, "lost": 0,
            "sent_round": 0, "returned": 0, "emptied": 0, "jams": 0, "wrong_destination": 0,
        }
        self.reasons: dict[str, int] = {r: 0 for r in REASONS}
        self.plan_version: str | None = None
        for ch in self.chutes.values():                 # what start() announces
            ch.reported = ch.state
        if cfg.jam_rate_per_h > 0 and self.chutes:
            self._schedule_jam()

    # -- geometry -----------------------------------------------------------------------------
    def travel_time_s(self, chute: int) -> float:
        """Seconds from the scanner to `chute`'s divert point."""
        c = self.config
        return (c.first_chute_m + self.chutes[chute].position * c.chute_spacing_m) / c.speed_mps

    # -- inputs ---------------------------------------------------------------------------------
    def on_decisions(self, batch: wire.DecisionBatch, now_s: float) -> None:
        """Put the parcels of a decoded DECISION message on their carriers at `now_s` (the
        model first advances to `now_s`)."""
        self.advance(now_s)
        self.plan_version = batch.plan_version
        for pid, chute, reason in zip(batch.parcel_id.tolist(), batch.chute.tolist(),
                                      batch.reason.tolist()):
            self._decide(pid, chute, REASONS[reason] if reason < len(REASONS) else str(reason))

    def on_decision(self, parcel_id: int, chute: int, now_s: float,
                    reason: str = "sorted") -> None:
        """One decision (for tests and demos without wire messages)."""
        self.advance(now_s)
        self._decide(int(parcel_id), int(chute), reason)

    def _decide(self, pid: int, chute: int, reason: str) -> None:
        self.counts["decisions"] += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if pid in self._carriers:          # a newer decision replaces one still travelling
            self.counts["duplicates"] += 1
        self._gen += 1
        car = _Carrier(pid, chute, self.now, self._gen, reason)
        self._carriers[pid] = car
        if chute == 0:                     # no divert: once round the loop
            self.counts["recirculated"] += 1
            self._send_round(car)
        elif chute not in self.chutes:     # the machine has no such chute: nothing diverts it
            self.counts["unknown_chute"] += 1
            self._confirms.append((pid, 0, FAILED_DIVERT))
            self._send_round(car)
        else:
            self._push(self.now + self.travel_time_s(chute), _ARRIVE, (pid, car.gen))

    def advance(self, now_s: float) -> None:
        """Process every event due at or before `now_s`, in time order. Time never goes back:
        an earlier `now_s` is ignored."""
        if now_s < self.now:
            return
        self._present = now_s
        while self._events and self._events[0][0] <= now_s:
            t, _, kind, data = heapq.heappop(self._events)
            self.now = max(self.now, t)
            self._handle(kind, data)
        self.now = now_s
        if self.config.drain_per_s > 0:
            for ch in self.chutes.values():
                self._drain(ch)

    # -- operator actions ---------------------------------------------------------------------
    def disable(self, chute: int, now_s: float | None = None) -> None:
        """An operator takes `chute` out of service (until `enable`)."""
        self._operator(chute, now_s, disabled=True)

    def enable(self, chute: int, now_s: float | None = None) -> None:
        """An operator puts `chute` back into service (a jam still running keeps it disabled)."""
        self._operator(chute, now_s, disabled=False)

    def empty(self, chute: int, now_s: float | None = None) -> None:
        """An operator empties `chute` now."""
        if now_s is not None:
            self.advance(now_s)
        self._empty(self.chutes[chute])

    def _operator(self, chute: int, now_s: float | None, disabled: bool) -> None:
        if now_s is not None:
            self.advance(now_s)
        ch = self.chutes[chute]
        ch.disabled = disabled
        self._report(ch)

    # -- outputs --------------------------------------------------------------------------------
    def take_chute_changes(self) -> list[tuple[int, str]]:
        """Chute state changes since the last call, in order: (chute, state)."""
        out, self._changes = self._changes, []
        return out

    def take_confirmations(self) -> list[tuple[int, int, str]]:
        """Sort confirmations since the last call: (parcel_id, chute entered or 0, outcome)."""
        out, self._confirms = self._confirms, []
        return out

    def chute_states(self) -> list[tuple[int, str]]:
        """The current state of every chute (what a full status message carries)."""
        return [(c, ch.state) for c, ch in self.chutes.items()]

    @property
    def on_loop(self) -> int:
        """Parcels on carriers: travelling to a chute or going round to the scanner."""
        return len(self._carriers)

    def next_event_s(self) -> float | None:
        """When the next scheduled event is due (None: nothing scheduled)."""
        return self._events[0][0] if self._events else None

    def snapshot(self) -> dict:
        """JSON-friendly state for a live view: per chute state, fill, capacity, parcels
        diverted; the counters; parcels on the loop."""
        return {
            "now_s": self.now,
            "loop_time_s": self.loop_time_s,
            "plan_version": self.plan_version,
            "on_loop": self.on_loop,
            "chutes": {c: {"state": ch.state, "fill": ch.fill, "capacity": ch.capacity,
                           "diverted": ch.diverted, "emptied": ch.emptied}
                       for c, ch in self.chutes.items()},
            "diverted": {c: ch.diverted for c, ch in self.chutes.items() if ch.diverted},
            "counts": dict(self.counts),
            "reasons": {r: n for r, n in self.reasons.items() if n},
        }

    # -- internals ----------------------------------------------------------------------------
    def _push(self, t: float, kind: int, data: Any) -> None:
        self._event_seq += 1
        heapq.heappush(self._events, (t, self._event_seq, kind, data))

    def _report(self, ch: _Chute) -> None:
        state = ch.state
        if state != ch.reported:
            ch.reported = state
            self._changes.append((ch.number, state))

    def _send_round(self, car: _Carrier) -> None:
        """The parcel stays on its carrier: it reaches the scanner one loop time after it left
        it. LoopBack's clock reads the present (the `now_s` of the current call), which may be
        later than the event being processed, hence the delay counted from `_present`."""
        back_at = car.decided_at + self.loop_time_s
        self._push(back_at, _BACK, (car.parcel_id, car.gen))
        self.counts["sent_round"] += 1
        if self.loopback is not None:
            self.loopback.send_round(car.parcel_id, max(0.0, back_at - self._present))

    def _handle(self, kind: int, data: Any) -> None:
        if kind == _ARRIVE:
            pid, gen = data
            car = self._carriers.get(pid)
            if car is not None and car.gen == gen:
                self._arrive(car)
        elif kind == _BACK:
            pid, gen = data
            car = self._carriers.get(pid)
            if car is not None and car.gen == gen:
                del self._carriers[pid]
                self.counts["returned"] += 1
        elif kind == _EMPTY:
            chute, token = data
            ch = self.chutes[chute]
            self._drain(ch)
            if ch.full and ch.full_token == token:
                self._empty(ch)
        elif kind == _JAM:
            self._jam()
        elif kind == _UNJAM:
            ch = self.chutes[data]
            ch.jammed = False
            self._report(ch)

    def _arrive(self, car: _Carrier) -> None:
        ch = self.chutes[car.chute]
        self._drain(ch)
        if ch.state != AVAILABLE:
            # the chute went full or disabled while the parcel travelled: the PLC does not
            # divert into it; the parcel is reported not sorted and goes round
            self.counts["refused_diverts"] += 1
            self._fail(car)
            return
        r = self._rng.random()
        c = self.config
        if r < c.lost_p:
            del self._carriers[car.parcel_id]
            self.counts["lost"] += 1
            self._confirms.append((car.parcel_id, 0, LOST))
        elif r < c.lost_p + c.failed_divert_p:
            self.counts["failed_diverts"] += 1
            self._fail(car)
        else:
            del self._carriers[car.parcel_id]
            self._divert(ch, car.parcel_id)

    def _fail(self, car: _Carrier) -> None:
        self._confirms.append((car.parcel_id, 0, FAILED_DIVERT))
        self._send_round(car)

    def _divert(self, ch: _Chute, pid: int) -> None:
        if ch.fill == 0:
            ch.drain_t = self.now
        ch.fill += 1
        ch.diverted += 1
        self.counts["sorted"] += 1
        self._confirms.append((pid, ch.number, SORTED))
        if self.registry is not None:
            parcel = self.registry.get(pid)
            dest = self._destination_of.get(ch.number)
            if parcel is not None and dest is not None and dest != parcel.expected_destination:
                self.counts["wrong_destination"] += 1
        if not ch.full and ch.fill >= ch.capacity:
            ch.full = True
            ch.full_token += 1
            if self.config.empty_after_s is not None:
                self._push(self.now + self.config.empty_after_s, _EMPTY, (ch.number, ch.full_token))
            self._report(ch)

    def _empty(self, ch: _Chute) -> None:
        ch.fill = 0
        ch.drain_t = self.now
        ch.emptied += 1
        self.counts["emptied"] += 1
        ch.full = False
        self._report(ch)

    def _drain(self, ch: _Chute) -> None:
        """Continuous emptying up to self.now, one whole parcel at a time."""
        rate = self.config.drain_per_s
        if rate <= 0:
            return
        if ch.fill == 0:
            ch.drain_t = self.now
            return
        n = int((self.now - ch.drain_t) * rate)
        if n <= 0:
            return
        if n >= ch.fill:
            ch.fill, ch.drain_t = 0, self.now
        else:
            ch.fill -= n
            ch.drain_t += n / rate
        if ch.full and ch.fill <= int(self.config.resume_fill * ch.capacity):
            ch.full = False
            self._report(ch)

    def _schedule_jam(self) -> None:
        self._push(self.now + self._jam_rng.expovariate(self.config.jam_rate_per_h / 3600.0),
                   _JAM, None)

    def _jam(self) -> None:
        candidates = [c for c, ch in self.chutes.items() if not ch.jammed and not ch.disabled]
        if candidates:
            ch = self.chutes[self._jam_rng.choice(candidates)]
            ch.jammed = True
            self.counts["jams"] += 1
            self._report(ch)
            self._push(self.now + self.config.jam_clear_s, _UNJAM, ch.number)
        self._schedule_jam()


# ---------------------------------------------------------------------------------------------
# The I/O shell


class PlcSimulator:
    """The model behind ZeroMQ sockets, in a thread: PULL connected to the engine's decisions
    endpoint, PUSH connected to its feedback endpoint.

    `start()` connects, announces every chute's state in one CHUTE_STATUS message and starts
    the thread; `stop()` stops it and closes the sockets (and terminates the context only if
    this object created it). `snapshot()`, `disable()`, `enable()`, `empty()` are safe to call
    from other threads.
    """

    def __init__(self, plan: Plan, decisions_endpoint: str, feedback_endpoint: str,
                 registry: Registry | None = None, loopback: LoopBack | None = None,
                 seed: int | None = 0, *, config: LoopConfig | None = None,
                 context: zmq.Context | None = None, poll_ms: float = 10.0,
                 heartbeat_s: float = 1.0, resync_s: float = 10.0, linger_ms: int = 500,
                 clock: Callable[[], float] = time.monotonic, **overrides: Any):
        self.clock = clock
        self.loop = SorterLoop(plan, config, registry=registry, loopback=loopback, seed=seed,
                               now_s=clock(), **overrides)
        self.decisions_endpoint = decisions_endpoint
        self.feedback_endpoint = feedback_endpoint
        self.poll_ms = poll_ms
        self.heartbeat_s = heartbeat_s
        self.resync_s = resync_s
        self.linger_ms = linger_ms
        self._own_context = context is None
        self._ctx = context
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pull: zmq.Socket | None = None
        self._push: zmq.Socket | None = None
        self._batch_seq = 0
        self.error: BaseException | None = None
        self.last_engine_heartbeat: float | None = None    # clock() of the last engine HEARTBEAT
        self.stats: dict[str, int] = {
            "messages_in": 0, "decision_messages": 0, "engine_heartbeats": 0, "malformed": 0,
            "unexpected": 0, "status_messages": 0, "status_records": 0,
            "confirm_messages": 0, "confirm_records": 0, "heartbeats_sent": 0, "send_dropped": 0,
        }

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "PlcSimulator":
        if self._thread is not None:
            raise RuntimeError("already started")
        if self._ctx is None:
            self._ctx = zmq.Context()
        try:
            self._pull = self._ctx.socket(zmq.PULL)
            self._pull.setsockopt(zmq.LINGER, 0)
            self._pull.connect(self.decisions_endpoint)
            self._push = self._ctx.socket(zmq.PUSH)
            self._push.setsockopt(zmq.LINGER, self.linger_ms)
            self._push.connect(self.feedback_endpoint)
        except zmq.ZMQError:
            self._close()
            raise
        with self._lock:
            self._send_status(self.loop.chute_states())
            self.loop.take_chute_changes()       # the full status supersedes them
        self._thread = threading.Thread(target=self._run, name="plc-simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread, send what the model still has to report, close the sockets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise RuntimeError("PLC simulator thread did not stop")
        else:
            self._close()

    def __enter__(self) -> "PlcSimulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def engine_alive(self, within_s: float = 3.0) -> bool:
        """An engine HEARTBEAT arrived within the last `within_s` seconds."""
        t = self.last_engine_heartbeat
        return t is not None and self.clock() - t <= within_s

    # -- thread-safe views and operator actions ------------------------------------------------
    def snapshot(self) -> dict:
        with self._lock:
            snap = self.loop.snapshot()
            snap["link"] = {**self.stats, "last_engine_heartbeat": self.last_engine_heartbeat,
                            "engine_alive": self.engine_alive()}
            return snap

    def disable(self, chute: int) -> None:
        with self._lock:
            self.loop.disable(chute, self.clock())

    def enable(self, chute: int) -> None:
        with self._lock:
            self.loop.enable(chute, self.clock())

    def empty(self, chute: int) -> None:
        with self._lock:
            self.loop.empty(chute, self.clock())

    # -- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        now = self.clock()
        next_heartbeat = now
        next_resync = now + self.resync_s if self.resync_s > 0 else float("inf")
        try:
            while not self._stop.is_set():
                timeout = self.poll_ms
                due = self.loop.next_event_s()
                if due is not None:
                    timeout = max(0.0, min(timeout, (due - self.clock()) * 1000.0))
                if poller.poll(timeout):
                    self._drain_decisions()
                now = self.clock()
                with self._lock:
                    self.loop.advance(now)
                    if now >= next_resync:
                        next_resync = now + self.resync_s
                        self.loop.take_chute_changes()
                        self._send_status(self.loop.chute_states())
                    self._flush()
                if now >= next_heartbeat:
                    next_heartbeat = now + self.heartbeat_s
                    self._send(wire.encode_heartbeat(self._next_seq()))
                    self.stats["heartbeats_sent"] += 1
            with self._lock:                   # report what already happened, then leave
                self.loop.advance(self.clock())
                self._flush()
        except BaseException as e:             # noqa: BLE001 - kept for the owner to inspect
            self.error = e
            raise
        finally:
            self._close()

    def _drain_decisions(self) -> None:
        while True:
            try:
                frame = self._pull.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.stats["messages_in"] += 1
            try:
                header, payload = wire.decode_message(frame.buffer)
            except wire.WireError:
                self.stats["malformed"] += 1
                continue
            if header.kind == wire.HEARTBEAT:
                self.stats["engine_heartbeats"] += 1
                self.last_engine_heartbeat = self.clock()
            elif header.kind == wire.DECISION:
                self.stats["decision_messages"] += 1
                with self._lock:
                    self.loop.on_decisions(payload, self.clock())
            else:
                self.stats["unexpected"] += 1

    def _flush(self) -> None:
        changes = self.loop.take_chute_changes()
        if changes:
            self._send_status(changes)
        confirms = self.loop.take_confirmations()
        for i in range(0, len(confirms), wire.MAX_RECORDS):
            part = confirms[i:i + wire.MAX_RECORDS]
            pids, chutes, outcomes = zip(*part)
            if self._send(wire.encode_sort_confirm(pids, chutes, outcomes, self._next_seq())):
                self.stats["confirm_messages"] += 1
                self.stats["confirm_records"] += len(part)

    def _send_status(self, items: list[tuple[int, str]]) -> None:
        for i in range(0, len(items), wire.MAX_RECORDS):
            part = items[i:i + wire.MAX_RECORDS]
            chutes, states = zip(*part)
            if self._send(wire.encode_chute_status(chutes, states, self._next_seq())):
                self.stats["status_messages"] += 1
                self.stats["status_records"] += len(part)

    def _send(self, frame: bytes) -> bool:
        try:
            self._push.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:                      # engine gone and the queue full: resync repairs
            self.stats["send_dropped"] += 1
            return False

    def _next_seq(self) -> int:
        self._batch_seq += 1
        return self._batch_seq

    def _close(self) -> None:
        for s in (self._pull, self._push):
            if s is not None and not s.closed:
                s.close()                      # the PUSH keeps its linger to flush
        if self._own_context and self._ctx is not None:
            self._ctx.term()
            self._ctx = None


# ---------------------------------------------------------------------------------------------
# Command line: run against a local engine and print a line per second


def main(argv: list[str] | None = None) -> int:
    from sorter.plan import load_plan

    p = argparse.ArgumentParser(prog="python -m simulators.plc",
                                description="PLC / sorter simulator for a running engine")
    p.add_argument("--plan", help="plan file (default: the bundled plan)")
    p.add_argument("--decisions", default="tcp://127.0.0.1:5556")
    p.add_argument("--feedback", default="tcp://127.0.0.1:5557")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--capacity", type=int, default=40)
    p.add_argument("--empty-after", type=float, default=60.0)
    p.add_argument("--drain", type=float, default=0.0, help="parcels/s emptied per chute")
    p.add_argument("--disabled", type=int, nargs="*", default=[])
    p.add_argument("--jam-rate", type=float, default=0.0, help="jams per hour")
    p.add_argument("--speed", type=float, default=2.5)
    p.add_argument("--failed-divert", type=float, default=0.005)
    p.add_argument("--json", action="store_true", help="print the whole snapshot as JSON")
    a = p.parse_args(argv)
    sim = PlcSimulator(load_plan(a.plan), a.decisions, a.feedback, seed=a.seed,
                       capacity=a.capacity, empty_after_s=a.empty_after, drain_per_s=a.drain,
                       disabled=tuple(a.disabled), jam_rate_per_h=a.jam_rate, speed_mps=a.speed,
                       failed_divert_p=a.failed_divert)
    sim.start()
    try:
        while sim.running:
            time.sleep(1.0)
            s = sim.snapshot()
            if a.json:
                print(json.dumps(s), flush=True)
            else:
                full = [c for c, ch in s["chutes"].items() if ch["state"] != AVAILABLE]
                print(f"on_loop={s['on_loop']} {s['counts']} unavailable={full} "
                      f"engine_alive={s['link']['engine_alive']}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
