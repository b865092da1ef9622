# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled Remote-Write 1.0 encoder: rendered sample lines -> a ``WriteRequest`` protobuf.

The upload pass renders each family's sample lines in the text format (`telemeter.exposition`);
this turns the same lines into the ``timeseries`` of a ``prometheus.WriteRequest``, one series per
line, labels sorted by name with ``__name__`` among them, one sample with the line's timestamp
(docs/architecture.md, "Remote write"). `telemeter.remotewrite.encode_reference` is the plain
specification; the tests check that the two give the same bytes.

The lines come from the pass, so they are well formed: names are valid, values are escaped and
unique, empty values are already left out. A line that does not parse raises ValueError all the
same, rather than produce a malformed request.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc, strtod, strtoll
from libc.string cimport memchr, memcmp, memcpy

from telemeter._buffer cimport Buf, grow, put_varint_raw, varint_size

DEF MAX_LABELS = 512


cdef struct Label:
    const char* name
    Py_ssize_t name_len
    Py_ssize_t value_at  # offset in the unescaped-values scratch buffer
    Py_ssize_t value_len


cdef inline void put_bytes(Buf* b, const char* p, Py_ssize_t n) noexcept:
    memcpy(b.data + b.len, p, n)
    b.len += n


cdef inline bint label_less(Label* a, Label* b) noexcept:
    cdef Py_ssize_t n = a.name_len if a.name_len < b.name_len else b.name_len
    cdef int c = memcmp(a.name, b.name, n)
    if c != 0:
        return c < 0
    return a.name_len < b.name_len


cdef Py_ssize_t encode_line(
    const char* p, const char* end, Buf* out, Buf* values, Label* labels
) except -1:
    """Append one series for the line at ``p``; returns the bytes of the line consumed."""
    cdef const char* start = p
    cdef const char* q
    cdef const char* r
    cdef const char* s
    cdef char* dst
    cdef char c
    cdef int n = 1
    cdef int i, j
    cdef Label tmp
    cdef Py_ssize_t size, lsize
    cdef double value
    cdef char* stop
    cdef int64_t ts
    cdef uint64_t bits
    values.len = 0
    labels[0].name = b"__name__"
    labels[0].name_len = 8
    labels[0].value_at = 0
    while p < end and p[0] != b"{" and p[0] != b" ":
        p += 1
    grow(values, p - start)
    put_bytes(values, start, p - start)
    labels[0].value_len = p - start
    if p < end and p[0] == b"{":
        p += 1
        while p < end and p[0] != b"}":
            if n == MAX_LABELS:
                raise ValueError("too many labels on one line")
            q = p
            r = <const char*>memchr(p, ord("="), end - p)
            p = end if r == NULL else r
            if p + 1 >= end or p[1] != b'"':
                raise ValueError("malformed label in a sample line")
            labels[n].name = q
            labels[n].name_len = p - q
            p += 2
            labels[n].value_at = values.len
            grow(values, end - p)
            dst = values.data + values.len
            while True:  # runs between escapes are copied whole
                r = <const char*>memchr(p, ord('"'), end - p)
                if r == NULL:
                    raise ValueError("unterminated label value in a sample line")
                s = <const char*>memchr(p, ord("\\"), r - p)
                if s == NULL:
                    memcpy(dst, p, r - p)
                    dst += r - p
                    p = r
                    break
                memcpy(dst, p, s - p)
                dst += s - p
                c = s[1]
                dst[0] = 10 if c == ord("n") else c  # \n, \\ or \"
                dst += 1
                p = s + 2
            values.len = dst - values.data
            labels[n].value_len = values.len - labels[n].value_at
            n += 1
            p += 1
            if p < end and p[0] == b",":
                p += 1
        p += 1
    if p >= end or p[0] != b" ":
        raise ValueError("malformed sample line")
    value = strtod(p + 1, &stop)
    if stop == p + 1 or stop >= end or stop[0] != b" ":
        raise ValueError("malformed sample value")
    q = stop + 1
    ts = strtoll(q, &stop, 10)
    if stop == q or stop >= end or stop[0] != b"\n":
        raise ValueError("malformed sample timestamp")
    p = stop + 1
    for i in range(1, n):  # insertion sort: a handful of labels, mostly in order already
        tmp = labels[i]
        j = i - 1
        while j >= 0 and label_less(&tmp, &labels[j]):
            labels[j + 1] = labels[j]
            j -= 1
        labels[j + 1] = tmp
    size = 0
    for i in range(n):
        lsize = (
            2 + varint_size(labels[i].name_len) + labels[i].name_len
            + varint_size(labels[i].value_len) + labels[i].value_len
        )
        size += 1 + varint_size(lsize) + lsize
    lsize = 9 + 1 + varint_size(<uint64_t>ts)
    size += 1 + varint_size(lsize) + lsize
    grow(out, 1 + 10 + size)
    out.data[out.len] = 0x0A  # WriteRequest.timeseries = 1
    out.len += 1
    put_varint_raw(out, size)
    for i in range(n):
        lsize = (
            2 + varint_size(labels[i].name_len) + labels[i].name_len
            + varint_size(labels[i].value_len) + labels[i].value_len
        )
        out.data[out.len] = 0x0A  # TimeSeries.labels = 1
        out.len += 1
        put_varint_raw(out, lsize)
        out.data[out.len] = 0x0A  # Label.name = 1
        out.len += 1
        put_varint_raw(out, labels[i].name_len)
        put_bytes(out, labels[i].name, labels[i].name_len)
        out.data[out.len] = 0x12  # Label.value = 2
        out.len += 1
        put_varint_raw(out, labels[i].value_len)
        put_bytes(out, values.data + labels[i].value_at, labels[i].value_len)
    out.data[out.len] = 0x12  # TimeSeries.samples = 2
    out.len += 1
    put_varint_raw(out, 9 + 1 + varint_size(<uint64_t>ts))
    out.data[out.len] = 0x09  # Sample.value = 1, fixed64
    out.len += 1
    memcpy(&bits, &value, 8)
    for i in range(8):  # little endian
        out.data[out.len] = <char>(bits & 0xFF)
        out.len += 1
        bits >>= 8
    out.data[out.len] = 0x10  # Sample.timestamp = 2, varint
    out.len += 1
    put_varint_raw(out, <uint64_t>ts)
    return p - start


def encode_write_request(families):
    """The ``WriteRequest`` of the families' sample lines: ``[(name, type, lines), ...]``.

    Returns (the protobuf bytes, the number of series).
    """
    cdef Buf out = Buf(NULL, 0, 0)
    cdef Buf values = Buf(NULL, 0, 0)
    cdef Label* labels = <Label*>malloc(MAX_LABELS * sizeof(Label))
    cdef const char* p
    cdef const char* end
    cdef Py_ssize_t series = 0
    cdef bytes text
    if labels == NULL:
        raise MemoryError()
    try:
        for family in families:
            text = family[2]
            p = PyBytes_AS_STRING(text)
            end = p + PyBytes_GET_SIZE(text)
            while p < end:
                p += encode_line(p, end, &out, &values, labels)
                series += 1
        return PyBytes_FromStringAndSize(out.data, out.len), series
    finally:
        free(out.data)
        free(values.data)
        free(labels)
