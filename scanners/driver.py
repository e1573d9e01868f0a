"""The scanner driver: a scanner's telegrams (TCP or a serial line) in, SCAN messages out to the
engine.

A thin I/O shell around the sans-IO core in `scanners.framing`: one thread owns the scanner link
(TCP client, TCP server or serial port) and the ZeroMQ PUSH socket. Every read goes through the
`FrameSplitter`; the frames and anomalies of that read become one SCAN message (a batch when
several telegrams arrived together). docs/scanners.md describes behaviour and counters.
`scanners.sniff` reuses the link handling without an engine (`sorter scanner --sniff`).

    driver = ScannerDriver(load_format("sick_clv"), scanner_id=3,
                           engine_endpoint="tcp://127.0.0.1:5555", connect="10.0.0.7:2111")
    driver.start()          # background thread; reconnects by itself
    ...
    driver.stop()           # close sockets, flush ZeroMQ (bounded linger), join
"""
from __future__ import annotations

import logging
import random
import select
import socket
import threading
import time
from collections import Counter

import numpy as np
import zmq

from sorter import wire
from sorter.core.events import EventBatch

from .framing import (MISMATCH_KINDS, Anomaly, Frame, FrameSplitter, Telegram, TelegramFormat,
                      encode_escapes, parse_frame, salvage_index)
from .log import log_event

log = logging.getLogger("scanners.driver")

__all__ = ["ScannerDriver", "parse_hostport", "index_parcel_id", "should_log", "COUNTER_NAMES",
           "OWN_ID_BASE", "SERIAL_PARITIES"]

# Parcel ids the driver gives out itself when a format carries an index: the top bit set, then
# the scanner id, so they never collide with a sorter's tray numbers or another driver's ids.
OWN_ID_BASE = 1 << 63

COUNTER_NAMES = (
    # connection
    "connections", "disconnects", "connect_failures", "silence_timeouts", "replaced_connections",
    # bytes and frames
    "bytes", "frames", "telegrams", "heartbeats",
    # anomalies (by kind)
    "garbage", "garbage_bytes", "empty", "oversized", "unterminated", "truncated", "unparseable",
    "wire_limit",
    # what went to the engine
    "events", "messages", "no_reads", "partial_no_reads", "anomaly_events", "own_ids",
    "undelivered_events",
    # the preset does not fit the scanner's output: telegrams with any sign of it, then by sign
    "preset_mismatches", *(f"mismatch_{k}" for k in MISMATCH_KINDS),
)

# pyserial's parity letters: none, even, odd, mark, space.
SERIAL_PARITIES = ("N", "E", "O", "M", "S")


def should_log(n: int) -> bool:
    """The n-th occurrence of something repeated is logged: the first ten, then every 1000th
    (as the engine does for malformed frames)."""
    return n <= 10 or n % 1000 == 0


def index_parcel_id(fmt: TelegramFormat, index: str | None) -> int | None:
    """The parcel id a telegram's index stands for, or None when the driver must give one
    (no index, not numeric, too large, or the preset's index is not a parcel id)."""
    if index is not None and fmt.index_is_parcel_id and index.isascii() and index.isdigit() \
            and int(index) < 2**64:
        return int(index)
    return None


