# The Remote-Write side of the upload pass (docs/architecture.md, "Remote write (D13)"): while
# `_fastpass` renders a kept metric's text lines, these write the same series into a
# `prometheus.WriteRequest`, from the labels the pass has already decoded (no parse of the text
# again). Inline, so they compile into `_fastpass`. `telemeter.remotewrite.encode_reference` of
# the rendered lines is the specification: the tests check the bytes are the same.
#
# Per label shape (the label names of a run of metrics, which rarely change within a family),
# `rw_order` sorts the candidate labels (the names kept, then the extra labels appended) by
# (name, value) as the reference's `sorted` does, once. Per metric, the pass hands `rw_label` its
# labels in that order (empty values left out) and `rw_encode` encodes them once as
# `TimeSeries.labels` fields; per line, `rw_series` inserts `__name__` (and `le`/`quantile`) at
# their sorted places and appends the series with its one sample. The writers go through a
# local pointer (`_buffer.varint_at`).
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy

from telemeter._buffer cimport Buf, grow, tm_copy, varint_at, varint_size


cdef struct RWLabel:
    const char *name
    Py_ssize_t name_len
    const char *value
    Py_ssize_t value_len
    Py_ssize_t source  # rw_order: where the pass finds it (a name's index, or -1 - extra)


cdef struct RW:
    Buf out  # the WriteRequest so far
    Buf base  # the metric's labels, sorted, as encoded TimeSeries.labels fields
    RWLabel *labels  # the metric's labels, sorted
    Py_ssize_t *at  # per label: where its field starts in base; at[n] is the end
    Py_ssize_t n
    Py_ssize_t *order  # the shape's candidate labels (RWLabel.source), sorted
    Py_ssize_t norder
    Py_ssize_t series
    uint64_t ts  # every sample's timestamp (the server's receive time)


cdef inline int compare(const char *a, Py_ssize_t an, const char *b, Py_ssize_t bn) noexcept:
    """Bytewise order of two short strings, as Python compares bytes (a loop: names differ
    within a few bytes, and a call to memcmp costs more)."""
    cdef Py_ssize_t i
    cdef Py_ssize_t n = an if an < bn else bn
    for i in range(n):
        if a[i] != b[i]:
            return -1 if <unsigned char>a[i] < <unsigned char>b[i] else 1
    return -1 if an < bn else (1 if an > bn else 0)


cdef inline bint pair_before(const char *a, Py_ssize_t an, const char *av, Py_ssize_t avn,
                             const char *b, Py_ssize_t bn, const char *bv, Py_ssize_t bvn) noexcept:
    """(name a, value av) < (name b, value bv), as Python compares tuples of bytes."""
    cdef int c = compare(a, an, b, bn)
    return c < 0 or (c == 0 and compare(av, avn, bv, bvn) < 0)


cdef inline Py_ssize_t label_size(Py_ssize_t name_len, Py_ssize_t value_len) noexcept:
    """The size of a Label message (name = 1, value = 2)."""
    return 2 + varint_size(name_len) + name_len + varint_size(value_len) + value_len


cdef inline char *label_at(char *p, const char *name, Py_ssize_t name_len, const char *value,
                           Py_ssize_t value_len) noexcept:  # the caller has grown the buffer
    """One ``TimeSeries.labels`` field at ``p``; returns its end."""
    p[0] = 0x0A  # TimeSeries.labels = 1
    p = varint_at(p + 1, label_size(name_len, value_len))
    p[0] = 0x0A  # Label.name = 1
    p = varint_at(p + 1, name_len)
    tm_copy(p, name, name_len)
    p += name_len
    p[0] = 0x12  # Label.value = 2
    p = varint_at(p + 1, value_len)
    tm_copy(p, value, value_len)
    return p + value_len


cdef inline Py_ssize_t field_size(Py_ssize_t name_len, Py_ssize_t value_len) noexcept:
    cdef Py_ssize_t size = label_size(name_len, value_len)
    return 1 + varint_size(size) + size


cdef inline void rw_begin(RW *rw) noexcept:
    rw.n = 0


cdef inline void rw_label(RW *rw, const char *name, Py_ssize_t name_len, const char *value,
                          Py_ssize_t value_len, Py_ssize_t source) noexcept:
    # rw.labels has room for every label
    rw.labels[rw.n].source = source
    rw.labels[rw.n].name = name
    rw.labels[rw.n].name_len = name_len
    rw.labels[rw.n].value = value
    rw.labels[rw.n].value_len = value_len
    rw.n += 1


cdef inline void rw_order(RW *rw) noexcept:
    """Sort the candidates given with `rw_label` (a shape's, values of extras only) into
    ``rw.order``; insertion sort: a handful of labels, mostly in order already."""
    cdef Py_ssize_t i, j
    cdef RWLabel tmp
    cdef RWLabel *l = rw.labels
    for i in range(1, rw.n):
        tmp = l[i]
        j = i - 1
        while j >= 0 and pair_before(tmp.name, tmp.name_len, tmp.value, tmp.value_len,
                                     l[j].name, l[j].name_len, l[j].value, l[j].value_len):
            l[j + 1] = l[j]
            j -= 1
        l[j + 1] = tmp
    for i in range(rw.n):
        rw.order[i] = l[i].source
    rw.norder = rw.n


