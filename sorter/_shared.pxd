# Column checks shared by the compiled modules that take numpy arrays (sorter._audit,
# sorter._turn): through the NumPy C API, ~20 ns an array; a typed memoryview costs ~0.3 us
# to acquire, and a one-event batch has a dozen or more of them.
cimport numpy as cnp
from libc.stdint cimport int32_t


cdef inline const void* column_data(object values, int typenum, Py_ssize_t n,
                                    str name) except NULL:
    """The data of a 1-d, aligned, contiguous array of `typenum` with n entries (n < 0: any
    length). TypeError for anything else (callers convert and call again), ValueError for a
    wrong length. An empty array's pointer is valid (NumPy allocates at least one byte) and
    never read."""
    cdef cnp.ndarray a
    cdef const void* p
    if not isinstance(values, cnp.ndarray):
        raise TypeError(f"{name}: expected a numpy array")
    a = <cnp.ndarray> values
    if (cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_NDIM(a) != 1
            or not cnp.PyArray_ISCARRAY_RO(a)):
        raise TypeError(f"{name}: expected a contiguous 1-d array of another dtype")
    if n >= 0 and cnp.PyArray_DIM(a, 0) != n:
        raise ValueError(f"{name} has {cnp.PyArray_DIM(a, 0)} entries, expected {n}")
    p = cnp.PyArray_DATA(a)
    if p == NULL:
        raise ValueError(f"{name}: an array without data")
    return p


cdef inline bint offsets_bad(const int32_t* o, Py_ssize_t n, Py_ssize_t limit) noexcept nogil:
    """True unless o[0..n-1] (n >= 1) are non-decreasing within 0..limit: what the encoders
    need before they trust offsets to size and copy buffers."""
    cdef Py_ssize_t i
    if n < 1 or o[0] < 0 or o[n - 1] > limit:
        return True
    for i in range(1, n):
        if o[i] < o[i - 1]:
            return True
    return False
