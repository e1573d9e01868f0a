"""The engine's drain and send through libzmq's C API (`sorter.engine._zmqio`, found by
`sorter.engine.zmq_native`), on real loopback sockets, and the engine on either I/O path."""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import zmq

from sorter.engine import _scanloop, _zmqio
from sorter import wire
from sorter.audit import read_audit
from sorter.core.events import EventBatch
from sorter.engine.zmq_native import libzmq_symbols, native_socket

from engine_harness import EngineProcess

SYMBOLS = libzmq_symbols()
needs_native = pytest.mark.skipif(SYMBOLS is None, reason="pyzmq's libzmq not found here")


def test_symbols_are_found_on_linux():
    """pyzmq's wheels for Linux ship libzmq as a shared library: the engine should find it
    (if a pyzmq release links it statically, this fails and the engine runs on pyzmq)."""
    if sys.platform != "linux":
        assert SYMBOLS is None
        return
    assert SYMBOLS is not None and set(SYMBOLS) == set(_zmqio.SYMBOLS) | set(_scanloop.SYMBOLS)
    assert all(isinstance(a, int) and a > 0 for a in SYMBOLS.values())


@pytest.fixture
def pair():
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for s in (push, pull):
        s.setsockopt(zmq.LINGER, 0)
    push.bind("tcp://127.0.0.1:*")
    pull.connect(push.getsockopt_string(zmq.LAST_ENDPOINT))
    # connect() returns before the TCP handshake: until it completes a PUSH has no peer and a
    # non-blocking send is EAGAIN. One blocking round trip makes the pair ready.
    pull.setsockopt(zmq.RCVTIMEO, 5000)
    push.send(b"ready")
    assert pull.recv() == b"ready"
    pull.setsockopt(zmq.RCVTIMEO, -1)
    yield push, pull
    push.close(0)
    pull.close(0)
    ctx.term()


def scan(k: int, events: int = 1) -> bytes:
    batch = EventBatch.from_reads([[b"0500%02d" % (k % 100)]] * events,
                                  parcel_ids=np.arange(k, k + events, dtype=np.uint64))
    return wire.encode_scan(batch, np.arange(events, dtype=np.uint64))


def wait_queued(sock: zmq.Socket) -> None:
    deadline = time.monotonic() + 5
    while not sock.get(zmq.EVENTS) & zmq.POLLIN:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.05)


@needs_native
def test_drain_receives_every_queued_message_in_order(pair):
    push, pull = pair
    rx, tx = native_socket(pull), native_socket(push)
    msgs = [scan(k) for k in range(50)] + [b"", b"\x01\x02\x03", b"x" * 100_000]
    before = time.time_ns()
    for m in msgs:
        assert tx.send(m) is True
    wait_queued(pull)
    got, times = [], []
    while len(got) < len(msgs):
        frames, recv_ns = rx.drain(1 << 20)
        got += frames
        times += recv_ns.tolist()
    assert got == msgs
    assert times == sorted(times) and before <= times[0] <= times[-1] <= time.time_ns()
    assert rx.drain(1 << 20)[0] == []                    # nothing left: EAGAIN, not an error


@needs_native
def test_drain_stops_at_max_events(pair):
    push, pull = pair
    rx = native_socket(pull)
    for k in range(10):
        push.send(scan(10 * k, events=4))
    wait_queued(pull)
    frames, times = rx.drain(9)                          # 4 + 4 < 9 <= 4 + 4 + 4
    assert len(frames) == 3 and len(times) == 3
    rest, _ = rx.drain(1000)
    assert [wire.decode_scan(f).events.parcel_ids[0] for f in frames + rest] == \
        [10 * k for k in range(10)]


@needs_native
def test_send_reports_a_full_queue_and_a_closed_socket():
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.bind("tcp://127.0.0.1:*")                      # no peer: nothing can be queued
    tx = native_socket(push)
    assert tx.send(b"decision") is False                 # EAGAIN, not an exception
    push.close(0)
    with pytest.raises(zmq.ZMQError):
        tx.send(b"decision")
    with pytest.raises(zmq.ZMQError):
        tx.drain(10)
    ctx.term()


def test_native_socket_needs_every_symbol(pair):
    with pytest.raises(ValueError, match="zmq_send"):
        _zmqio.NativeSocket(pair[0], {name: 1 for name in _zmqio.SYMBOLS if name != "zmq_send"})


@pytest.mark.parametrize("native,how", [(True, "config"), (False, "config"), (False, "flag")])
def test_engine_on_either_io_path(tmp_path, native, how):
    config = tmp_path / "engine.toml"
    config.write_text(f"[zmq]\nnative_io = {'true' if native or how == 'flag' else 'false'}\n")
    args = ["--config", str(config)] + (["--no-native-io"] if how == "flag" else [])
    engine = EngineProcess(tmp_path, *args)
    try:
        ready = next(e for e in engine.log if e.get("event") == "ready")
        assert ready["io"] == ("native" if native and SYMBOLS is not None else "pyzmq")
        engine.send_scans([[b"050010"], [], [b"RR473124829GB"]] * 20)
        got = engine.receive_decisions(60)
        assert sum(len(d) for d in got) == 60
        engine.scanner.send(b"garbage")                  # malformed: audited, line goes on
        engine.send_scans([[b"050010"]])
        engine.receive_decisions(1)
        assert engine.stop() == 0
        audit = read_audit(engine.audit_dir)
        assert len(audit) == 62
        assert audit.column("reason").to_pylist().count("malformed") == 1
    finally:
        engine.kill()
