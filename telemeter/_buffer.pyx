# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The cold part of the text writers of the compiled modules (docs/architecture.md, D12):
growing the buffer, counts, escaped label values; the C helpers and the hot writers are inline
in _buffer.pxd."""

from libc.stdint cimport uint64_t
from libc.stdlib cimport realloc
from libc.string cimport memcpy


cdef int grow(Buf *b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef char *p
    if b.len + extra <= b.cap:
        return 0
    cap = b.cap * 2
    if cap < b.len + extra:
        cap = b.len + extra
    if cap < 4096:
        cap = 4096
    p = <char *>realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef int put_uint(Buf *b, uint64_t v) except -1:
    cdef char tmp[24]
    cdef int n = snprintf(tmp, 24, "%llu", <unsigned long long>v)
    return put(b, tmp, n)


cdef int put_count(Buf *b, uint64_t integer, double floating) except -1:
    if floating > 0:
        return put_value(b, floating)
    return put_uint(b, integer)


cdef int put_escaped(Buf *b, const char *s, Py_ssize_t n) except -1:
    cdef Py_ssize_t i, j
    cdef char c
    grow(b, 2 * n)
    i = 0
    while i < n:
        j = i + tm_find_escape(s + i, n - i)
        memcpy(b.data + b.len, s + i, j - i)  # the run without special characters
        b.len += j - i
        if j == n:
            break
        c = s[j]
        b.data[b.len] = 92  # backslash
        b.data[b.len + 1] = 110 if c == 10 else c
        b.len += 2
        i = j + 1
    return 0


