# libzmq's C API as pyzmq loaded it, for sorter.engine._zmqio and sorter.engine._scanloop: the types, a table of
# the functions (their addresses come from sorter.engine.zmq_native) and the receive and send steps
# both modules use. The socket handles are pyzmq's (Socket.underlying): the pyzmq Socket stays
# the owner; these are called from the thread that uses it, never after it is closed.
from libc.errno cimport EAGAIN, EINTR
from libc.stdint cimport uint64_t, uintptr_t

cdef enum:
    ZMQ_DONTWAIT = 1
    ZMQ_POLLIN = 1

ctypedef struct zmq_msg_t:           # libzmq: 64 opaque bytes, pointer-aligned
    uint64_t _[8]

ctypedef struct zmq_pollitem_t:      # libzmq on POSIX
    void* socket
    int fd
    short events
    short revents

ctypedef int (*msg_init_f)(zmq_msg_t*) noexcept nogil
ctypedef int (*msg_recv_f)(zmq_msg_t*, void*, int) noexcept nogil
ctypedef void* (*msg_data_f)(zmq_msg_t*) noexcept nogil
ctypedef size_t (*msg_size_f)(const zmq_msg_t*) noexcept nogil
ctypedef int (*msg_close_f)(zmq_msg_t*) noexcept nogil
ctypedef int (*send_f)(void*, const void*, size_t, int) noexcept nogil
ctypedef int (*errno_f)() noexcept nogil
ctypedef int (*poll_f)(zmq_pollitem_t*, int, long) noexcept nogil

ctypedef struct Api:
    msg_init_f msg_init
    msg_recv_f msg_recv
    msg_data_f msg_data
    msg_size_f msg_size
    msg_close_f msg_close
    send_f send
    errno_f zmq_errno
    poll_f poll                      # NULL unless "zmq_poll" was asked for


cdef inline int load_api(Api* api, dict symbols, tuple names) except -1:
    """Fill `api` from {name: address}; every name of `names` must be there."""
    missing = [name for name in names if not symbols.get(name)]
    if missing:
        raise ValueError(f"libzmq symbols missing: {', '.join(missing)}")
    api.msg_init = <msg_init_f> <uintptr_t> symbols["zmq_msg_init"]
    api.msg_recv = <msg_recv_f> <uintptr_t> symbols["zmq_msg_recv"]
    api.msg_data = <msg_data_f> <uintptr_t> symbols["zmq_msg_data"]
    api.msg_size = <msg_size_f> <uintptr_t> symbols["zmq_msg_size"]
    api.msg_close = <msg_close_f> <uintptr_t> symbols["zmq_msg_close"]
    api.send = <send_f> <uintptr_t> symbols["zmq_send"]
    api.zmq_errno = <errno_f> <uintptr_t> symbols["zmq_errno"]
    api.poll = <poll_f> <uintptr_t> symbols.get("zmq_poll", 0)
    return 0


cdef inline int recv_nowait(const Api* api, void* handle, zmq_msg_t* msg) except -1:
    """Receive one queued message into `msg` without waiting: 1 (the caller closes msg), or 0
    when nothing is queued. EINTR is retried; any other failure raises zmq.ZMQError."""
    cdef int err
    while True:
        api.msg_init(msg)
        if api.msg_recv(msg, handle, ZMQ_DONTWAIT) >= 0:
            return 1
        err = api.zmq_errno()
        api.msg_close(msg)
        if err == EAGAIN:
            return 0
        if err != EINTR:
            import zmq
            raise zmq.ZMQError(err)


cdef inline int send_nowait(const Api* api, void* handle, const char* data,
                            size_t size) except -1:
    """Send one message without waiting: 1 when queued, 0 when the high-water mark is
    reached (EAGAIN). EINTR is retried; any other failure raises zmq.ZMQError."""
    cdef int err
    while True:
        if api.send(handle, data, size, ZMQ_DONTWAIT) >= 0:
            return 1
        err = api.zmq_errno()
        if err == EAGAIN:
            return 0
        if err != EINTR:
            import zmq
            raise zmq.ZMQError(err)
