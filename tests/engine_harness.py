"""A real engine subprocess on loopback, and the sockets a scanner, a PLC and an operator use.

Every endpoint is a wildcard port on 127.0.0.1; the engine reports the ports it got in its
`ready` log line.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import zmq

from sorter import wire
from sorter.engine.control_client import request
from sorter.core.events import EventBatch
from sorter.engine.launch import Child, engine_command, env_with_path

ROOT = Path(__file__).resolve().parent.parent


class EngineProcess:
    def __init__(self, tmp_path: Path, *args: str, deadline_ms: float = 0):
        self.audit_dir = tmp_path / "audit"
        cmd = engine_command(self.audit_dir, "--deadline-ms", str(deadline_ms), *args)
        self.child = Child("engine", cmd, tmp_path / "engine.log", cwd=tmp_path,
                           env=env_with_path(ROOT))
        self.proc = self.child.proc
        self.ctx = None
        try:
            self.endpoints = self.child.wait_ready()["endpoints"]
        except RuntimeError:
            self.child.kill()
            raise
        self.ctx = zmq.Context()
        self.scanner = self._socket(zmq.PUSH, "scans")
        self.plc = self._socket(zmq.PULL, "decisions")
        self.plc.setsockopt(zmq.RCVTIMEO, 10_000)
        self.feedback = self._socket(zmq.PUSH, "feedback")
        time.sleep(0.2)           # let the connections settle before the first message

    @property
    def log(self) -> list[dict]:
        """The engine's JSON log lines so far."""
        return self.child.lines()

    def _socket(self, kind: int, name: str) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.endpoints[name])
        return s

    # -- talking to it ------------------------------------------------------------------------
    def control(self, cmd: str, **fields) -> dict:
        return request(self.endpoints["control"], {"cmd": cmd, **fields}, timeout_s=60,
                       context=self.ctx)

    def send_scans(self, reads: list[list[bytes]], *, first_parcel: int = 0, ts_ns=None,
                   recirculations=None) -> EventBatch:
        n = len(reads)
        batch = EventBatch.from_reads(
            reads, parcel_ids=np.arange(first_parcel, first_parcel + n, dtype=np.uint64),
            ts_ns=ts_ns if ts_ns is not None else np.full(n, time.time_ns(), np.int64),
            recirculations=recirculations)
        self.scanner.send(wire.encode_scan(batch, np.arange(first_parcel, first_parcel + n,
                                                            dtype=np.uint64)))
        return batch

    def receive_decisions(self, n: int) -> list[wire.DecisionBatch]:
        """Decision messages until n decisions arrived (heartbeats skipped)."""
        got, out = 0, []
        while got < n:
            header, payload = wire.decode_message(self.plc.recv())
            if header.kind == wire.DECISION:
                out.append(payload)
                got += len(payload)
        return out

    def wait_until(self, predicate, timeout_s: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.control("status")
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met; last status {status}")
            time.sleep(0.05)

    def stop(self, sig: int | None = signal.SIGTERM, timeout_s: float = 30) -> int | None:
        """Signal it (None: only wait), then its exit code (None: it did not stop)."""
        try:
            return self.child.stop(sig, timeout_s)
        finally:
            self.close_sockets()

    def close_sockets(self) -> None:
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
            self.ctx = None

    def kill(self) -> None:
        self.child.kill()
        self.close_sockets()


def flatten(batches: list[wire.DecisionBatch]) -> dict[str, np.ndarray]:
    cols = {}
    for name in ("parcel_id", "seq", "decision_seq", "chute", "reason"):
        cols[name] = np.concatenate([getattr(b, name) for b in batches]) if batches else np.zeros(0)
    cols["plan_version"] = np.concatenate([[b.plan_version] * len(b) for b in batches]) \
        if batches else np.zeros(0)
    return cols
