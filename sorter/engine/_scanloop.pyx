# cython: language_level=3
"""The engine's scan turns in C, over libzmq's C API: wait, drain, decode, route, write the
audit, send the decision, count; turn after turn, back to Python only when something needs it.

Why: at low rates every scan message is a turn of its own, and what a turn costs is the
engine's added latency. With the compiled parts strung together by Python (poll, drain,
decode, turn, audit bookkeeping, send, count) a one-event turn still spent ~25 us of CPU,
most of it in the calls between the parts; the bare relay it is measured against spends ~10.

The parts stay where they live (`sorter.wire._wire` decodes, `sorter.engine._turn` routes and encodes,
`sorter.audit._audit` writes the IPC message); this module is the loop around them and its I/O:
zmq_poll on the scans, feedback and control sockets, zmq_msg_recv into an arena, write(2) to
the audit file the writer lent (`AuditWriter.lend`), zmq_send. It returns to Python, keeping
what it drained, when:

- TIMER: `until_mono_ns` passed (metrics fold, audit tick, heartbeat are Python's);
- OTHER: a feedback or control message is waiting (they apply before the next scans);
- FALLBACK: a drained frame is malformed, or a read is not UTF-8: `take_frames()` hands the
  frames to the engine's Python path, which audits them as it always did;
- AUDIT: no file lent, its time is up or it is full: the writer seals and lends again;
- COUNTS: the metrics' per-event buffers are full: fold them first;
- SIGNAL: zmq_poll was interrupted (a signal handler wants to run).

Write-before-send holds: a decision is sent only after its audit message was written.
"""
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free
from libc.string cimport memcpy, memset
from libc.errno cimport EINTR, errno
from posix.unistd cimport fsync
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE

from sorter.audit._audit cimport utf8_ok
from sorter._shared cimport column_data, grown, mono_ns, now_ns, offsets_bad, reserve, resize
from sorter.core._core cimport RouterState
from sorter.engine._libzmq cimport (Api, ZMQ_POLLIN, load_api, recv_nowait, send_nowait, zmq_msg_t,
                             zmq_pollitem_t)
from sorter.engine._turn cimport EngineTurn
from sorter.wire._wire cimport (Frame, Limits, _limits, scans_count, scans_fill, OK, K_SCAN,
                           MAX_OFFSET)

import os
import sys

import numpy as np
import zmq

from sorter.audit._audit import META_LENGTH as _META_LENGTH

cnp.import_array()

if sys.byteorder != "little":        # the drain reads the SCAN count as a host integer
    raise ImportError("sorter.engine._scanloop needs a little-endian host")

# why run() returned
TIMER, OTHER, FALLBACK, AUDIT, COUNTS, SIGNAL = range(6)
cdef enum:
    C_TIMER = 0
    C_OTHER = 1
    C_FALLBACK = 2
    C_AUDIT = 3
    C_COUNTS = 4
    C_SIGNAL = 5
    C_GO_ON = -1

cdef int64_t META = _META_LENGTH

SYMBOLS = ("zmq_msg_init", "zmq_msg_recv", "zmq_msg_data", "zmq_msg_size", "zmq_msg_close",
           "zmq_send", "zmq_errno", "zmq_poll")


