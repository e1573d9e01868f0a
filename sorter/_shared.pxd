# The compiled layer's shared helpers, one per job (as asyncpg shares its buffer code): column
# checks and conversions for numpy arrays, offset checks, growable C buffers and the clocks.
# The small ones are inline here; the rest live in sorter/_shared.pyx and are called at C level.
#
# Columns go through the NumPy C API, ~20 ns an array; a typed memoryview costs ~0.3 us to
# acquire, and a one-event batch has a dozen or more of them.
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME


# -- columns ------------------------------------------------------------------------------------

cdef inline bint is_column(object values, int typenum, bint writable):
    """A contiguous, aligned, 1-d ndarray of typenum (writable too, if asked)."""
    cdef cnp.ndarray a
    if not isinstance(values, cnp.ndarray):
        return False
    a = <cnp.ndarray> values
    return (cnp.PyArray_TYPE(a) == typenum and cnp.PyArray_NDIM(a) == 1
            and (cnp.PyArray_ISCARRAY(a) if writable else cnp.PyArray_ISCARRAY_RO(a)))


cdef inline cnp.ndarray new_column(Py_ssize_t n, int typenum):
    """A fresh, uninitialised 1-d array of n entries of typenum."""
    cdef cnp.npy_intp dims[1]
    dims[0] = n
    return <cnp.ndarray> cnp.PyArray_EMPTY(1, dims, typenum, 0)


cdef inline void* column_ptr(cnp.ndarray a) noexcept:
    return cnp.PyArray_DATA(a)


cdef inline const void* column_data(object values, int typenum, Py_ssize_t n,
                                    str name) except NULL:
    """The data of a 1-d, aligned, contiguous array of `typenum` with n entries (n < 0: any
    length). TypeError for anything else (callers convert and call again), ValueError for a
    wrong length. An empty array's pointer is valid (NumPy allocates at least one byte) and
    never read."""
    cdef const void* p
    if not is_column(values, typenum, False):
        raise TypeError(f"{name}: expected a contiguous 1-d array of another dtype")
    if n >= 0 and cnp.PyArray_DIM(<cnp.ndarray> values, 0) != n:
        raise ValueError(f"{name} has {cnp.PyArray_DIM(<cnp.ndarray> values, 0)} entries, "
                         f"expected {n}")
    p = cnp.PyArray_DATA(<cnp.ndarray> values)
    if p == NULL:
        raise ValueError(f"{name}: an array without data")
    return p


# `values` as a contiguous 1-d array of typenum: itself when it is one; else, with cast, a
# range-checked conversion of integers (never wrapped); without, a copy of a buffer of exactly
# that type. ValueError (OverflowError for a value out of range) names `name`.
cdef cnp.ndarray as_column(object values, int typenum, str name, bint cast)

# `values` itself, which must be a writable contiguous 1-d array of typenum (ValueError).
cdef cnp.ndarray out_column(object values, int typenum, str name)


# -- offsets ------------------------------------------------------------------------------------

cdef inline bint offsets_bad(const int32_t* o, Py_ssize_t n, Py_ssize_t limit) noexcept nogil:
    """True unless o[0..n-1] (n >= 1) are non-decreasing within 0..limit: what a caller needs
    before it trusts Arrow-style offsets to index, size and copy buffers."""
    cdef Py_ssize_t i
    if n < 1 or o[0] < 0 or o[n - 1] > limit:
        return True
    for i in range(1, n):
        if o[i] < o[i - 1]:
            return True
    return False


# -- growable C buffers -------------------------------------------------------------------------

cdef inline Py_ssize_t grown(Py_ssize_t cap, Py_ssize_t need) noexcept nogil:
    """The capacity a buffer of `cap` items grows to when it must hold `need` (doubling)."""
    return max(need, 2 * cap, 64)


# Reallocate the buffer at *p to n items of `width` bytes, contents kept (MemoryError).
cdef int resize(void** p, Py_ssize_t n, size_t width) except -1

# Grow the buffer at *p (of *cap items of `width` bytes) to hold `need` items.
cdef int reserve(void** p, Py_ssize_t* cap, Py_ssize_t need, size_t width) except -1


# -- clocks -------------------------------------------------------------------------------------

cdef inline int64_t now_ns() noexcept nogil:
    """Wall clock, the clock of time.time_ns(): what decisions and audit rows are stamped with."""
    cdef timespec t
    clock_gettime(CLOCK_REALTIME, &t)
    return <int64_t> t.tv_sec * 1000000000 + t.tv_nsec


cdef inline int64_t mono_ns() noexcept nogil:
    """Monotonic clock, the clock of time.monotonic_ns(): timers (a wall-clock step never
    holds them)."""
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return <int64_t> t.tv_sec * 1000000000 + t.tv_nsec