cdef inline int rw_encode(RW *rw) except -1:
    """Encode the metric's labels, given in order, as ``TimeSeries.labels`` fields in base."""
    cdef Py_ssize_t i, size = 0
    cdef RWLabel *l = rw.labels
    cdef char *p
    for i in range(rw.n):
        size += field_size(l[i].name_len, l[i].value_len)
    rw.base.len = 0
    grow(&rw.base, size)
    p = rw.base.data
    for i in range(rw.n):
        rw.at[i] = p - rw.base.data
        p = label_at(p, l[i].name, l[i].name_len, l[i].value, l[i].value_len)
    rw.at[rw.n] = rw.base.len = p - rw.base.data
    return 0


cdef inline Py_ssize_t rw_place(RW *rw, const char *name, Py_ssize_t name_len, const char *value,
                                Py_ssize_t value_len, const char *more, Py_ssize_t more_len) noexcept:
    """The index among the metric's sorted labels where (name, value + more) goes."""
    cdef Py_ssize_t i = 0
    cdef int c
    cdef RWLabel *l
    while i < rw.n:
        l = &rw.labels[i]
        c = compare(l.name, l.name_len, name, name_len)
        if c == 0:  # a label of the same name (rare): the values decide
            c = compare(l.value, l.value_len if l.value_len < value_len else value_len, value,
                        value_len)
            if c == 0 and l.value_len > value_len:
                c = compare(l.value + value_len, l.value_len - value_len, more, more_len)
            elif c == 0 and l.value_len == value_len:
                c = -1 if more_len else 0
        if c >= 0:
            return i
        i += 1
    return i


cdef inline int rw_series(RW *rw, const char *name, Py_ssize_t name_len, const char *suffix,
                          Py_ssize_t suffix_len, const char *bound_name, Py_ssize_t bound_name_len,
                          const char *bound, Py_ssize_t bound_len, double value) except -1:
    """Append one series: the metric's labels, ``__name__`` = name + suffix, and the bound label
    when ``bound_name_len`` > 0; one sample of ``value`` (NaN as Python's float("NaN"), since
    the reference reads the text)."""
    cdef Buf *out = &rw.out
    cdef Py_ssize_t at_name, at_bound, size, sample, n
    cdef Py_ssize_t value_len = name_len + suffix_len
    cdef uint64_t bits
    cdef char *p
    at_name = rw_place(rw, "__name__", 8, name, name_len, suffix, suffix_len)
    at_bound = rw.n
    size = rw.at[rw.n] + field_size(8, value_len)
    if bound_name_len:
        at_bound = rw_place(rw, bound_name, bound_name_len, bound, bound_len, NULL, 0)
        size += field_size(bound_name_len, bound_len)
    sample = 1 + 8 + 1 + varint_size(rw.ts)
    size += 1 + varint_size(sample) + sample
    grow(out, 1 + 10 + size)
    p = out.data + out.len
    p[0] = 0x0A  # WriteRequest.timeseries = 1
    p = varint_at(p + 1, size)
    # "__name__" sorts before "le" and "quantile": the name goes first when both go at one place.
    n = rw.at[at_name]
    if n:
        memcpy(p, rw.base.data, n)
        p += n
    p[0] = 0x0A  # TimeSeries.labels = 1
    p = varint_at(p + 1, label_size(8, value_len))
    memcpy(p, b"\x0a\x08__name__\x12", 11)
    p = varint_at(p + 11, value_len)
    tm_copy(p, name, name_len)
    p += name_len
    if suffix_len:
        tm_copy(p, suffix, suffix_len)
        p += suffix_len
    n = rw.at[at_bound] - rw.at[at_name]
    memcpy(p, rw.base.data + rw.at[at_name], n)
    p += n
    if bound_name_len:
        p = label_at(p, bound_name, bound_name_len, bound, bound_len)
        n = rw.at[rw.n] - rw.at[at_bound]
        if n:
            memcpy(p, rw.base.data + rw.at[at_bound], n)
            p += n
    p[0] = 0x12  # TimeSeries.samples = 2
    p = varint_at(p + 1, sample)
    p[0] = 0x09  # Sample.value = 1, fixed64
    if value != value:
        bits = 0x7FF8000000000000ULL
    else:
        memcpy(&bits, &value, 8)
    memcpy(p + 1, &bits, 8)  # little endian, as the hosts we build for
    p[9] = 0x10  # Sample.timestamp = 2, varint
    out.len = varint_at(p + 10, rw.ts) - out.data
    rw.series += 1
    return 0
