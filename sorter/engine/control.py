"""The engine's control socket: JSON requests in, JSON replies out (docs/engine.md).

The socket is a ROUTER, so REQ clients talk to it as to a REP socket, but a request whose
reply is still owed (a plan load) does not hold up the others: `status`, `set_chute`, `stop`
are answered at once, always; `load_plan` checks, reads, validates and compiles the plan in
a loader thread and is answered when it is done, between two batches, so a plan swap is
atomic for routing. Whatever a request holds, it gets a reply and the engine keeps running.
Runs on the engine's thread, which owns the socket.
"""
from __future__ import annotations

import json
import logging
import os
import stat
import time
import tomllib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sorter.core.codes import CHUTE_STATES
from sorter.core.router import compile_plan
from sorter.engine.metrics import chute_table
from sorter.plan import PlanError, load_plan, summary

if TYPE_CHECKING:
    from sorter.engine.process import Engine

log = logging.getLogger("sorter.engine")

MAX_REQUEST_BYTES = 64 * 1024      # a control request is a small JSON object


def _log(level: int, event: str, **fields) -> None:
    log.log(level, event, extra={"fields": fields})


class RequestError(ValueError):
    """A request the engine refuses; its message is the reply's `error`."""


def _describe(value) -> str:
    """A value named in an error, cut short (a request may hold anything)."""
    text = repr(value) if isinstance(value, (str, int, float, bool)) or value is None \
        else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def chute_number(value, chutes) -> int:
    """The chute a request names: a whole number (or its decimal digits) that is one of
    `chutes` (the running plan's). Anything else is a RequestError that says why."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 6:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"chute must be a whole number, got {_describe(value)}")
    if value not in chutes:
        lo, hi = min(chutes), max(chutes)
        known = f"{lo}..{hi}" if hi - lo + 1 == len(chutes) else f"{len(chutes)} chutes, {lo}..{hi}"
        raise RequestError(f"chute {_describe(value)} is not a chute of the running plan ({known})")
    return value


def check_plan_files(path, plan_dir, max_bytes: int) -> Path:
    """The plan file a `load_plan` request names, checked with every file it refers to:
    each must be a regular file below `plan_dir` (after symlinks) of at most `max_bytes`.
    Never opens a FIFO or a device. Raises RequestError. Runs in the loader thread."""
    if not isinstance(path, str) or not path:
        raise RequestError("load_plan needs `path`: the plan's TOML file (a string)")
    root = Path(os.path.realpath(plan_dir))
    toml = _admit(Path(path) if os.path.isabs(path) else root / path, root, max_bytes)
    try:
        doc = tomllib.loads(toml.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return toml                 # the plan loader names the problem with file and line
    files = doc.get("files")
    if isinstance(files, dict):
        for rel in files.values():
            if isinstance(rel, str) and rel:
                p = Path(rel)
                _admit(p if p.is_absolute() else toml.parent / p, root, max_bytes, missing_ok=True)
    return toml


def _admit(path: Path, root: Path, max_bytes: int, *, missing_ok: bool = False) -> Path:
    if "\x00" in str(path):
        raise RequestError(f"{str(path)!r}: a path holds no NUL byte")
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise RequestError(f"{path}: outside the plan directory {root} (setting plan_dir)")
    try:
        st = os.stat(real)
    except OSError as e:
        if missing_ok:
            return real
        raise RequestError(f"{path}: cannot read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise RequestError(f"{path}: not a regular file")
    if st.st_size > max_bytes:
        raise RequestError(f"{path}: {st.st_size} bytes, more than the limit of {max_bytes} "
                           f"(setting plan_max_mb)")
    return real


class Control:
    """Answers the requests of `engine.control` (a ROUTER socket) for `engine`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan-loader")
        self._pending_load: Future | None = None
        self._pending_envelope: list[bytes] = []
        config = engine.config
        self.plan_dir = config.plan_dir or os.getcwd()
        self.plan_max_bytes = int(config.plan_max_mb * 1024 * 1024)

    @property
    def loading(self) -> bool:
        """A plan load is in progress (its reply is still owed)."""
        return self._pending_load is not None

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _send(self, envelope: list[bytes], reply: dict) -> None:
        try:
            body = json.dumps(reply, default=str).encode()
        except (TypeError, ValueError, RecursionError) as e:
            body = json.dumps({"ok": False, "error": f"reply not encodable: {e}"}).encode()
        self.engine.control.send_multipart([*envelope, body])

    def handle(self) -> None:
        """Receive one request and answer it (a plan load: when it finishes)."""
        frames = self.engine.control.recv_multipart()
        # a REQ peer's message: its identity (added by ROUTER), an empty delimiter, the body
        split = frames.index(b"") + 1 if b"" in frames else 1
        envelope, body = frames[:split], frames[split:]
        reply = self.answer(body, envelope)
        if reply is not None:
            self._send(envelope, reply)

    def answer(self, body: list[bytes], envelope: list[bytes] | None = None) -> dict | None:
        """The reply to one request (its frames after the envelope), or None when it is owed
        later (a plan load). Never raises: whatever the request, a reply."""
        try:
            request = self._parse(body)
            cmd = request.get("cmd")
            if cmd == "load_plan":
                if self._pending_load is not None:
                    raise RequestError("a plan load is already in progress")
                if not isinstance(request.get("path"), str) or not request["path"]:
                    raise RequestError("load_plan needs `path`: the plan's TOML file (a string)")
                self._pending_load = self._loader.submit(self._load_plan, request["path"])
                self._pending_envelope = list(envelope or [])
                return None                      # the reply goes out when the load finishes
            return self.command(cmd, request)
        except RequestError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:      # noqa: BLE001 - no request may stop the engine
            _log(logging.WARNING, "control request failed", error=f"{type(e).__name__}: {e}")
            return {"ok": False, "error": f"request failed: {type(e).__name__}"}

    @staticmethod
    def _parse(body: list[bytes]) -> dict:
        if len(body) != 1:
            raise RequestError(f"a request is one single-part message, got {len(body)} parts")
        if len(body[0]) > MAX_REQUEST_BYTES:
            raise RequestError(f"a request is at most {MAX_REQUEST_BYTES} bytes")
        try:
            request = json.loads(body[0])
        except RecursionError:
            raise RequestError("request not JSON: nested too deeply") from None
        except ValueError as e:
            raise RequestError(f"request not JSON: {e}") from None
        if not isinstance(request, dict):
            raise RequestError("a request is a JSON object")
        return request

    def command(self, cmd, request: dict) -> dict:
        engine = self.engine
        if cmd == "status":
            return {"ok": True, **self.status()}
        if cmd == "set_chute":
            chute = chute_number(request.get("chute"), frozenset(engine.plan.chutes))
            state = request.get("state")
            if not isinstance(state, str) or state not in CHUTE_STATES:
                raise RequestError(f"state must be one of {', '.join(CHUTE_STATES)}, "
                                   f"got {_describe(state)}")
            engine.router.set_chute_state(chute, state)
            _log(logging.INFO, "chute state", chute=chute, state=state, source="control")
            return {"ok": True, "chute": chute, "state": state}
        if cmd == "stop":
            _log(logging.INFO, "stop requested", source="control")
            engine.request_stop()
            return {"ok": True, "stopping": True}
        raise RequestError(f"unknown cmd {_describe(cmd)} (status, load_plan, set_chute, stop)")

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

    def _load_plan(self, path: str):
        """Runs in the loader thread: admit the files, validate and compile, never touching
        the live router."""
        plan = load_plan(check_plan_files(path, self.plan_dir, self.plan_max_bytes))
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
        self._send(self._pending_envelope, reply)
