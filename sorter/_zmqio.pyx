# cython: language_level=3
"""Receive and send on a pyzmq socket through libzmq's C API, without a Python call per
message.

Why: at low rates every scan message is a turn of its own, and pyzmq costs ~3 us of Python
per recv, ~2.5 us per ZMQ_EVENTS check and ~6 us per zmq.Again raised; a turn's drain was a
fifth of its cost. `drain` receives every queued message in one C loop (`zmq_msg_recv` with
ZMQ_DONTWAIT) and `send` sends one with `zmq_send`. The functions are the ones of the libzmq
that pyzmq itself loaded (`sorter.zmq_native` finds their addresses), so the socket handle
is shared: the pyzmq Socket stays the owner (options, poll, close); this is a thin I/O shell
over it, used from the thread that uses the socket, never after the socket is closed.
"""
cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy
from libc.errno cimport EAGAIN, EINTR
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE

import sys

import zmq

cnp.import_array()

if sys.byteorder != "little":        # drain reads the SCAN count as a host integer
    raise ImportError("sorter._zmqio needs a little-endian host")

cdef enum:
    ZMQ_DONTWAIT = 1

ctypedef struct zmq_msg_t:           # libzmq: 64 opaque bytes, pointer-aligned
    uint64_t _[8]

ctypedef int (*msg_init_f)(zmq_msg_t*) noexcept nogil
ctypedef int (*msg_recv_f)(zmq_msg_t*, void*, int) noexcept nogil
ctypedef void* (*msg_data_f)(zmq_msg_t*) noexcept nogil
ctypedef size_t (*msg_size_f)(const zmq_msg_t*) noexcept nogil
ctypedef int (*msg_close_f)(zmq_msg_t*) noexcept nogil
ctypedef int (*send_f)(void*, const void*, size_t, int) noexcept nogil
ctypedef int (*errno_f)() noexcept nogil

SYMBOLS = ("zmq_msg_init", "zmq_msg_recv", "zmq_msg_data", "zmq_msg_size", "zmq_msg_close",
           "zmq_send", "zmq_errno")


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec t
    clock_gettime(CLOCK_REALTIME, &t)          # the clock of time.time_ns()
    return <int64_t> t.tv_sec * 1000000000 + t.tv_nsec


cdef class NativeSocket:
    """One pyzmq socket driven through libzmq's C API: `drain` (a PULL side) and `send` (a
    PUSH side). `symbols` maps each name of SYMBOLS to its address in the libzmq pyzmq uses."""
    cdef void* handle
    cdef readonly object socket          # the owner; kept alive while this is
    cdef msg_init_f msg_init
    cdef msg_recv_f msg_recv
    cdef msg_data_f msg_data
    cdef msg_size_f msg_size
    cdef msg_close_f msg_close
    cdef send_f send_
    cdef errno_f errno_
    cdef int64_t* times
    cdef Py_ssize_t times_cap

    def __cinit__(self, socket, dict symbols):
        missing = [name for name in SYMBOLS if not symbols.get(name)]
        if missing:
            raise ValueError(f"libzmq symbols missing: {', '.join(missing)}")
        self.socket = socket
        self.handle = <void*> <uintptr_t> socket.underlying
        self.msg_init = <msg_init_f> <uintptr_t> symbols["zmq_msg_init"]
        self.msg_recv = <msg_recv_f> <uintptr_t> symbols["zmq_msg_recv"]
        self.msg_data = <msg_data_f> <uintptr_t> symbols["zmq_msg_data"]
        self.msg_size = <msg_size_f> <uintptr_t> symbols["zmq_msg_size"]
        self.msg_close = <msg_close_f> <uintptr_t> symbols["zmq_msg_close"]
        self.send_ = <send_f> <uintptr_t> symbols["zmq_send"]
        self.errno_ = <errno_f> <uintptr_t> symbols["zmq_errno"]
        self.times = NULL
        self.times_cap = 0

    def __dealloc__(self):
        free(self.times)

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = self.times_cap * 2 if self.times_cap else 64
        cdef int64_t* p = <int64_t*> realloc(self.times, cap * sizeof(int64_t))
        if p == NULL:
            raise MemoryError()
        self.times, self.times_cap = p, cap
        return 0

    def drain(self, Py_ssize_t max_events):
        """Receive what is queued (never waits) until nothing is left or the messages hold
        max_events events (the count at bytes 4..8 of a frame of 8 bytes or more, as the
        SCAN header has it; shorter frames count 0). Returns (frames: list of bytes,
        recv_ns: int64 array, the wall-clock time each was received). Raises zmq.ZMQError
        for a failure other than "nothing queued"."""
        cdef zmq_msg_t msg
        cdef int rc, err
        cdef Py_ssize_t k = 0, events = 0, size
        cdef const uint8_t* data
        cdef uint32_t count
        frames = []
        if self.socket.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK, "socket closed")
        while events < max_events:
            self.msg_init(&msg)
            rc = self.msg_recv(&msg, self.handle, ZMQ_DONTWAIT)
            if rc < 0:
                err = self.errno_()
                self.msg_close(&msg)
                if err == EAGAIN:
                    break
                if err == EINTR:
                    continue
                raise zmq.ZMQError(err)
            if k == self.times_cap:
                try:
                    self._grow()
                except BaseException:
                    self.msg_close(&msg)
                    raise
            self.times[k] = _now_ns()
            size = <Py_ssize_t> self.msg_size(&msg)
            data = <const uint8_t*> self.msg_data(&msg)
            if size >= 8:
                memcpy(&count, data + 4, 4)     # little-endian host: see sorter._audit
                events += count
            try:
                frames.append(PyBytes_FromStringAndSize(<const char*> data, size))
            finally:
                self.msg_close(&msg)
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
        cdef int rc, err
        if self.socket.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK, "socket closed")
        while True:
            rc = self.send_(self.handle, PyBytes_AS_STRING(message), PyBytes_GET_SIZE(message),
                            ZMQ_DONTWAIT)
            if rc >= 0:
                return True
            err = self.errno_()
            if err == EAGAIN:
                return False
            if err != EINTR:
                raise zmq.ZMQError(err)
