"""A bare ZeroMQ relay: PULL (bind) -> PUSH (bind), no decoding, no routing, no audit.

    python -m bench.relay [--kind python|zmq-proxy] [--in ENDPOINT] [--out ENDPOINT]

The floor that `python -m bench engine` measures the engine against: the same transport, the
same socket pattern and the same process model as the engine (one Python process, one loop
that receives a frame and sends it on), minus everything the engine does with the frame. With
`--kind python` (default) the loop is plain Python, `push.send(pull.recv())`, so it pays the
same ~3 us of pyzmq per recv and per send as the engine does; `--kind zmq-proxy` runs
`zmq.proxy` (libzmq's C loop), a lower floor that no Python design can reach.

Both sockets bind (give `tcp://127.0.0.1:*` for a free port) and get the engine's high-water
marks. When bound, one JSON line goes to stderr, like the engine's:
`{"event": "ready", "kind": ..., "endpoints": {"in": ..., "out": ...}, "pid": ...}`.
SIGTERM or SIGINT stops it: it logs `{"event": "shutdown", "messages": N, "bytes": B}`
(counts only for `python`; None for the proxy) and exits 0. Loopback only by default.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import zmq

from sorter.engine.config import EngineConfig

KINDS = ("python", "zmq-proxy")
DEFAULT_HWM = EngineConfig.rcvhwm    # the engine's rcvhwm (and sndhwm) default: the same queues


class _Stop(Exception):
    """Raised by the signal handler; pyzmq lets it out of a blocking recv or zmq.proxy."""


def _stop(*_args) -> None:
    raise _Stop()


def _log(event: str, **fields) -> None:
    print(json.dumps({"ts": round(time.time(), 6), "event": event, **fields}),
          file=sys.stderr, flush=True)


def forward(pull: zmq.Socket, push: zmq.Socket) -> tuple[int, int]:
    """The Python relay loop: every frame received is sent on unchanged. Returns (messages,
    bytes) when stopped by a signal."""
    recv, send = pull.recv, push.send
    n = nbytes = 0
    again = zmq.Again
    try:
        while True:
            try:
                frame = recv()
            except again:               # RCVTIMEO: wake up now and then to see a signal
                continue
            send(frame)
            n += 1
            nbytes += len(frame)
    except _Stop:
        return n, nbytes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.relay",
                                description="Bare ZeroMQ PULL -> PUSH relay (the floor of "
                                            "`python -m bench engine`).")
    p.add_argument("--kind", choices=KINDS, default="python",
                   help="python: a Python recv/send loop (default); zmq-proxy: zmq.proxy")
    p.add_argument("--in", dest="inp", default="tcp://127.0.0.1:*", metavar="ENDPOINT",
                   help="PULL endpoint to bind (default tcp://127.0.0.1:*)")
    p.add_argument("--out", default="tcp://127.0.0.1:*", metavar="ENDPOINT",
                   help="PUSH endpoint to bind (default tcp://127.0.0.1:*)")
    p.add_argument("--hwm", type=int, default=DEFAULT_HWM,
                   help=f"RCVHWM / SNDHWM in messages (default {DEFAULT_HWM}, as the engine)")
    args = p.parse_args(argv)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    for s in (pull, push):
        s.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVHWM, args.hwm)
    # a SIGTERM delivered to one of libzmq's threads does not interrupt a blocked recv in the
    # main thread: with a receive timeout the loop comes back to Python and runs the handler
    if args.kind == "python":
        pull.setsockopt(zmq.RCVTIMEO, 100)
    push.setsockopt(zmq.SNDHWM, args.hwm)
    try:
        pull.bind(args.inp)
        push.bind(args.out)
    except zmq.ZMQError as e:
        _log("cannot bind", error=str(e))
        return 1
    endpoints = {"in": pull.getsockopt_string(zmq.LAST_ENDPOINT),
                 "out": push.getsockopt_string(zmq.LAST_ENDPOINT)}
    _log("ready", kind=args.kind, endpoints=endpoints, pid=os.getpid())
    messages = nbytes = None
    try:
        if args.kind == "python":
            messages, nbytes = forward(pull, push)
        else:
            try:
                zmq.proxy(pull, push)
            except _Stop:
                pass
    finally:
        pull.close()
        push.close()
        ctx.term()
    _log("shutdown", kind=args.kind, messages=messages, bytes=nbytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