def parse_hostport(text: str | tuple) -> tuple[str, int]:
    """"HOST:PORT" or "[V6]:PORT" (or a (host, port) tuple) -> (host, port)."""
    if isinstance(text, tuple):
        return str(text[0]), int(text[1])
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class ScannerDriver:
    """One scanner connection feeding the engine's scans socket.

    connect="HOST:PORT": the driver connects to the scanner (reconnecting with exponential
    backoff and jitter, capped at backoff_max_s). listen="HOST:PORT": the scanner connects to the
    driver; one connection at a time, a new one replaces the old (a scanner that reconnects after
    a network fault leaves a half-open connection behind).

    silence_timeout_s: no byte for that long (heartbeats count) -> logged, counted
    (`silence_timeouts`) and the connection is closed: as a client the driver reconnects, as a
    server it waits for the scanner to reconnect. 0 disables.
    """

    def __init__(self, fmt: TelegramFormat, scanner_id: int = 0,
                 engine_endpoint: str | None = "tcp://127.0.0.1:5555", *,
                 connect: str | tuple | None = None, listen: str | tuple | None = None,
                 serial: str | None = None, baud: int = 9600, bytesize: int = 8,
                 parity: str = "N", stopbits: float = 1,
                 silence_timeout_s: float = 30.0, connect_timeout_s: float = 3.0,
                 backoff_initial_s: float = 0.2, backoff_max_s: float = 10.0,
                 first_parcel_id: int | None = None, sndhwm: int = 10000,
                 send_timeout_ms: int = 1000, linger_ms: int = 1000,
                 recv_size: int = 65536, poll_s: float = 0.1,
                 context: zmq.Context | None = None, seed: int | None = None):
        if sum(x is not None for x in (connect, listen, serial)) != 1:
            raise ValueError("give exactly one of connect=, listen= or serial=")
        if not 0 <= scanner_id <= 65535:
            raise ValueError("scanner_id must be within 0..65535")
        self.fmt = fmt
        self.scanner_id = scanner_id
        self.engine_endpoint = engine_endpoint
        self.mode = "connect" if connect is not None else "listen" if listen is not None else "serial"
        self.peer = serial if serial is not None else parse_hostport(
            connect if connect is not None else listen)
        if parity not in SERIAL_PARITIES or bytesize not in (5, 6, 7, 8) \
                or stopbits not in (1, 1.5, 2) or baud <= 0:
            raise ValueError("serial settings: baud > 0, bytesize 5..8, parity one of "
                             f"{'/'.join(SERIAL_PARITIES)}, stopbits 1, 1.5 or 2")
        self.serial_settings = {"baudrate": baud, "bytesize": bytesize, "parity": parity,
                                "stopbits": stopbits}
        self.silence_timeout_s = silence_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.recv_size = recv_size
        self.poll_s = poll_s
        self.send_timeout_ms = send_timeout_ms
        self.linger_ms = linger_ms
        self.sndhwm = sndhwm
        if first_parcel_id is None:
            first_parcel_id = (OWN_ID_BASE | (scanner_id << 40) | 1) if fmt.has_index else 1
        self.first_parcel_id = first_parcel_id
        self._next_own_id = first_parcel_id
        self._seq = 1                       # scanner sequence number of the next event
        self._batch_seq = 0
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.warnings: Counter[str] = Counter()    # telegram warnings by name
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._own_ctx = context is None
        self._ctx = context if context is not None else zmq.Context()
        self._splitter: FrameSplitter | None = None
        self._push: zmq.Socket | None = None
        self._listener: socket.socket | None = None
        self.address: tuple[str, int] | None = None   # where a listening driver listens

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "ScannerDriver":
        """Open the ZeroMQ side (and the listening socket), then run in a background thread.
        Raises OSError when the listening address cannot be bound."""
        push = None
        if self.engine_endpoint is not None:
            push = self._ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, self.sndhwm)
            push.setsockopt(zmq.LINGER, self.linger_ms)
            push.setsockopt(zmq.SNDTIMEO, self.send_timeout_ms)
            push.connect(self.engine_endpoint)
        self._push = push
        if self.mode == "listen":
            try:
                self._listener = socket.create_server(self.peer, reuse_port=False)
            except OSError:
                if push is not None:
                    push.close(0)
                self._push = None
                raise
            self.address = self._listener.getsockname()[:2]
        self._thread = threading.Thread(target=self._run, name=f"scanner-{self.scanner_id}",
                                        daemon=True)
        self._thread.start()
        log_event(log, logging.INFO, "driver started", scanner_id=self.scanner_id,
                  preset=self.fmt.name, mode=self.mode,
                  peer=self.describe_peer(), engine=self.engine_endpoint,
                  telegram=self.fmt.describe(),
                  parcel_ids="telegram index" if self.fmt.has_index and self.fmt.index_is_parcel_id
                  else f"driver counter from {self.first_parcel_id}")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop reading, close the TCP side, flush ZeroMQ (bounded by linger), join."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._close_zmq()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def snapshot(self) -> dict[str, int]:
        """A copy of the counters, plus telegram warnings as `warning_<name>`."""
        out = dict(self.counters)
        out.update({f"warning_{k}": v for k, v in self.warnings.items()})
        return out

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        return self.connected.wait(timeout_s)

    def describe_peer(self) -> str:
        """Where the scanner is: HOST:PORT (the listening address once bound), or the serial
        device with its settings."""
        if self.mode == "serial":
            s = self.serial_settings
            stop = int(s["stopbits"]) if s["stopbits"] != 1.5 else 1.5
            return f"{self.peer} {s['baudrate']} {s['bytesize']}{s['parity']}{stop}"
        host, port = self.address if self.address else self.peer
        return f"{host}:{port}"

    def _close_zmq(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return                      # still running (join timed out): leave it its socket
        if self._push is not None:
            self._push.close()
            self._push = None
        if self._own_ctx and not self._ctx.closed:
            self._ctx.term()

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        try:
            while not self._stop.is_set():
                if self.mode == "listen":
                    sock = self._accept()
                elif self.mode == "serial":
                    sock = self._open_serial(attempt)
                else:
                    sock = self._connect(attempt)
                if sock is None:
                    attempt += 1
                    continue
                got_data = self._serve(sock)
                if self.mode != "listen" and not self._stop.is_set():
                    attempt = 0 if got_data else attempt + 1
                    self._sleep(self._backoff(attempt))
        except Exception as e:       # noqa: BLE001 - logged; the thread must not die silently
            log_event(log, logging.ERROR, "driver failed", scanner_id=self.scanner_id,
                      error=repr(e))
            raise
        finally:
            if self._listener is not None:
                self._listener.close()
            self.connected.clear()

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_max_s, self.backoff_initial_s * (2 ** min(attempt, 30)))
        return base / 2 + self._rng.uniform(0, base / 2)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _connect(self, attempt: int) -> socket.socket | None:
        try:
            sock = socket.create_connection(self.peer, timeout=self.connect_timeout_s)
        except OSError as e:
            self.counters["connect_failures"] += 1
            delay = self._backoff(attempt)
            n = self.counters["connect_failures"]
            if n <= 10 or n % 100 == 0:
                log_event(log, logging.WARNING, "cannot connect to scanner",
                          scanner_id=self.scanner_id, peer=f"{self.peer[0]}:{self.peer[1]}",
                          error=str(e), failures=n, retry_in_s=round(delay, 3))
            self._sleep(delay)
            return None
        return self._opened(sock)

    def _open_serial(self, attempt: int) -> "_SerialLink | None":
        import serial                     # pyserial, only needed for serial scanners
        try:
            port = serial.Serial(self.peer, timeout=0, **self.serial_settings)
        except (OSError, ValueError, serial.SerialException) as e:
            self.counters["connect_failures"] += 1
            delay = self._backoff(attempt)
            n = self.counters["connect_failures"]
            if n <= 10 or n % 100 == 0:
                log_event(log, logging.WARNING, "cannot open serial port",
                          scanner_id=self.scanner_id, port=self.describe_peer(), error=str(e),
                          failures=n, retry_in_s=round(delay, 3))
            self._sleep(delay)
            return None
        self.counters["connections"] += 1
        self.connected.set()
        log_event(log, logging.INFO, "serial port open", scanner_id=self.scanner_id,
                  port=self.describe_peer(), connections=self.counters["connections"])
        self._link_opened(self.describe_peer())
        return _SerialLink(port)

    def _accept(self) -> socket.socket | None:
        readable, _, _ = select.select([self._listener], [], [], self.poll_s)
        if not readable:
            return None
        sock, _ = self._listener.accept()
        return self._opened(sock)

    def _opened(self, sock: socket.socket) -> socket.socket:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.counters["connections"] += 1
        self.connected.set()
        peer = sock.getpeername()
        log_event(log, logging.INFO, "scanner connected", scanner_id=self.scanner_id,
                  peer=f"{peer[0]}:{peer[1]}", connections=self.counters["connections"])
        self._link_opened(f"{peer[0]}:{peer[1]}")
        return sock

    def _serve(self, sock) -> bool:
        """Read until the connection ends (peer close, error, silence, replacement, stop).
        Returns whether any byte arrived."""
        self._stream_start()
        last_rx = time.monotonic()
        got_data = False
        reason = "stopped"
        while not self._stop.is_set():
            watch = [sock] + ([self._listener] if self._listener is not None else [])
            readable, _, _ = select.select(watch, [], [], self.poll_s)
            if sock in readable:
                try:
                    data = sock.recv(self.recv_size)
                except BlockingIOError:
                    continue
                except OSError as e:
                    reason = f"error: {e}"
                    break
                if not data:
                    reason = "closed by the scanner"
                    break
                got_data = True
                last_rx = time.monotonic()
                self.counters["bytes"] += len(data)
                self._receive(data, time.time_ns())
            elif self._listener is not None and self._listener in readable:
                new, _ = self._listener.accept()
                self.counters["replaced_connections"] += 1
                log_event(log, logging.WARNING, "new scanner connection replaces the current one",
                          scanner_id=self.scanner_id)
                self._finish(sock, "replaced")
                sock = self._opened(new)
                self._stream_start()
                last_rx = time.monotonic()
                continue
            elif self.silence_timeout_s and time.monotonic() - last_rx > self.silence_timeout_s:
                self.counters["silence_timeouts"] += 1
                log_event(log, logging.WARNING, "scanner silent", scanner_id=self.scanner_id,
                          silent_s=round(time.monotonic() - last_rx, 3),
                          timeout_s=self.silence_timeout_s,
                          action="drop connection" if self.mode == "listen" else "reconnect")
                reason = "silence timeout"
                break
        self._finish(sock, reason)
        return got_data

    def _finish(self, sock, reason: str) -> None:
        self._stream_end()
        try:
            sock.close()
        except OSError:
            pass
        self.connected.clear()
        self.counters["disconnects"] += 1
        log_event(log, logging.WARNING if reason != "stopped" else logging.INFO,
                  "scanner disconnected", scanner_id=self.scanner_id, reason=reason,
                  disconnects=self.counters["disconnects"])
        self._link_closed(reason)

    # -- the byte stream of one link (sniff mode overrides these) -------------------------------
    def _link_opened(self, peer: str) -> None:
        """A link to the scanner is up (hook)."""

    def _link_closed(self, reason: str) -> None:
        """The link is down (hook)."""

    def _stream_start(self) -> None:
        """A new link: a new splitter (a telegram is never joined across links)."""
        self._splitter = FrameSplitter(self.fmt)

    def _receive(self, data: bytes, ts_ns: int) -> None:
        self._handle(self._splitter.feed(data), ts_ns)

    def _stream_end(self) -> None:
        if self._splitter is not None:
            self._handle(self._splitter.close(), time.time_ns())
            self._splitter = None

    # -- frames to events -------------------------------------------------------------------------
    def _anomaly(self, a: Anomaly) -> None:
        c = self.counters
        c[a.kind] = c.get(a.kind, 0) + 1
        if a.kind == "garbage":
            c["garbage_bytes"] += len(a.data)
        n = c[a.kind]
        if should_log(n):
            log_event(log, logging.WARNING, "telegram anomaly", scanner_id=self.scanner_id,
                      kind=a.kind, detail=a.detail, bytes=len(a.data),
                      head=a.data[:64].decode("latin-1"), count=n,
                      forwarded="no-read event" if a.is_parcel else "none (not a parcel)")
        if a.mismatch:
            self._mismatches(((a.mismatch, a.detail),), None, a.data)

    def _mismatches(self, found, index: str | None, raw: bytes) -> None:
        """Count and log signs that the preset does not fit: per sign, the first ten, then
        every 1000th, as WARNING."""
        c = self.counters
        c["preset_mismatches"] += 1
        for kind, detail in found:
            key = f"mismatch_{kind}"
            c[key] = c.get(key, 0) + 1
            if should_log(c[key]):
                log_event(log, logging.WARNING, "telegram does not match the preset",
                          scanner_id=self.scanner_id, preset=self.fmt.name, mismatch=kind,
                          detail=detail, index=index, telegram=encode_escapes(raw[:96]),
                          count=c[key], check=f"sorter scanner --sniff "
                          f"{'--serial' if self.mode == 'serial' else '--' + self.mode} "
                          f"{self.describe_peer().split(' ')[0]} --preset {self.fmt.name}")

    def _parcel_id(self, index: str | None) -> int:
        pid = index_parcel_id(self.fmt, index)
        if pid is not None:
            return pid
        pid = self._next_own_id
        self._next_own_id += 1
        self.counters["own_ids"] += 1
        if self.fmt.has_index and self.fmt.index_is_parcel_id:
            log_event(log, logging.INFO, "parcel id assigned by the driver",
                      scanner_id=self.scanner_id, parcel_id=pid, index=index,
                      why="no index" if index is None else "index not numeric")
        return pid

    def _handle(self, items: list[Frame | Anomaly], ts_ns: int) -> None:
        reads: list[list[bytes]] = []
        pids: list[int] = []
        recirc: list[int] = []
        c = self.counters
        for item in items:
            raw = item
            if isinstance(item, Frame):
                c["frames"] += 1
                item = parse_frame(self.fmt, item)
            if isinstance(item, Anomaly):
                self._anomaly(item)
                if not item.is_parcel:
                    continue
                index = salvage_index(self.fmt, item.data)
                c["anomaly_events"] += 1
                event_reads: list[bytes] = []
                r = 0
            else:
                t: Telegram = item
                if t.heartbeat:
                    c["heartbeats"] += 1
                    continue
                c["telegrams"] += 1
                index, event_reads, r = t.index, self._wire_safe(t.reads), t.recirculations or 0
                c["partial_no_reads"] += t.partial
                if t.mismatches:
                    self._mismatches(t.mismatches, t.index, raw.body)
                for w in t.warnings:
                    self.warnings[w] += 1
                    if should_log(self.warnings[w]):
                        log_event(log, logging.WARNING, "telegram warning",
                                  scanner_id=self.scanner_id, warning=w, index=t.index,
                                  count=self.warnings[w])
            if not event_reads:
                c["no_reads"] += 1
            reads.append(event_reads)
            pids.append(self._parcel_id(index))
            recirc.append(min(max(r, 0), 255))
        if reads:
            self._publish(reads, pids, recirc, ts_ns)

    def _wire_safe(self, reads: list[bytes]) -> list[bytes]:
        """Reads within the wire limits (a read over 1024 bytes is no code; more than 255
        reads cannot be carried): the rest is dropped and counted as `wire_limit`."""
        ok = [r for r in reads if len(r) <= wire.MAX_READ_LEN][:wire.MAX_READS]
        if len(ok) != len(reads):
            self.counters["wire_limit"] += 1
            log_event(log, logging.WARNING, "reads over the wire limits dropped",
                      scanner_id=self.scanner_id, dropped=len(reads) - len(ok))
        return ok

    def _publish(self, reads: list[list[bytes]], pids: list[int], recirc: list[int],
                 ts_ns: int) -> None:
        n = len(reads)
        batch = EventBatch.from_reads(
            reads, parcel_ids=np.array(pids, np.uint64),
            scanner_ids=np.full(n, self.scanner_id, np.uint16),
            ts_ns=np.full(n, ts_ns, np.int64), recirculations=np.array(recirc, np.uint8))
        seq = np.arange(self._seq, self._seq + n, dtype=np.uint64)
        self._seq += n
        self._batch_seq += 1
        message = wire.encode_scan(batch, seq, self._batch_seq)
        try:
            self._push.send(message)
        except zmq.Again:
            self.counters["undelivered_events"] += n
            log_event(log, logging.WARNING, "engine not taking scan events",
                      scanner_id=self.scanner_id, events=n, first_seq=int(seq[0]),
                      undelivered=self.counters["undelivered_events"],
                      send_timeout_ms=self.send_timeout_ms)
            return
        self.counters["events"] += n
        self.counters["messages"] += 1


class _SerialLink:
    """A pyserial port with the socket calls the driver's read loop uses."""

    def __init__(self, port):
        self.port = port

    def fileno(self) -> int:
        return self.port.fileno()

    def recv(self, size: int) -> bytes:
        """What the port holds (at least one byte after select said readable). A port that
        reports readable but yields nothing is gone (device unplugged, pty closed): pyserial
        raises SerialException, an OSError, and the driver reopens the port."""
        return self.port.read(max(1, min(size, self.port.in_waiting)))

    def close(self) -> None:
        self.port.close()
