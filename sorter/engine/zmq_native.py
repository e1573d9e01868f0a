"""Find the libzmq that pyzmq loaded, for `sorter.engine._zmqio` to call it directly.

The engine's drain and send go through libzmq's C API (one C loop per turn instead of a
Python call per message). That is only sound with the very library instance pyzmq uses (the
socket handles belong to it), so this looks it up among the libraries mapped into this
process, opens that same file (the dynamic loader hands back the loaded instance) and checks
its version against pyzmq's. Anything else (not Linux, a libzmq linked into pyzmq's own
extension, a version that differs) gives None, and the engine stays on pyzmq.
"""
from __future__ import annotations

import ctypes
import functools
import sys
from pathlib import Path

import zmq


def _mapped_libzmq() -> str | None:
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if Path(path).name.startswith("libzmq") and ".so" in Path(path).name:
                    return path
    except OSError:
        return None
    return None


@functools.cache
def libzmq_symbols() -> dict[str, int] | None:
    """{name: address} of the functions `sorter.engine._zmqio` and `sorter.engine._scanloop` call, from
    pyzmq's libzmq; None when that library cannot be established. Looked up once per
    process."""
    if sys.platform != "linux":
        return None
    from sorter.engine import _scanloop, _zmqio

    zmq.Context.instance()                   # pyzmq's backend (and its libzmq) is loaded
    path = _mapped_libzmq()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        major, minor, patch = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        lib.zmq_version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(patch))
        if (major.value, minor.value, patch.value) != zmq.zmq_version_info():
            return None
        return {name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                for name in sorted(set(_zmqio.SYMBOLS) | set(_scanloop.SYMBOLS))}
    except (OSError, AttributeError):
        return None


def native_socket(socket: zmq.Socket):
    """A `sorter.engine._zmqio.NativeSocket` over `socket`, or None (see `libzmq_symbols`)."""
    from sorter.engine import _zmqio

    symbols = libzmq_symbols()
    return None if symbols is None else _zmqio.NativeSocket(socket, symbols)
