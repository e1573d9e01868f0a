"""A client for the engine's control socket (REQ), for `sorter ctl`, tools and tests."""
from __future__ import annotations

import json

import zmq


class ControlError(RuntimeError):
    pass


def request(endpoint: str, req: dict, *, timeout_s: float = 30.0,
            context: zmq.Context | None = None) -> dict:
    """Send one JSON request and return the JSON reply; ControlError on timeout."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    try:
        sock.connect(endpoint)
        sock.send(json.dumps(req).encode())
        try:
            return json.loads(sock.recv())
        except zmq.Again:
            raise ControlError(f"no reply within {timeout_s} s (is the engine running?)") from None
    finally:
        sock.close()
