"""The dashboard's one way to talk to the engine's control socket.

Every request of the dashboard goes through `ask`, so the control socket's authentication
(client keys) is added in this one place.
"""
from __future__ import annotations

from sorter.engine.control_client import ControlError, request

__all__ = ["ControlError", "ask"]


def ask(endpoint: str, req: dict, *, timeout_s: float = 2.0) -> dict:
    """Send one JSON request to the engine at `endpoint`; ControlError when it does not answer."""
    return request(endpoint, req, timeout_s=timeout_s)
