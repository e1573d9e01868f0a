"""The compiled layer's shared helpers that are not inline (declarations: _shared.pxd)."""
import numpy as np
cimport numpy as cnp
from libc.stdlib cimport realloc

cnp.import_array()


cdef cnp.ndarray as_column(object values, int typenum, str name, bint cast):
    if is_column(values, typenum, False):
        return <cnp.ndarray> values
    dtype = cnp.PyArray_DescrFromType(typenum)
    if not cast:
        a = np.ascontiguousarray(values)
        if a.dtype != dtype or a.ndim != 1:
            raise ValueError(f"{name}: expected a 1-d {dtype.name} array, got {a.dtype} with "
                             f"{a.ndim} dimension(s)")
        return <cnp.ndarray> a
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if arr.size == 0:
        return new_column(0, typenum)
    info = np.iinfo(dtype)
    if arr.dtype.kind in "fO" and not isinstance(values, cnp.ndarray):
        # A sequence of Python ints beyond int64 becomes float64 or object: check each value.
        vals = np.asarray(values, dtype=object).tolist()
        if not all(isinstance(v, (int, np.integer)) for v in vals):
            raise ValueError(f"{name} must hold integers")
        if min(vals) < info.min or max(vals) > info.max:
            raise OverflowError(f"{name} out of range for {dtype.name}")
        return <cnp.ndarray> np.array([int(v) for v in vals], dtype)
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integers, got {arr.dtype}")
    if arr.dtype.kind != "b" and (int(arr.min()) < info.min or int(arr.max()) > info.max):
        raise OverflowError(f"{name} out of range for {dtype.name}")
    return <cnp.ndarray> np.ascontiguousarray(arr, dtype)


cdef cnp.ndarray out_column(object values, int typenum, str name):
    if is_column(values, typenum, True):
        return <cnp.ndarray> values
    raise ValueError(f"{name}: expected a writable contiguous 1-d "
                     f"{cnp.PyArray_DescrFromType(typenum).name} array")


cdef int resize(void** p, Py_ssize_t n, size_t width) except -1:
    cdef void* q = realloc(p[0], n * width)
    if q == NULL:
        raise MemoryError(f"a buffer of {n} x {width} bytes")
    p[0] = q
    return 0


cdef int reserve(void** p, Py_ssize_t* cap, Py_ssize_t need, size_t width) except -1:
    cdef Py_ssize_t n
    if need > cap[0]:
        n = grown(cap[0], need)
        resize(p, n, width)
        cap[0] = n
    return 0
