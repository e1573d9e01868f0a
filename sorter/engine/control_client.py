"""A client for the engine's control socket (REQ), for `sorter ctl`, tools and tests."""
from __future__ import annotations

import json

import zmq


class ControlError(RuntimeError):
    pass


def request(endpoint: str, req: dict, *, timeout_s: float = 30.0,
            context: zmq.Context | None = None, keys: str | None = None,
            connect_timeout_s: float = 3.0) -> dict:
    """Send one JSON request and return the JSON reply.

    ControlError when no engine takes the request within connect_timeout_s (none listening,
    or its keys and ours do not match: ZeroMQ queues a request only on a connection that has
    finished its handshake), or when the reply does not come within timeout_s. `keys`: the
    directory of `sorter keys init` (CURVE, for an engine started with keys)."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.SNDTIMEO, max(1, int(connect_timeout_s * 1000)))
    sock.setsockopt(zmq.RCVTIMEO, max(1, int(timeout_s * 1000)))
    try:
        if keys:
            from sorter.engine.keys import make_client
            make_client(sock, keys)
        sock.connect(endpoint)
        try:
            sock.send(json.dumps(req).encode())
        except zmq.Again:
            raise ControlError(f"no engine took the request within {connect_timeout_s} s (is it "
                               f"running? {'do its keys match?' if keys else 'does it need keys?'})"
                               ) from None
        try:
            return json.loads(sock.recv())
        except zmq.Again:
            raise ControlError(f"no reply within {timeout_s} s") from None
    finally:
        sock.close()
