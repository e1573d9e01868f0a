"""The gateway's engine side: DECISION messages in, CHUTE_STATUS and SORT_CONFIRM out (ZeroMQ).

Every protocol shell uses this one class. Decisions are read as soon as they arrive and each
gets its decision time on the gateway's monotonic clock (`Instruction.born`): from the
message's `decided_ns` (a version 2 DECISION, docs/protocol.md 6.1: the engine's wall clock,
so time spent in ZeroMQ queues counts), or for a version 1 message the moment the gateway
received it. The protocol side then drops what has aged past `--max-age-ms` before it goes
out. The receive high-water mark is small so that a stalled gateway holds little in ZeroMQ.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import zmq

from sorter import wire

from .log import log_event
from .session import Instruction

log = logging.getLogger("plc.engine")

__all__ = ["EngineLink"]


class EngineLink:
    """PULL on the engine's decisions endpoint, PUSH on its feedback endpoint."""

    def __init__(self, decisions: str, feedback: str, *, context: zmq.Context | None = None,
                 rcvhwm: int = 1000, sndhwm: int = 10000, linger_ms: int = 500,
                 heartbeat_s: float = 1.0, clock=time.monotonic, wall_ns=time.time_ns):
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.clock = clock
        self.wall_ns = wall_ns
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.RCVHWM, rcvhwm)
        self.pull.connect(decisions)
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, linger_ms)
        self.push.setsockopt(zmq.SNDHWM, sndhwm)
        self.push.connect(feedback)
        self.heartbeat_s = heartbeat_s
        self._next_hb = 0.0
        self._batch_seq = 0
        self.last_engine_heartbeat: float | None = None
        self.counters = {"decision_messages": 0, "decisions": 0, "engine_heartbeats": 0,
                         "engine_malformed": 0, "engine_unexpected": 0, "confirm_messages": 0,
                         "confirms": 0, "status_messages": 0, "statuses": 0,
                         "feedback_dropped": 0}

    def recv_decisions(self, limit: int = 1 << 30) -> list[Instruction]:
        """Every decision queued now (non-blocking), each stamped with the receive time."""
        out: list[Instruction] = []
        while len(out) < limit:
            try:
                frame = self.pull.recv(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            now = self.clock()
            try:
                header, payload = wire.decode_message(frame)
            except wire.WireError as e:
                self.counters["engine_malformed"] += 1
                log_event(log, logging.WARNING, "malformed engine message", code=e.code,
                          offset=e.offset)
                continue
            if header.kind == wire.HEARTBEAT:
                self.counters["engine_heartbeats"] += 1
                self.last_engine_heartbeat = now
                continue
            if header.kind != wire.DECISION:
                self.counters["engine_unexpected"] += 1
                continue
            self.counters["decision_messages"] += 1
            self.counters["decisions"] += len(payload)
            born = now
            if payload.decided_ns is not None:     # version 2: the engine's decision time
                born = now - max(0.0, (self.wall_ns() - payload.decided_ns) / 1e9)
            for pid, ch, rs, ds in zip(payload.parcel_id.tolist(), payload.chute.tolist(),
                                       payload.reason.tolist(), payload.decision_seq.tolist()):
                out.append(Instruction(pid, ch, 0, rs, born, ds))
        return out

    def send_confirms(self, items: list[tuple[int, int, int]]) -> None:
        """SORT_CONFIRM records (parcel_id, chute, outcome code), one message per call."""
        for i in range(0, len(items), wire.MAX_RECORDS):
            part = items[i:i + wire.MAX_RECORDS]
            pid, chute, outcome = (np.array(c, dtype=t) for c, t in
                                   zip(zip(*part), (np.uint64, np.uint16, np.uint8)))
            if self._send(wire.encode_sort_confirm(pid, chute, outcome, self._seq())):
                self.counters["confirm_messages"] += 1
                self.counters["confirms"] += len(part)

    def send_chute_states(self, items: list[tuple[int, int]]) -> None:
        """CHUTE_STATUS records (chute, state code), in order (a later one wins)."""
        for i in range(0, len(items), wire.MAX_RECORDS):
            part = items[i:i + wire.MAX_RECORDS]
            chutes, states = zip(*part)
            if self._send(wire.encode_chute_status(np.array(chutes, np.uint16),
                                                   np.array(states, np.uint8), self._seq())):
                self.counters["status_messages"] += 1
                self.counters["statuses"] += len(part)

    def tick(self, now: float) -> None:
        """A HEARTBEAT on the feedback socket every heartbeat_s."""
        if now >= self._next_hb:
            self._next_hb = now + self.heartbeat_s
            self._send(wire.encode_heartbeat(self._seq()))

    def _seq(self) -> int:
        self._batch_seq = (self._batch_seq + 1) & 0xFFFFFFFF
        return self._batch_seq

    def _send(self, frame: bytes) -> bool:
        try:
            self.push.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.counters["feedback_dropped"] += 1
            return False

    def close(self) -> None:
        self.pull.close(0)
        self.push.close()
        if self._own_ctx:
            self.ctx.term()
