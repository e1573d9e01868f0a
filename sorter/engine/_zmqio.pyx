# cython: language_level=3
"""Receive and send on a pyzmq socket through libzmq's C API, without a Python call per
message.

Why: at low rates every scan message is a turn of its own, and pyzmq costs ~3 us of Python
per recv, ~2.5 us per ZMQ_EVENTS check and ~6 us per zmq.Again raised; a turn's drain was a
fifth of its cost. `drain` receives every queued message in one C loop (`zmq_msg_recv` with
ZMQ_DONTWAIT) and `send` sends one with `zmq_send`. The functions are the ones of the libzmq
that pyzmq itself loaded (`sorter.engine.zmq_native` finds their addresses), so the socket handle
is shared: the pyzmq Socket stays the owner (options, poll, close); this is a thin I/O shell
over it, used from the thread that uses the socket, never after the socket is closed.
"""
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t, uint32_t, uintptr_t
from libc.stdlib cimport free
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE

from sorter._shared cimport now_ns, reserve
from sorter.engine._libzmq cimport Api, load_api, recv_nowait, send_nowait, zmq_msg_t

import sys

import zmq

cnp.import_array()

if sys.byteorder != "little":        # drain reads the SCAN count as a host integer
    raise ImportError("sorter.engine._zmqio needs a little-endian host")

SYMBOLS = ("zmq_msg_init", "zmq_msg_recv", "zmq_msg_data", "zmq_msg_size", "zmq_msg_close",
           "zmq_send", "zmq_errno")


cdef class NativeSocket:
    """One pyzmq socket driven through libzmq's C API: `drain` (a PULL side) and `send` (a
    PUSH side). `symbols` maps each name of SYMBOLS to its address in the libzmq pyzmq uses."""
    cdef void* handle
    cdef readonly object socket          # the owner; kept alive while this is
    cdef Api api
    cdef int64_t* times
    cdef Py_ssize_t times_cap

    def __cinit__(self, socket, dict symbols):
        load_api(&self.api, symbols, SYMBOLS)
        self.socket = socket
        self.handle = <void*> <uintptr_t> socket.underlying
        self.times = NULL
        self.times_cap = 0

    def __dealloc__(self):
        free(self.times)


    def drain(self, Py_ssize_t max_events):
        """Receive what is queued (never waits) until nothing is left or the messages hold
        max_events events (the count at bytes 4..8 of a frame of 8 bytes or more, as the
        SCAN header has it; shorter frames count 0). Returns (frames: list of bytes,
        recv_ns: int64 array, the wall-clock time each was received). Raises zmq.ZMQError
        for a failure other than "nothing queued"."""
        cdef zmq_msg_t msg
        cdef Py_ssize_t k = 0, events = 0, size
        cdef const uint8_t* data
        cdef uint32_t count
        frames = []
        if self.socket.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK, "socket closed")
        while events < max_events and recv_nowait(&self.api, self.handle, &msg):
            if k == self.times_cap:
                try:
                    reserve(<void**> &self.times, &self.times_cap, k + 1, sizeof(int64_t))
                except BaseException:
                    self.api.msg_close(&msg)
                    raise
            self.times[k] = now_ns()
            size = <Py_ssize_t> self.api.msg_size(&msg)
            data = <const uint8_t*> self.api.msg_data(&msg)
            if size >= 8:
                memcpy(&count, data + 4, 4)     # little-endian host: see sorter.audit._audit
                events += count
            try:
                frames.append(PyBytes_FromStringAndSize(<const char*> data, size))
            finally:
                self.api.msg_close(&msg)
            k += 1
        cdef cnp.npy_intp dims[1]
        dims[0] = k
        cdef cnp.ndarray times = cnp.PyArray_EMPTY(1, dims, cnp.NPY_INT64, 0)
        if k:
            memcpy(cnp.PyArray_DATA(times), self.times, k * sizeof(int64_t))
        return frames, times

    def send(self, bytes message):
        """Send one message without waiting: True when queued, False when the high-water
        mark is reached (EAGAIN: the PLC side is absent or slow). Raises zmq.ZMQError for
        any other failure."""
        if self.socket.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK, "socket closed")
        return bool(send_nowait(&self.api, self.handle, PyBytes_AS_STRING(message),
                                PyBytes_GET_SIZE(message)))
