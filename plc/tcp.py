"""The TCP telegram gateway: a thin I/O shell around `plc.session.HostSession`.

One thread owns everything: the engine's ZeroMQ sockets (`EngineLink`) and one TCP connection
to the PLC, as a client (`connect=`, reconnecting with exponential backoff and jitter) or as a
server (`listen=`, one PLC at a time; a new connection replaces the old). It polls both, feeds
received bytes to the session, hands decisions to it, writes what it has to send, and passes
sort reports and chute states on to the engine.

    gw = TcpGateway(load_preset("s7_binary"), "tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557",
                    connect="10.0.0.5:2000", max_age_s=0.5)
    gw.start(); ...; gw.snapshot(); gw.stop()
"""
from __future__ import annotations

import logging
import random
import socket
import threading
import time

import zmq

from .engine_link import EngineLink
from .log import log_event
from .session import HostSession, Seen
from .telegrams import Preset, TelegramCodec

log = logging.getLogger("plc.tcp")

__all__ = ["TcpGateway", "parse_hostport"]


def parse_hostport(text: str | tuple) -> tuple[str, int]:
    """"HOST:PORT" (or a (host, port) tuple) -> (host, port)."""
    if isinstance(text, tuple):
        return str(text[0]), int(text[1])
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class TcpGateway:
    """Engine decisions -> PLC sort instructions over TCP; PLC reports -> engine feedback."""

    def __init__(self, preset: Preset, decisions: str, feedback: str, *,
                 connect: str | tuple | None = None, listen: str | tuple | None = None,
                 max_age_s: float | None = 0.5, backoff_initial_s: float = 0.1,
                 backoff_max_s: float = 5.0, connect_timeout_s: float = 2.0,
                 context: zmq.Context | None = None, first_seq: int | None = None,
                 seed: int | None = None, **session_kw):
        if (connect is None) == (listen is None):
            raise ValueError("give exactly one of connect= or listen=")
        self.preset = preset
        self.mode = "connect" if connect is not None else "listen"
        self.peer = parse_hostport(connect if connect is not None else listen)
        self.codec = TelegramCodec(preset)
        rng = random.Random(seed)
        # a restarted gateway should not reuse the numbers its predecessor just used
        first = first_seq if first_seq is not None else rng.randrange(1, self.codec.seq_modulo)
        self.session = HostSession(self.codec, max_age_s=max_age_s, first_seq=first,
                                   seen=Seen(), **session_kw)
        self.max_age_s = max_age_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.connect_timeout_s = connect_timeout_s
        self._rng = rng
        self.engine = EngineLink(decisions, feedback, context=context)
        self._sock: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._wbuf = bytearray()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.address: tuple[str, int] | None = None
        self.error: BaseException | None = None
        self.counters = {"connect_failures": 0, "replaced_connections": 0}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "TcpGateway":
        if self.mode == "listen":
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                ls.bind(self.peer)
                ls.listen(2)
            except OSError:
                ls.close()
                self.engine.close()
                raise
            ls.setblocking(False)
            self._listener = ls
            self.address = ls.getsockname()[:2]
        self._thread = threading.Thread(target=self._run, name="plc-tcp-gateway", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def snapshot(self) -> dict:
        with self._lock:
            return {"protocol": "tcp", "preset": self.preset.name, "link_up": self.session.up,
                    "waiting": self.session.waiting, **self.session.counters,
                    **self.engine.counters, **self.counters}

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = self.backoff_initial_s
        next_attempt = 0.0
        poller = zmq.Poller()
        poller.register(self.engine.pull, zmq.POLLIN)
        if self._listener is not None:
            poller.register(self._listener, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if self._sock is None and self.mode == "connect" and now >= next_attempt:
                    if self._connect(poller, now):
                        backoff = self.backoff_initial_s
                    else:
                        next_attempt = now + backoff * (0.5 + self._rng.random())
                        backoff = min(backoff * 2, self.backoff_max_s)
                timeout = min(self.session.next_timer(now), 0.1)
                if self._sock is not None and self._wbuf:
                    poller.modify(self._sock, zmq.POLLIN | zmq.POLLOUT)
                elif self._sock is not None:
                    poller.modify(self._sock, zmq.POLLIN)
                events = dict(poller.poll(timeout * 1000))    # raw sockets: by fileno
                now = time.monotonic()
                with self._lock:
                    if self._listener is not None and self._listener.fileno() in events:
                        self._accept(poller, now)
                    if self.engine.pull in events:
                        items = self.engine.recv_decisions()
                        if items:
                            self.session.submit_many(items, now)
                    if self._sock is not None and self._sock.fileno() in events:
                        self._read(poller, now)
                    self.session.tick(now)
                    self.session.expire(now)
                    self._flush_session(poller)
                    self.engine.tick(now)
                    self._log_events()
        except BaseException as e:          # noqa: BLE001 - kept for the owner
            self.error = e
            log_event(log, logging.ERROR, "gateway failed", error=repr(e))
            raise
        finally:
            self._close_conn(poller, "stopped")
            if self._listener is not None:
                self._listener.close()
            self.engine.close()

    def _connect(self, poller, now: float) -> bool:
        try:
            s = socket.create_connection(self.peer, timeout=self.connect_timeout_s)
        except OSError as e:
            self.counters["connect_failures"] += 1
            if self.counters["connect_failures"] == 1 or self.counters["connect_failures"] % 50 == 0:
                log_event(log, logging.WARNING, "cannot connect to the PLC",
                          peer=f"{self.peer[0]}:{self.peer[1]}", error=str(e),
                          failures=self.counters["connect_failures"])
            return False
        self._adopt(s, poller, now)
        return True

    def _accept(self, poller, now: float) -> None:
        try:
            s, addr = self._listener.accept()
        except OSError:
            return
        if self._sock is not None:
            self.counters["replaced_connections"] += 1
            self._close_conn(poller, "replaced")
        self._adopt(s, poller, now)

    def _adopt(self, s: socket.socket, poller, now: float) -> None:
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = s
        self._wbuf.clear()
        poller.register(s, zmq.POLLIN)
        self.session.connection_made(now)
        self.connected.set()
        peer = s.getpeername()
        log_event(log, logging.INFO, "PLC connected", peer=f"{peer[0]}:{peer[1]}",
                  resent=len(self.session.in_flight))

    def _read(self, poller, now: float) -> None:
        try:
            data = self._sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._close_conn(poller, f"error: {e}")
            return
        if not data:
            self._close_conn(poller, "closed by the PLC")
            return
        self.session.feed(data, now)
        states = self.session.take_chute_states()
        if states:
            self.engine.send_chute_states(states)
        reports = self.session.take_reports()
        if reports:
            self.engine.send_confirms(reports)

    def _flush_session(self, poller) -> None:
        if not self.session.up and self._sock is not None:
            self._close_conn(poller, self.session.down_reason or "down")
            return
        out = self.session.take_output()
        if self._sock is None:
            return
        if out:
            self._wbuf += out
        if self._wbuf:
            try:
                n = self._sock.send(self._wbuf)
                del self._wbuf[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                self._close_conn(poller, f"error: {e}")

    def _close_conn(self, poller, reason: str) -> None:
        self.session.connection_lost(reason)
        if self._sock is not None:
            try:
                poller.unregister(self._sock)
            except KeyError:
                pass
            self._sock.close()
            self._sock = None
            self.connected.clear()
        self._wbuf.clear()

    def _log_events(self) -> None:
        """The session's events, one line per kind per loop turn: the first event's fields
        and how many there were (a burst of stale drops is one line, not thousands)."""
        events = self.session.take_events()
        if not events:
            return
        first: dict[str, dict] = {}
        count: dict[str, int] = {}
        for name, fields in events:
            first.setdefault(name, fields)
            count[name] = count.get(name, 0) + 1
        for name, fields in first.items():
            level = logging.INFO if name in ("resend", "duplicate telegram") else logging.WARNING
            log_event(log, level, name, **fields, count=count[name])
