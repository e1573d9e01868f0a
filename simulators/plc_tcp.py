"""A simulated PLC that speaks TCP telegrams (a preset of `plc.telegrams`), the sorter loop behind.

The PLC's end of the session (`plc.session.PlcSession`) over one TCP connection, as a server
(`listen=`, the usual S7 TRCV_C passive side) or a client (`connect=`). Each sort instruction
goes to the machine (`Machine`: the `SorterLoop` model, or an echo); its confirmations become
sort reports and its chute changes chute status telegrams; a newly connected host first gets
the state of every chute. The accepted sequence numbers (`seen`) survive `restart()`, as a real
PLC keeps them in retentive memory, so an instruction resent after a restart is not doubled.

Faults for the tests: `silent` (reads and sends nothing: the host's life timeout must fire),
`drop_first_ack(seq)` (the ack of that instruction is lost once: the host must resend),
`send_raw(bytes)` (malformed telegrams), `restart()` (connection gone, listener reopened).
"""
from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any

from plc.session import PlcSession, Seen
from plc.telegrams import Preset, TelegramCodec
from plc.tcp import parse_hostport
from sorter.plan import Plan

from .plc_machine import Machine

__all__ = ["TcpTelegramPlc"]


class TcpTelegramPlc:
    def __init__(self, preset: Preset, plan: Plan | None = None, *, listen: str | tuple | None = None,
                 connect: str | tuple | None = None, echo: bool = False, seed: int = 0,
                 registry=None, loopback=None, session_kw: dict | None = None, **loop_kw: Any):
        if (listen is None) == (connect is None):
            listen = ("127.0.0.1", 0) if connect is None else None
        self.preset = preset
        self.codec = TelegramCodec(preset)
        self.mode = "listen" if listen is not None else "connect"
        self.peer = parse_hostport(listen if listen is not None else connect)
        self.machine = Machine(plan, echo=echo, registry=registry, loopback=loopback, seed=seed,
                               now_s=time.monotonic(), **loop_kw)
        self.seen = Seen()                          # retentive: survives restart()
        self._session_kw = session_kw or {}
        self.session = self._new_session()
        self.silent = False
        self.instructions: list[int] = []           # tracking ids acted on, in order
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._sock: socket.socket | None = None
        self._wbuf = bytearray()
        self._raw: list[bytes] = []
        self._drop: set[int] = set()
        self.address: tuple[str, int] | None = None
        self.connections = 0
        self.connected = threading.Event()

    def _new_session(self) -> PlcSession:
        return PlcSession(self.codec, seen=self.seen, **self._session_kw)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "TcpTelegramPlc":
        if self.mode == "listen":
            self._open_listener()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="plc-tcp-sim", daemon=True)
        self._thread.start()
        return self

    def _open_listener(self) -> None:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(self.address or self.peer)
        ls.listen(2)
        self._listener = ls
        self.address = ls.getsockname()[:2]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def restart(self) -> None:
        """The PLC goes down and comes back on the same port: connection and session state
        lost, the accepted sequence numbers (retentive) and the machine kept."""
        self.stop()
        self.session = self._new_session()
        self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- faults and views ----------------------------------------------------------------------
    def drop_first_ack(self, seq: int) -> None:
        with self.lock:
            self.session.drop_acks.add(seq)

    def send_raw(self, data: bytes) -> None:
        with self.lock:
            self._raw.append(data)

    def snapshot(self) -> dict:
        with self.lock:
            return {"connections": self.connections, **self.session.counters,
                    "machine": self.machine.snapshot()}

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            now = time.monotonic()
            if self._sock is None and self.mode == "connect":
                try:
                    s = socket.create_connection(self.peer, timeout=1)
                    self._adopt(s, now)
                    backoff = 0.05
                except OSError:
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
            rlist = [x for x in (self._listener, self._sock) if x is not None]
            wlist = [self._sock] if self._sock is not None and self._wbuf and not self.silent else []
            timeout = 0.01 if self._sock is not None else 0.05
            r, w, _ = select.select(rlist, wlist, [], timeout)
            now = time.monotonic()
            with self.lock:
                if self._listener is not None and self._listener in r:
                    try:
                        s, _ = self._listener.accept()
                        self._close()
                        self._adopt(s, now)
                    except OSError:
                        pass
                if self._sock is not None and self._sock in r and not self.silent:
                    try:
                        data = self._sock.recv(1 << 16)
                    except OSError:
                        data = b""
                    if not data:
                        self._close()
                    else:
                        self.session.feed(data, now)
                self._step(now)

    def _adopt(self, s: socket.socket, now: float) -> None:
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = s
        self._wbuf.clear()
        self.connections += 1
        self.silent = False
        self.session.connection_made(now)
        for chute, state in self.machine.chute_states():
            self.session.chute_status(chute, state, now)
        self.connected.set()

    def _step(self, now: float) -> None:
        for t in self.session.take_instructions():
            self.instructions.append(t.fields["tracking_id"])
            self.machine.instruct(t.fields["tracking_id"], t.fields["chute"],
                                  t.fields.get("reason", 0), now)
        confirms, changes = self.machine.poll(now)
        for c, s in changes:
            self.session.chute_status(c, s, now)
        if confirms:
            self.session.report_many(confirms, now)
        if self.silent or self._sock is None:
            self.session.take_output()
            return
        self.session.tick(now)
        out = self.session.take_output()
        if self._raw:
            out = b"".join(self._raw) + out
            self._raw.clear()
        self._wbuf += out
        if self._wbuf:
            try:
                n = self._sock.send(self._wbuf)
                del self._wbuf[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close()
        if not self.session.up and self._sock is not None:
            self._close()
        self.session.take_events()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.session.connection_lost("closed")
            self.connected.clear()
        self._wbuf.clear()
