# The growable buffer and the text writers shared by the compiled modules (_buffer.pyx).
from libc.stdint cimport uint64_t
from libc.string cimport memcpy


cdef struct Buf:
    char *data
    Py_ssize_t len
    Py_ssize_t cap


cdef int grow(Buf *b, Py_ssize_t extra) except -1


cdef inline int put(Buf *b, const char *s, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        grow(b, n)
    memcpy(b.data + b.len, s, n)
    b.len += n
    return 0


cdef int put_value(Buf *b, double v) except -1  # a sample value, as Go's FormatFloat 'g', -1
cdef int put_uint(Buf *b, uint64_t v) except -1
cdef int put_count(Buf *b, uint64_t integer, double floating) except -1  # the float when > 0
cdef int put_escaped(Buf *b, const char *s, Py_ssize_t n) except -1  # a label value, escaped
# A label value in one scan: 1 ASCII with nothing to escape, 0 valid UTF-8 to escape or beyond
# ASCII, -1 not valid UTF-8.
cdef int scan_value(const unsigned char *s, Py_ssize_t n) noexcept