cdef class ScanLoop:
    """The scan turns of one engine: its scans (PULL), decisions (PUSH), feedback and control
    sockets (pyzmq Sockets, which stay the owners), driven through the libzmq functions in
    `symbols` (each name of SYMBOLS: its address in the libzmq pyzmq loaded).

    `run(...)` turns until it has to return (see the module) and says why. What it did is
    kept until taken: `take_audit()` (where the messages went in the lent file),
    `take_counters()`, `take_frames()`; the routed events' figures are in `turn`
    (`EngineTurn.take_counts`). `decision_seq` and `batch_seq` are the last ones given out: set
    them before a run when Python decided in between, read them after."""
    cdef void* h_scans
    cdef void* h_decisions
    cdef void* h_feedback
    cdef void* h_control
    cdef readonly object sockets        # the owners, kept alive while this is
    cdef readonly EngineTurn turn
    cdef Api api
    cdef Limits lim
    cdef Py_ssize_t batch_max
    # drained frames not yet decided: bytes in the arena, start/size/receive time per frame
    cdef uint8_t* arena
    cdef Py_ssize_t arena_cap, arena_len
    cdef Py_ssize_t* f_start
    cdef Py_ssize_t* f_size
    cdef int64_t* f_time
    cdef Frame* frames
    cdef int32_t* f_count
    cdef uint8_t* f_kind
    cdef Py_ssize_t f_cap, n_frames
    # decoded columns of the pending frames, and each event's receive time
    cdef uint64_t* pid
    cdef uint64_t* seq
    cdef int64_t* ts
    cdef uint16_t* sc
    cdef uint8_t* rc
    cdef int64_t* recv
    cdef int32_t* eo
    cdef Py_ssize_t ev_cap, eo_cap
    cdef int32_t* ro
    cdef Py_ssize_t ro_cap
    cdef uint8_t* data
    cdef Py_ssize_t data_cap
    # the audit file lent by the writer, and the messages written to it since take_audit()
    cdef int fd
    cdef int64_t pos, pos_limit, audit_until_ns
    cdef bint fsync_each
    cdef int64_t* blocks                # (offset, body length) per message
    cdef Py_ssize_t blocks_cap, n_blocks
    cdef int64_t rows, fsyncs
    # since take_counters()
    cdef int64_t messages, undelivered
    cdef public uint64_t decision_seq
    cdef public uint32_t batch_seq

    def __cinit__(self, scans, decisions, feedback, control, dict symbols, EngineTurn turn, *,
                  Py_ssize_t batch_max, Py_ssize_t max_frame, Py_ssize_t max_records,
                  int max_reads, int max_read_len):
        load_api(&self.api, symbols, SYMBOLS)
        if batch_max < 1:
            raise ValueError("batch_max must be >= 1")
        self.sockets = (scans, decisions, feedback, control)
        self.h_scans = <void*> <uintptr_t> scans.underlying
        self.h_decisions = <void*> <uintptr_t> decisions.underlying
        self.h_feedback = <void*> <uintptr_t> feedback.underlying
        self.h_control = <void*> <uintptr_t> control.underlying
        self.turn = turn
        self.lim = _limits(max_frame, max_records, max_reads, max_read_len)
        self.batch_max = batch_max
        self.fd = -1

    def __dealloc__(self):
        free(self.arena)
        free(self.f_start)
        free(self.f_size)
        free(self.f_time)
        free(self.frames)
        free(self.f_count)
        free(self.f_kind)
        free(self.pid)
        free(self.seq)
        free(self.ts)
        free(self.sc)
        free(self.rc)
        free(self.recv)
        free(self.eo)
        free(self.ro)
        free(self.data)
        free(self.blocks)

    # -- the audit file -------------------------------------------------------------------

    def lend(self, int fd, int64_t pos, int64_t pos_limit, int64_t until_ns, bint fsync_each):
        """Write audit messages to `fd` from `pos` on (the writer's position), until the
        position reaches pos_limit or the decision time reaches until_ns; fsync after each
        message with fsync_each. fd -1: no file (run returns AUDIT before a write). Messages
        already written must be taken (`take_audit`) first."""
        if self.n_blocks:
            raise ValueError("take_audit() before lending another file")
        self.fd, self.pos, self.pos_limit = fd, pos, pos_limit
        self.audit_until_ns, self.fsync_each = until_ns, fsync_each

    def take_audit(self):
        """(position, blocks, rows, fsyncs) since the file was lent or last taken: blocks is
        an int64 array of (offset, body length) per message written, in order."""
        cdef cnp.npy_intp dims[2]
        dims[0], dims[1] = self.n_blocks, 2
        cdef cnp.ndarray out = cnp.PyArray_EMPTY(2, dims, cnp.NPY_INT64, 0)
        if self.n_blocks:
            memcpy(cnp.PyArray_DATA(out), self.blocks, self.n_blocks * 2 * sizeof(int64_t))
        result = (self.pos, out, self.rows, self.fsyncs)
        self.n_blocks = self.rows = self.fsyncs = 0
        return result

    def take_counters(self):
        """(messages received, decisions undelivered) since the last call."""
        out = (self.messages, self.undelivered)
        self.messages = self.undelivered = 0
        return out

    def take_frames(self):
        """The drained frames not decided (list of bytes) and their receive times (int64
        array); they are the caller's now."""
        cdef Py_ssize_t i
        frames = [PyBytes_FromStringAndSize(<const char*> self.arena + self.f_start[i],
                                            self.f_size[i]) for i in range(self.n_frames)]
        cdef cnp.npy_intp dims[1]
        dims[0] = self.n_frames
        cdef cnp.ndarray times = cnp.PyArray_EMPTY(1, dims, cnp.NPY_INT64, 0)
        if self.n_frames:
            memcpy(cnp.PyArray_DATA(times), self.f_time, self.n_frames * sizeof(int64_t))
        self.n_frames = self.arena_len = 0
        return frames, times

    @property
    def pending(self):
        """Drained frames not decided yet."""
        return self.n_frames

    # -- the loop -------------------------------------------------------------------------

    def run(self, RouterState router, bytes plan_version, name_offsets, name_data,
            int64_t deadline_ns, int64_t until_mono_ns, long timeout_ms):
        """Turn until one of TIMER, OTHER, FALLBACK, AUDIT, COUNTS, SIGNAL (see the module)
        and return it. Routes by `router`'s plan (`plan_version` UTF-8, destination names by
        index in name_offsets/name_data); `deadline_ns` makes scans `late`; returns TIMER
        once the monotonic clock (`time.monotonic_ns`) reaches until_mono_ns, and waits at
        most timeout_ms at a time for messages. Raises zmq.ZMQError (a socket failure other than
        EAGAIN), OSError (the audit write or fsync failed: the decisions of that turn were
        not sent), WireError (a DECISION message the limits refuse)."""
        cdef const int32_t* no = <const int32_t*> column_data(name_offsets, cnp.NPY_INT32, -1, "name_offsets")
        cdef const uint8_t* nd = <const uint8_t*> column_data(name_data, cnp.NPY_UINT8, -1, "name_data")
        cdef Py_ssize_t n_names = cnp.PyArray_SIZE(name_offsets) - 1
        if n_names < 0 or offsets_bad(no, n_names + 1, cnp.PyArray_SIZE(name_data)):
            raise ValueError("name_offsets are not offsets into name_data")
        for s in self.sockets:
            if s.closed:
                raise zmq.ZMQError(zmq.ENOTSOCK, "socket closed")
        cdef zmq_pollitem_t items[3]
        cdef int rc, err
        cdef int64_t now
        cdef long wait_ms
        cdef int code
        while True:
            if self.n_frames == 0:
                now = mono_ns()                # a wall-clock step never holds timers
                if now >= until_mono_ns:
                    return TIMER
                wait_ms = min(timeout_ms, (until_mono_ns - now + 999999) // 1000000)
                memset(items, 0, sizeof(items))
                items[0].socket, items[0].events = self.h_scans, ZMQ_POLLIN
                items[1].socket, items[1].events = self.h_feedback, ZMQ_POLLIN
                items[2].socket, items[2].events = self.h_control, ZMQ_POLLIN
                with nogil:
                    rc = self.api.poll(items, 3, wait_ms)
                if rc < 0:
                    err = self.api.zmq_errno()
                    if err == EINTR:
                        return SIGNAL
                    raise zmq.ZMQError(err)
                if items[1].revents or items[2].revents:
                    return OTHER
                if not items[0].revents:
                    continue
                self._drain()
                if self.n_frames == 0:
                    continue
            code = self._decide(router, plan_version, no, n_names, nd, deadline_ns)
            if code != C_GO_ON:
                return code

    cdef int _drain(self) except -1:
        """Receive what is queued (never waits) into the arena, until nothing is left or the
        frames hold batch_max events (the count at bytes 4..8) or are batch_max frames."""
        cdef zmq_msg_t msg
        cdef Py_ssize_t events = 0, size, k
        cdef const uint8_t* p
        cdef uint32_t count
        while (events < self.batch_max and self.n_frames < self.batch_max
               and recv_nowait(&self.api, self.h_scans, &msg)):
            size = <Py_ssize_t> self.api.msg_size(&msg)
            p = <const uint8_t*> self.api.msg_data(&msg)
            k = self.n_frames
            try:
                reserve(<void**> &self.arena, &self.arena_cap, self.arena_len + size + 1, 1)
                self._reserve_frames(k + 1)
            except BaseException:
                self.api.msg_close(&msg)
                raise
            self.f_time[k] = now_ns()
            if size:
                memcpy(self.arena + self.arena_len, p, size)
            self.api.msg_close(&msg)
            if size >= 8:
                memcpy(&count, self.arena + self.arena_len + 4, 4)
                events += count
            self.f_start[k], self.f_size[k] = self.arena_len, size
            self.arena_len += size
            self.n_frames = k + 1
        return 0

    cdef int _reserve_frames(self, Py_ssize_t n) except -1:
        """Room for n frames in every per-frame buffer (they share one capacity)."""
        if n <= self.f_cap:
            return 0
        cdef Py_ssize_t cap = grown(self.f_cap, n)
        resize(<void**> &self.f_start, cap, sizeof(Py_ssize_t))
        resize(<void**> &self.f_size, cap, sizeof(Py_ssize_t))
        resize(<void**> &self.f_time, cap, sizeof(int64_t))
        resize(<void**> &self.frames, cap, sizeof(Frame))
        resize(<void**> &self.f_count, cap, sizeof(int32_t))
        resize(<void**> &self.f_kind, cap, sizeof(uint8_t))
        self.f_cap = cap
        return 0

    cdef int _reserve_columns(self, Py_ssize_t ne, Py_ssize_t nr, Py_ssize_t nd) except -1:
        """Room for ne events (per-event columns share one capacity), nr reads, nd bytes."""
        cdef Py_ssize_t cap
        if ne > self.ev_cap:
            cap = grown(self.ev_cap, ne)
            resize(<void**> &self.pid, cap, sizeof(uint64_t))
            resize(<void**> &self.seq, cap, sizeof(uint64_t))
            resize(<void**> &self.ts, cap, sizeof(int64_t))
            resize(<void**> &self.sc, cap, sizeof(uint16_t))
            resize(<void**> &self.rc, cap, sizeof(uint8_t))
            resize(<void**> &self.recv, cap, sizeof(int64_t))
            self.ev_cap = cap
        reserve(<void**> &self.eo, &self.eo_cap, ne + 1, sizeof(int32_t))
        reserve(<void**> &self.ro, &self.ro_cap, nr + 1, sizeof(int32_t))
        reserve(<void**> &self.data, &self.data_cap, max(nd, 1), sizeof(uint8_t))
        return 0

    cdef int _decide(self, RouterState router, bytes plan_version, const int32_t* no,
                     Py_ssize_t n_names, const uint8_t* nd, int64_t deadline_ns) except -2:
        """Decode the pending frames and decide them: one turn. C_GO_ON when done (the
        frames are gone), else why it cannot (the frames stay)."""
        cdef Py_ssize_t k = self.n_frames, i, j, e, ne = 0, nr = 0, nd_ = 0, fe, fr, fd, length
        cdef int64_t now
        cdef uint64_t first
        cdef uint32_t batch_seq
        cdef int err = 0
        memset(self.frames, 0, k * sizeof(Frame))
        for i in range(k):
            self.frames[i].p = self.arena + self.f_start[i]   # valid even for 0 bytes
            self.frames[i].size = self.f_size[i]
        scans_count(self.frames, k, &self.lim, &ne, &nr, &nd_)
        for i in range(k):
            if self.frames[i].err != OK:
                return C_FALLBACK
        if nr > MAX_OFFSET or nd_ > MAX_OFFSET:
            return C_FALLBACK
        if ne == 0:                             # heartbeats only
            self.messages += k
            self.n_frames = self.arena_len = 0
            return C_GO_ON
        if not self.turn.has_room(ne):
            return C_COUNTS
        now = now_ns()
        if self.fd < 0 or now >= self.audit_until_ns or self.pos >= self.pos_limit:
            return C_AUDIT
        self._reserve_columns(ne, nr, nd_)
        scans_fill(self.frames, k, &self.lim, self.pid, self.seq, self.ts, self.sc, self.rc,
                   self.eo, self.ro, self.data, self.f_count, self.f_kind, &fe, &fr, &fd)
        if fe != ne:                            # cannot happen: the arena is ours alone
            return C_FALLBACK
        if not utf8_ok(self.data, fd):           # a read that is not UTF-8: pyarrow's job,
            return C_FALLBACK                   # before routing moves any chute cursor
        e = 0
        for i in range(k):
            for j in range(self.f_count[i]):
                self.recv[e + j] = self.f_time[i]
            e += self.f_count[i]
        first = self.decision_seq + 1
        batch_seq = self.batch_seq + 1
        message = self.turn.run_c(router, ne, self.pid, self.sc, self.ts, self.rc, self.eo,
                                  self.ro, self.data, self.seq, now, deadline_ns, first,
                                  plan_version, no, n_names, nd, batch_seq,
                                  self.lim.max_frame, self.lim.max_records)
        if self.turn.audit_length < 0:          # utf8_ok said yes above
            raise RuntimeError("the audit encoder declined reads utf8_ok took")
        # write before send: the audit message first (a failure raises: nothing is sent)
        length = self.turn.encoder.write_c(self.fd)
        reserve(<void**> &self.blocks, &self.blocks_cap, 2 * (self.n_blocks + 1),
                 sizeof(int64_t))
        self.blocks[2 * self.n_blocks] = self.pos
        self.blocks[2 * self.n_blocks + 1] = length - META
        self.n_blocks += 1
        self.pos += length
        self.rows += ne
        self.decision_seq += ne
        self.batch_seq = batch_seq
        self.messages += k
        self.n_frames = self.arena_len = 0
        if self.fsync_each:
            with nogil:
                if fsync(self.fd) < 0:
                    err = errno
            if err:
                raise OSError(err, os.strerror(err))
            self.fsyncs += 1
        try:
            if not send_nowait(&self.api, self.h_decisions, PyBytes_AS_STRING(message),
                               PyBytes_GET_SIZE(message)):
                self.undelivered += ne          # the high-water mark: PLC side absent or slow
        except BaseException:
            self.turn.count_c(now_ns(), self.recv, 0)
            raise
        self.turn.count_c(now_ns(), self.recv, 0)
        return C_GO_ON
