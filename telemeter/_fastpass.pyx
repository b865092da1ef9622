# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled single pass over an upload (docs/architecture.md, D12).

It decodes the varint-delimited MetricFamily protobuf straight from the bytes, validates every
metric, applies the whitelist, elide and extra labels, replaces timestamps and renders the text
exposition lines, with no Python object per label or sample. `telemeter.upload` documents
the rules; `process_reference` there is the specification this must match byte for byte.

Known, deliberate differences from a generic protobuf decoder: a known field with the wrong wire
type is rejected (upb would keep it as an unknown field), and a value sub-message sent twice is
taken from its last occurrence instead of being merged.
"""

from libc.math cimport INFINITY, isinf
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8

from telemeter._buffer cimport Buf, grow, put, put_count, put_escaped, put_value, scan_value
from telemeter._hash cimport tm_item_hash, tm_value_hash
from telemeter._rwpass cimport RW, RWLabel, rw_begin, rw_encode, rw_label, rw_order, rw_series
from telemeter.errors import InvalidPayload, TooLarge
from telemeter.upload import duplicate_series, same_series

import os
cdef uint64_t SEED = int.from_bytes(os.urandom(8), "little")  # per process: no crafted collisions

cdef extern from *:
    """
    /* Character classes of metric and label names: 1 first char, 2 later char, 4 colon. */
    static unsigned char tm_name_class[256];
    static void tm_names_init(void) {
        for (int c = 0; c < 256; c++) {
            unsigned char k = 0;
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') k = 3;
            else if (c >= '0' && c <= '9') k = 2;
            else if (c == ':') k = 4;
            tm_name_class[c] = k;
        }
    }
    static int tm_valid_name(const unsigned char *s, Py_ssize_t n, int colon) {
        if (n == 0) return 0;
        unsigned char first = tm_name_class[s[0]];
        if (!((first & 1) || (colon && first == 4))) return 0;
        for (Py_ssize_t i = 1; i < n; i++) {
            unsigned char k = tm_name_class[s[i]];
            if (!((k & 2) || (colon && k == 4))) return 0;
        }
        return 1;
    }
    """
    void tm_names_init()
    int tm_valid_name(const unsigned char *s, Py_ssize_t n, int colon)

tm_names_init()


DEF COUNTER = 0
DEF GAUGE = 1
DEF SUMMARY = 2
DEF UNTYPED = 3
DEF HISTOGRAM = 4
DEF GAUGE_HISTOGRAM = 5
DEF MAX_KEY = 4294967295
DEF NO_TS = -9223372036854775807
DEF DROP = 0
DEF PER_SERIES = 2
DEF KEPT = -1  # label actions of the pass (else the index of the extra label replacing it)
DEF ELIDED = -2

cdef struct Span:
    Py_ssize_t start
    Py_ssize_t end

cdef struct Label:
    Py_ssize_t name
    Py_ssize_t name_len
    Py_ssize_t value
    Py_ssize_t value_len
    bint plain  # the value is ASCII with nothing to escape (set by check_values)

cdef struct Slot:  # a series kept in the upload: where its metric and its name are in the bytes
    uint64_t hash
    uint32_t start  # offsets in the upload, refused beyond 4 GiB
    uint32_t len
    uint32_t name
    uint32_t name_len  # 0: the slot is free (a metric name is never empty)

cdef struct Pair:
    const char *name
    Py_ssize_t name_len
    const char *value
    Py_ssize_t value_len



# ---- protobuf wire reading -------------------------------------------------------------------

cdef int invalid(str reason) except -1:
    """Raise InvalidPayload out of line: the readers below stay small enough to be inlined
    (the pass ran ~8% faster)."""
    raise InvalidPayload(reason)


cdef inline int read_varint(const uint8_t *d, Py_ssize_t *pos, Py_ssize_t end, uint64_t *out) except -1:
    if pos[0] < end and d[pos[0]] < 0x80:  # most varints here are one byte
        out[0] = d[pos[0]]
        pos[0] += 1
        return 0
    return read_varint_slow(d, pos, end, out)


cdef int read_varint_slow(const uint8_t *d, Py_ssize_t *pos, Py_ssize_t end, uint64_t *out) except -1:
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef uint8_t byte
    out[0] = 0  # set on every path, as in read_key
    while True:
        if pos[0] >= end:
            raise InvalidPayload("truncated protobuf varint")
        if shift >= 64:
            raise InvalidPayload("protobuf varint longer than 10 bytes")
        byte = d[pos[0]]
        pos[0] += 1
        result |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            break
        shift += 7
    out[0] = result
    return 0


cdef inline int read_key(const uint8_t *d, Py_ssize_t *pos, Py_ssize_t end, int *field, int *wire) except -1:
    cdef uint64_t key
    read_varint(d, pos, end, &key)
    field[0] = <int>(key >> 3)  # set on every path: the compiler cannot tell invalid() raises
    wire[0] = <int>(key & 7)
    if key > <uint64_t>MAX_KEY or (key >> 3) == 0:
        return invalid("invalid protobuf field number")
    return 0


cdef inline int read_len(const uint8_t *d, Py_ssize_t *pos, Py_ssize_t end, Span *span) except -1:
    cdef uint64_t n
    read_varint(d, pos, end, &n)
    span.start = span.end = pos[0]  # set on every path, as in read_key
    if n > <uint64_t>(end - pos[0]):
        return invalid("protobuf length beyond the end of its message")
    span.end = pos[0] + <Py_ssize_t>n
    pos[0] = span.end
    return 0


cdef inline double read_double(const uint8_t *d, Py_ssize_t *pos, Py_ssize_t end) except? -1.0:
    cdef double v
    if end - pos[0] < 8:
        raise InvalidPayload("truncated protobuf double")
    memcpy(&v, d + pos[0], 8)  # protobuf doubles are little-endian, like the hosts we build for
    pos[0] += 8
    return v


cdef int skip(const uint8_t *d, Py_ssize_t *pos, Py_ssize_t end, int wire) except -1:
    cdef uint64_t ignored
    cdef Span span
    cdef int size = 8 if wire == 1 else 4  # fixed64, fixed32
    if wire == 0:
        read_varint(d, pos, end, &ignored)
    elif wire == 2:
        read_len(d, pos, end, &span)
    elif wire == 1 or wire == 5:
        if end - pos[0] < size:
            raise InvalidPayload(f"truncated protobuf fixed{8 * size}")
        pos[0] += size
    else:
        raise InvalidPayload("unsupported protobuf wire type")
    return 0


cdef inline int expect(int wire, int wanted) except -1:
    if wire != wanted:
        raise InvalidPayload("unexpected protobuf wire type")
    return 0


# The fields of a value message read as doubles, a bit a field number (the others: field 1 a
# varint count, the rest skipped). metrics.proto: Gauge, Counter and Untyped {value 1};
# Quantile {quantile 1, value 2}; Summary {sample_count 1, sample_sum 2, quantile 3};
# Histogram {sample_count 1, sample_sum 2, bucket 3, sample_count_float 4} and
# Bucket {cumulative_count 1, upper_bound 2, cumulative_count_float 4}.
DEF VALUE_DOUBLES = 0b10
DEF QUANTILE_DOUBLES = 0b110
DEF SUMMARY_DOUBLES = 0b100
DEF HISTOGRAM_DOUBLES = 0b10100

cdef struct Numbers:
    uint64_t count  # field 1 when it is a varint
    double f[5]  # the double fields, by field number


cdef int read_numbers(const uint8_t *d, Span span, int doubles, Numbers *n) except -1:
    """The numeric fields of a value message, as `doubles` says (the constants above)."""
    cdef Py_ssize_t pos = span.start
    cdef int field, wire
    n.count = 0
    n.f[1] = n.f[2] = n.f[4] = 0.0
    while pos < span.end:
        read_key(d, &pos, span.end, &field, &wire)
        if field <= 4 and (doubles >> field) & 1:
            expect(wire, 1)
            n.f[field] = read_double(d, &pos, span.end)
        elif field == 1:
            expect(wire, 0)
            read_varint(d, &pos, span.end, &n.count)
        else:
            skip(d, &pos, span.end, wire)
    return 0


# ---- names ------------------------------------------------------------------------------------

cdef inline bint valid_name(const uint8_t *s, Py_ssize_t n, bint colon):
    return tm_valid_name(s, n, colon)


cdef list pairs_of(object items, list keep):
    """Keep the encoded (name, value) bytes alive in `keep` and return them as a list of tuples."""
    out = []
    for name, value in items:
        nb = name.encode()
        vb = value.encode()
        keep.append(nb)
        keep.append(vb)
        out.append((nb, vb))
    return out


cdef Pair *to_pairs(list items) except NULL:
    cdef Pair *pairs = <Pair *>malloc((len(items) + 1) * sizeof(Pair))
    cdef Py_ssize_t i
    if pairs == NULL:
        raise MemoryError()
    for i in range(len(items)):
        nb, vb = items[i]
        pairs[i].name = PyBytes_AS_STRING(nb)
        pairs[i].name_len = PyBytes_GET_SIZE(nb)
        pairs[i].value = PyBytes_AS_STRING(vb)
        pairs[i].value_len = PyBytes_GET_SIZE(vb)
    return pairs


cdef inline bint same(const char *a, Py_ssize_t an, const char *b, Py_ssize_t bn):
    return an == bn and memcmp(a, b, an) == 0


cdef inline bint before(const char *a, Py_ssize_t an, const char *b, Py_ssize_t bn):
    """Whether name a sorts strictly before name b (bytewise)."""
    cdef int c = memcmp(a, b, an if an < bn else bn)
    return c < 0 or (c == 0 and an < bn)


# ---- the pass ---------------------------------------------------------------------------------

cdef class _Written:
    """The Remote-Write request the pass wrote, handed over without a copy: it owns the pass's
    buffer, and ``memoryview(it)`` reads it (the server compresses it, then drops it)."""
    cdef char *data
    cdef Py_ssize_t size

    def __dealloc__(self):
        free(self.data)

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        PyBuffer_FillInfo(buffer, self, self.data, self.size, 1, flags)

    def __releasebuffer__(self, Py_buffer *buffer):
        pass


cdef class _Pass:
    cdef const uint8_t *d
    cdef object whitelist
    cdef object config
    cdef Pair *tokens
    cdef Py_ssize_t ntokens
    cdef Pair *extras
    cdef Py_ssize_t nextras
    cdef Pair *elide
    cdef Py_ssize_t nelide
    cdef Py_ssize_t max_series, max_labels, max_len
    cdef int64_t now_ms, min_ts
    cdef Label *labels
    # The label names of the last metric whose names passed the checks, and what they decide:
    # the next metric with the same names (the usual case) skips the name checks and lookups.
    cdef Label *shape
    cdef Py_ssize_t shape_n  # -1 until a metric has passed
    cdef Py_ssize_t *token_at  # per required token label: its index among the names, or -1
    cdef Py_ssize_t *action  # per name: ELIDED, KEPT, or the index of the extra label replacing it
    cdef bint *extra_used  # per extra label: it replaces one of the names (else it is appended)
    cdef Buf lbuf
    cdef uint64_t lhash  # the sum of the hashes of the labels in lbuf
    cdef uint64_t *name_hash_at  # per name: its hash (the seed of its value's)
    cdef uint64_t *extra_hash  # per extra label: the hash of its name and value
    cdef uint64_t name_hash  # the hash of the family's name
    # The series kept so far, by hash: an open-addressing table, at most half full.
    cdef Slot *slots
    cdef Py_ssize_t nslots, nseries
    cdef Buf fbuf
    cdef char ts[32]
    cdef int ts_len
    cdef Py_ssize_t received, kept, past, future
    cdef bint forward  # also write the Remote-Write request (_rwpass.pxd)
    cdef RW rw
    cdef Py_ssize_t bound_at, bound_len  # the le/quantile value of the line in fbuf

    def __dealloc__(self):
        free(self.rw.out.data); free(self.rw.base.data)
        free(self.rw.labels); free(self.rw.at); free(self.rw.order)
        free(self.tokens)
        free(self.extras)
        free(self.elide)
        free(self.labels)
        free(self.shape)
        free(self.token_at)
        free(self.action)
        free(self.extra_used)
        free(self.slots)
        free(self.name_hash_at)
        free(self.extra_hash)
        free(self.lbuf.data)
        free(self.fbuf.data)

    cdef inline Py_ssize_t value_of(self, Py_ssize_t i, Py_ssize_t j, const char **value) noexcept:
        """The value of name i after the extra labels (j: its action, not ELIDED); its length."""
        if j == KEPT:
            value[0] = <const char *>self.d + self.labels[i].value
            return self.labels[i].value_len
        value[0] = self.extras[j].value
        return self.extras[j].value_len

    cdef int put_labels(self, Py_ssize_t nlabels) except -1:
        """Render `{a="b",...` (no closing brace) into lbuf: elide, replace and append extras."""
        cdef Buf *b = &self.lbuf
        cdef Py_ssize_t i, j
        cdef const char *name
        cdef const char *value
        cdef Py_ssize_t name_len, value_len
        cdef uint64_t h = 0  # a label's hash: its value's, seeded with its name's
        b.len = 0
        for i in range(nlabels):
            j = self.action[i]
            if j == ELIDED:
                continue
            name = <const char *>self.d + self.labels[i].name
            name_len = self.labels[i].name_len
            value_len = self.value_of(i, j, &value)
            if value_len == 0:
                continue
            put(b, "," if b.len else "{", 1)
            put(b, name, name_len)
            put(b, '="', 2)
            if j == KEPT and self.labels[i].plain:
                put(b, value, value_len)
            else:
                put_escaped(b, value, value_len)
            put(b, '"', 1)
            h += tm_value_hash(value, value_len, self.name_hash_at[i]) if j == KEPT else self.extra_hash[j]
        for j in range(self.nextras):
            if self.extra_used[j] or self.extras[j].value_len == 0:
                continue
            put(b, "," if b.len else "{", 1)
            put(b, self.extras[j].name, self.extras[j].name_len)
            put(b, '="', 2)
            put_escaped(b, self.extras[j].value, self.extras[j].value_len)
            put(b, '"', 1)
            h += self.extra_hash[j]
        self.lhash = h
        if self.forward:
            self.rw_labels()
        return 0

    cdef int rw_labels(self) except -1:
        """The metric's labels for its Remote-Write series, in the shape's sorted order."""
        cdef Py_ssize_t k, i, j
        cdef const char *value
        cdef Py_ssize_t value_len
        rw_begin(&self.rw)
        for k in range(self.rw.norder):
            i = self.rw.order[k]
            if i < 0:  # an extra label appended
                j = -1 - i
                value = self.extras[j].value
                value_len = self.extras[j].value_len
                if value_len:
                    rw_label(&self.rw, self.extras[j].name, self.extras[j].name_len, value,
                             value_len, i)
                continue
            value_len = self.value_of(i, self.action[i], &value)
            if value_len:
                rw_label(&self.rw, <const char *>self.d + self.labels[i].name,
                         self.labels[i].name_len, value, value_len, i)
        return rw_encode(&self.rw)

    cdef int line_start(self, const char *name, Py_ssize_t name_len, const char *suffix,
                        Py_ssize_t suffix_len) except -1:
        put(&self.fbuf, name, name_len)
        put(&self.fbuf, suffix, suffix_len)
        return 0

    cdef int line_labels(self) except -1:
        """Close the label set, then a space."""
        cdef Buf *b = &self.fbuf
        if self.lbuf.len:
            put(b, self.lbuf.data, self.lbuf.len)
            put(b, "} ", 2)
        else:
            put(b, " ", 1)
        return 0

    cdef int line_start_bound(self, const char *name, Py_ssize_t name_len, const char *suffix,
                              Py_ssize_t suffix_len, const char *label, Py_ssize_t label_len,
                              double bound) except -1:
        """Start a line with one more label, `le="`/`quantile="` (`label`) and its `bound`."""
        cdef Buf *b = &self.fbuf
        self.line_start(name, name_len, suffix, suffix_len)
        if self.lbuf.len:
            put(b, self.lbuf.data, self.lbuf.len)
            put(b, ",", 1)
        else:
            put(b, "{", 1)
        put(b, label, label_len)
        self.bound_at = b.len
        put_value(b, bound)
        self.bound_len = b.len - self.bound_at
        return put(b, '"} ', 3)

    cdef int line_end(self) except -1:
        return put(&self.fbuf, self.ts, self.ts_len)

    cdef int simple_line(self, const char *name, Py_ssize_t name_len, const char *suffix,
                         Py_ssize_t suffix_len, double value) except -1:
        self.line_start(name, name_len, suffix, suffix_len)
        self.line_labels()
        put_value(&self.fbuf, value)
        if self.forward:
            rw_series(&self.rw, name, name_len, suffix, suffix_len, NULL, 0, NULL, 0, value)
        return self.line_end()

    cdef int rw_bound(self, const char *name, Py_ssize_t name_len, bint histogram,
                      double value) except -1:
        """The series of the bucket or quantile line just rendered."""
        if histogram:
            return rw_series(&self.rw, name, name_len, "_bucket", 7, "le", 2,
                             self.fbuf.data + self.bound_at, self.bound_len, value)
        return rw_series(&self.rw, name, name_len, "", 0, "quantile", 8,
                         self.fbuf.data + self.bound_at, self.bound_len, value)

    cdef int check_series(self, Span span, const char *name, Py_ssize_t name_len) except -1:
        """Refuse a series (the metric at `span`, rendered in lbuf) already kept in this upload."""
        cdef Py_ssize_t i, j, size
        cdef uint64_t h = tm_item_hash(<const char *>&self.lhash, 8, self.name_hash)
        cdef Slot *grown
        cdef Slot *s
        if 2 * (self.nseries + 1) > self.nslots:
            size = 2 * self.nslots
            grown = <Slot *>calloc(size, sizeof(Slot))
            if grown == NULL:
                raise MemoryError()
            for i in range(self.nslots):
                if self.slots[i].name_len:
                    j = self.slots[i].hash & (size - 1)
                    while grown[j].name_len:
                        j = (j + 1) & (size - 1)
                    grown[j] = self.slots[i]
            free(self.slots)
            self.slots = grown
            self.nslots = size
        i = h & (self.nslots - 1)
        while self.slots[i].name_len:
            s = &self.slots[i]
            if s.hash == h and self.same_series(s, span, name, name_len):
                key = PyBytes_FromStringAndSize(name, name_len) + \
                    PyBytes_FromStringAndSize(self.lbuf.data, self.lbuf.len)
                raise duplicate_series(key)
            i = (i + 1) & (self.nslots - 1)
        s = &self.slots[i]
        s.hash = h
        s.start = <uint32_t>span.start
        s.len = <uint32_t>(span.end - span.start)
        s.name = <uint32_t>(name - <const char *>self.d)
        s.name_len = <uint32_t>name_len
        self.nseries += 1
        return 0

    cdef bint same_series(self, Slot *s, Span span, const char *name, Py_ssize_t name_len) except -1:
        """Whether a kept series of the same hash is the metric at `span` (rare: compared on
        the decoded metrics, by telemeter.upload.same_series)."""
        cdef const char *d = <const char *>self.d
        if not same(d + s.name, s.name_len, name, name_len):
            return False
        return same_series(PyBytes_FromStringAndSize(d + s.start, s.len),
                           PyBytes_FromStringAndSize(d + span.start, span.end - span.start),
                           self.config)

    cdef int render_parts(self, const char *name, Py_ssize_t name_len, Span span,
                          bint histogram) except -1:
        """A summary (a line per quantile) or a histogram (a `_bucket` line per bucket, then
        `le="+Inf"` unless given), then `_sum` and `_count`: telemeter.exposition's order."""
        cdef const uint8_t *d = self.d
        cdef Py_ssize_t pos = span.start
        cdef int field, wire
        cdef bint has_inf = False
        cdef double value
        cdef Numbers top, part
        cdef Span sub
        # The parts come first in the text but _count and _sum may follow them in the bytes.
        read_numbers(d, span, HISTOGRAM_DOUBLES if histogram else SUMMARY_DOUBLES, &top)
        while pos < span.end:
            read_key(d, &pos, span.end, &field, &wire)
            if field != 3:
                skip(d, &pos, span.end, wire)
                continue
            expect(wire, 2)
            read_len(d, &pos, span.end, &sub)
            if histogram:
                read_numbers(d, sub, HISTOGRAM_DOUBLES, &part)
                has_inf = has_inf or (isinf(part.f[2]) and part.f[2] > 0)
                self.line_start_bound(name, name_len, "_bucket", 7, 'le="', 4, part.f[2])
                put_count(&self.fbuf, part.count, part.f[4])
                value = part.f[4] if part.f[4] > 0 else <double>part.count  # as put_count
            else:
                read_numbers(d, sub, QUANTILE_DOUBLES, &part)
                self.line_start_bound(name, name_len, "", 0, 'quantile="', 10, part.f[1])
                put_value(&self.fbuf, part.f[2])
                value = part.f[2]
            if self.forward:
                self.rw_bound(name, name_len, histogram, value)
            self.line_end()
        value = top.f[4] if top.f[4] > 0 else <double>top.count  # a summary's f[4] is 0
        if histogram and not has_inf:
            self.line_start_bound(name, name_len, "_bucket", 7, 'le="', 4, INFINITY)
            put_count(&self.fbuf, top.count, top.f[4])
            if self.forward:
                self.rw_bound(name, name_len, True, value)
            self.line_end()
        self.simple_line(name, name_len, "_sum", 4, top.f[2])
        self.line_start(name, name_len, "_count", 6)
        self.line_labels()
        put_count(&self.fbuf, top.count, top.f[4])
        if self.forward:
            rw_series(&self.rw, name, name_len, "_count", 6, NULL, 0, NULL, 0, value)
        return self.line_end()

    cdef bint same_shape(self, Py_ssize_t nlabels):
        """Whether the metric's label names are those of the last metric that passed."""
        cdef const char *d = <const char *>self.d
        cdef Py_ssize_t i
        if nlabels != self.shape_n:
            return False
        for i in range(nlabels):
            if not same(d + self.labels[i].name, self.labels[i].name_len,
                        d + self.shape[i].name, self.shape[i].name_len):
                return False
        return True

    cdef int learn_shape(self, Py_ssize_t nlabels, str family) except -1:
        """Check the metric's label names (valid, none twice) and record what they decide."""
        cdef Py_ssize_t i, j
        cdef const uint8_t *d = self.d
        cdef Label *l
        cdef bint ordered = True
        for i in range(nlabels):
            l = &self.labels[i]
            if l.name_len > self.max_len or not valid_name(d + l.name, l.name_len, False):
                name = PyBytes_FromStringAndSize(<const char *>d + l.name, min(l.name_len, 64))
                raise InvalidPayload(f"family {family} has an invalid label name {name!r}")
            if i and ordered:  # names in strictly increasing order cannot repeat
                ordered = before(<const char *>d + self.labels[i - 1].name, self.labels[i - 1].name_len,
                                 <const char *>d + l.name, l.name_len)
        if not ordered:
            for i in range(nlabels):
                l = &self.labels[i]
                for j in range(i):
                    if same(<const char *>d + l.name, l.name_len,
                            <const char *>d + self.labels[j].name, self.labels[j].name_len):
                        raise InvalidPayload(f"a label appears twice in a metric of family {family}")
        for j in range(self.ntokens):
            self.token_at[j] = -1
            for i in range(nlabels):
                if same(<const char *>d + self.labels[i].name, self.labels[i].name_len,
                        self.tokens[j].name, self.tokens[j].name_len):
                    self.token_at[j] = i
                    break
        for j in range(self.nextras):
            self.extra_used[j] = False
        for i in range(nlabels):
            self.name_hash_at[i] = tm_item_hash(<const char *>d + self.labels[i].name,
                                                self.labels[i].name_len, SEED)
            self.action[i] = KEPT
            for j in range(self.nelide):
                if same(<const char *>d + self.labels[i].name, self.labels[i].name_len,
                        self.elide[j].name, self.elide[j].name_len):
                    self.action[i] = ELIDED
                    break
            if self.action[i] == ELIDED:
                continue
            for j in range(self.nextras):
                if same(<const char *>d + self.labels[i].name, self.labels[i].name_len,
                        self.extras[j].name, self.extras[j].name_len):
                    self.action[i] = j
                    self.extra_used[j] = True
                    break
        memcpy(self.shape, self.labels, nlabels * sizeof(Label))
        self.shape_n = nlabels
        if self.forward:  # the shape's Remote-Write label order (_rwpass.pxd)
            rw_begin(&self.rw)
            for i in range(nlabels):
                j = self.action[i]
                if j == KEPT:  # names do not repeat: a value decides only between extras
                    rw_label(&self.rw, <const char *>d + self.labels[i].name,
                             self.labels[i].name_len, NULL, 0, i)
                elif j != ELIDED:
                    rw_label(&self.rw, <const char *>d + self.labels[i].name,
                             self.labels[i].name_len, self.extras[j].value,
                             self.extras[j].value_len, i)
            for j in range(self.nextras):
                if not self.extra_used[j]:
                    rw_label(&self.rw, self.extras[j].name, self.extras[j].name_len,
                             self.extras[j].value, self.extras[j].value_len, -1 - j)
            rw_order(&self.rw)
        return 0

    cdef int check_values(self, Py_ssize_t nlabels, str family) except -1:
        cdef Py_ssize_t i
        cdef Label *l
        cdef int scan
        for i in range(nlabels):
            l = &self.labels[i]
            scan = scan_value(self.d + l.value, l.value_len)
            if scan < 0:
                raise InvalidPayload(f"a label of family {family} is not valid UTF-8")
            l.plain = scan
            if l.value_len > self.max_len:
                raise InvalidPayload(f"a label of family {family} is longer than {self.max_len} bytes")
        return 0

    cdef dict label_dict(self, Py_ssize_t nlabels):
        cdef Py_ssize_t i
        cdef dict out = {}
        for i in range(nlabels):
            out[PyUnicode_DecodeASCII(<const char *>self.d + self.labels[i].name, self.labels[i].name_len, NULL)] = \
                PyUnicode_DecodeUTF8(<const char *>self.d + self.labels[i].value, self.labels[i].value_len, NULL)
        return out

    cdef int metric(self, Span span, int kind, const char *name, Py_ssize_t name_len, str family,
                    int decision, int64_t *last_ts) except -1:
        cdef const uint8_t *d = self.d
        cdef Py_ssize_t pos = span.start
        cdef Py_ssize_t lpos, nlabels = 0, i, j
        cdef int field, wire, lfield, lwire
        cdef uint64_t raw_ts
        cdef int64_t ts = 0
        cdef bint has_ts = False
        cdef Span sub
        cdef Span values[8]
        cdef bint has_value[8]
        cdef Label *l
        cdef Numbers number
        for i in range(8):
            has_value[i] = False
        while pos < span.end:
            read_key(d, &pos, span.end, &field, &wire)
            if field == 1:
                expect(wire, 2)
                read_len(d, &pos, span.end, &sub)
                if nlabels < self.max_labels + 1:
                    l = &self.labels[nlabels]
                    l.name = sub.start
                    l.name_len = 0
                    l.value = sub.start
                    l.value_len = 0
                    lpos = sub.start
                    while lpos < sub.end:
                        read_key(d, &lpos, sub.end, &lfield, &lwire)
                        if lfield == 1 or lfield == 2:
                            expect(lwire, 2)
                            read_len(d, &lpos, sub.end, &values[0])
                            if lfield == 1:
                                l.name = values[0].start
                                l.name_len = values[0].end - values[0].start
                            else:
                                l.value = values[0].start
                                l.value_len = values[0].end - values[0].start
                        else:
                            skip(d, &lpos, sub.end, lwire)
                nlabels += 1
            elif field == 6:
                expect(wire, 0)
                read_varint(d, &pos, span.end, &raw_ts)
                ts = <int64_t>raw_ts
                has_ts = True
            elif field == 2 or field == 3 or field == 4 or field == 5 or field == 7:
                expect(wire, 2)
                read_len(d, &pos, span.end, &values[field])
                has_value[field] = True
            else:
                skip(d, &pos, span.end, wire)
        if nlabels > self.max_labels:
            raise TooLarge(f"a metric of family {family} has more than {self.max_labels} labels")
        if not self.same_shape(nlabels):
            self.learn_shape(nlabels, family)
        self.check_values(nlabels, family)
        if not has_ts:
            raise InvalidPayload(f"a metric of family {family} has no timestamp")
        if ts < self.min_ts:
            raise InvalidPayload(f"a metric of family {family} is older than the limit")
        if last_ts[0] != <int64_t>NO_TS and ts < last_ts[0]:
            raise InvalidPayload(f"metrics of family {family} are not in timestamp order")
        last_ts[0] = ts
        for j in range(self.ntokens):
            i = self.token_at[j]
            if i < 0 or not same(<const char *>d + self.labels[i].value, self.labels[i].value_len,
                                 self.tokens[j].value, self.tokens[j].value_len):
                key = PyBytes_FromStringAndSize(self.tokens[j].name, self.tokens[j].name_len).decode()
                value = PyBytes_FromStringAndSize(self.tokens[j].value, self.tokens[j].value_len).decode()
                raise InvalidPayload(f"a metric of family {family} lacks the label {key}={value}")
        # The value field of the family's type: gauge 2, counter 3, summary 4, untyped 5, histogram 7.
        if kind == COUNTER:
            field = 3
        elif kind == GAUGE:
            field = 2
        elif kind == SUMMARY:
            field = 4
        elif kind == UNTYPED:
            field = 5
        else:
            field = 7
        if not has_value[field]:
            value_name = {2: "gauge", 3: "counter", 4: "summary", 5: "untyped", 7: "histogram"}[field]
            raise InvalidPayload(f"a metric of family {family} has no {value_name} value")
        if decision == DROP:
            return 0
        if decision == PER_SERIES and not self.whitelist.matches(family, self.label_dict(nlabels)):
            return 0
        self.kept += 1
        if ts < self.now_ms:
            self.past += 1
        elif ts > self.now_ms:
            self.future += 1
        self.put_labels(nlabels)
        self.check_series(span, name, name_len)
        if field == 4 or field == 7:
            self.render_parts(name, name_len, values[field], field == 7)
        else:
            read_numbers(d, values[field], VALUE_DOUBLES, &number)
            self.simple_line(name, name_len, "", 0, number.f[1])
        return 0


def process(bytes data, object config, int64_t now_ms, int64_t min_timestamp_ms, object result_cls,
            bytes write_tail):
    """Validate, filter, transform and render one upload; see telemeter.upload.process."""
    cdef _Pass p = _Pass()
    cdef const uint8_t *d = <const uint8_t *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0, fpos, count = 0, rw_start
    cdef _Written written
    cdef Span msg, sub
    cdef int field, wire, kind
    cdef uint64_t raw
    cdef Py_ssize_t nmetrics
    cdef int64_t last_ts
    cdef const char *name
    cdef Py_ssize_t name_len
    cdef list keep = []
    cdef int decision
    p.d = d
    p.whitelist = config.whitelist
    p.config = config
    p.max_series = config.max_series
    p.max_labels = config.max_labels
    p.max_len = config.max_label_length
    p.now_ms = now_ms
    p.min_ts = min_timestamp_ms
    tokens = pairs_of(config.token_labels, keep)
    extras = pairs_of(config.extra_labels, keep)
    elide = pairs_of([(label, "") for label in config.elide_labels], keep)
    p.tokens = to_pairs(tokens)
    p.ntokens = len(tokens)
    p.extras = to_pairs(extras)
    p.nextras = len(extras)
    p.elide = to_pairs(elide)
    p.nelide = len(elide)
    p.labels = <Label *>malloc((p.max_labels + 1) * sizeof(Label))
    p.shape = <Label *>malloc((p.max_labels + 1) * sizeof(Label))
    p.shape_n = -1
    p.token_at = <Py_ssize_t *>malloc((p.ntokens + 1) * sizeof(Py_ssize_t))
    p.action = <Py_ssize_t *>malloc((p.max_labels + 1) * sizeof(Py_ssize_t))
    p.name_hash_at = <uint64_t *>malloc((p.max_labels + 1) * sizeof(uint64_t))
    p.extra_hash = <uint64_t *>malloc((p.nextras + 1) * sizeof(uint64_t))
    p.extra_used = <bint *>malloc((p.nextras + 1) * sizeof(bint))
    p.forward = config.remote_write
    p.rw.labels = <RWLabel *>malloc((p.max_labels + p.nextras + 1) * sizeof(RWLabel))
    p.rw.at = <Py_ssize_t *>malloc((p.max_labels + p.nextras + 2) * sizeof(Py_ssize_t))
    p.rw.order = <Py_ssize_t *>malloc((p.max_labels + p.nextras + 1) * sizeof(Py_ssize_t))
    p.rw.ts = <uint64_t>now_ms
    if p.forward:  # the request is about 1.1x the upload: grown once here, not doubling from 4 KB
        grow(&p.rw.out, n + n // 4 + 4096)
    if (p.labels == NULL or p.shape == NULL or p.token_at == NULL or p.action == NULL
            or p.extra_used == NULL or p.name_hash_at == NULL or p.extra_hash == NULL
            or p.rw.labels == NULL or p.rw.at == NULL or p.rw.order == NULL):
        raise MemoryError()
    for count in range(p.nextras):
        p.extra_hash[count] = tm_item_hash(
            p.extras[count].value, p.extras[count].value_len,
            tm_item_hash(p.extras[count].name, p.extras[count].name_len, SEED))
    count = 0
    p.ts_len = snprintf(p.ts, 32, " %lld\n", <long long>now_ms)

    if n > 0xFFFFFFFF:  # the table of kept series keeps 32-bit offsets
        raise TooLarge("upload larger than 4 GiB")
    p.nslots = 512  # the table of kept series, grown when half full
    p.slots = <Slot *>calloc(p.nslots, sizeof(Slot))
    if p.slots == NULL:
        raise MemoryError()
    # Count the families first, so too many of them is reported before anything else (413).
    while pos < n:
        read_len(d, &pos, n, &msg)
        count += 1
        if count > p.max_series:
            raise TooLarge(f"more than {p.max_series} families in one upload")

    out = {}
    spans = {}  # per family: where its series are in rw.out (a repeated family's are apart)
    repeated = False
    types = {}
    decisions = p.whitelist.decisions
    pos = 0
    while pos < n:
        read_len(d, &pos, n, &msg)
        # Fields may come in any order: read name and type first, then the metrics.
        name = <const char *>d + msg.start
        name_len = 0
        kind = COUNTER
        nmetrics = 0
        fpos = msg.start
        while fpos < msg.end:
            read_key(d, &fpos, msg.end, &field, &wire)
            if field == 1:
                expect(wire, 2)
                read_len(d, &fpos, msg.end, &sub)
                name = <const char *>d + sub.start
                name_len = sub.end - sub.start
            elif field == 3:
                expect(wire, 0)
                read_varint(d, &fpos, msg.end, &raw)
                if raw <= 5:  # an unknown enum value leaves the field unset, as in upb
                    kind = <int>raw
            elif field == 4:
                expect(wire, 2)
                read_len(d, &fpos, msg.end, &sub)
                nmetrics += 1
            else:
                skip(d, &fpos, msg.end, wire)
        if name_len > p.max_len or not valid_name(<const uint8_t *>name, name_len, True):
            shown = PyBytes_FromStringAndSize(name, min(name_len, 64)).decode("utf-8", "replace")
            raise InvalidPayload(f"invalid metric name {shown!r}")
        if nmetrics == 0:
            continue
        family = PyUnicode_DecodeASCII(name, name_len, NULL)
        p.name_hash = tm_item_hash(name, name_len, SEED)
        if types.setdefault(family, kind) != kind:
            raise InvalidPayload(f"family {family} appears twice with different types")
        decision = decisions.get(family, -1)  # the whitelist's cached decision, if any
        if decision < 0:
            decision = p.whitelist.family_decision(family)
        last_ts = <int64_t>NO_TS
        p.fbuf.len = 0
        rw_start = p.rw.out.len
        fpos = msg.start
        while fpos < msg.end:
            read_key(d, &fpos, msg.end, &field, &wire)
            if field == 4:
                read_len(d, &fpos, msg.end, &sub)
                p.received += 1
                if p.received > p.max_series:
                    raise TooLarge(f"more than {p.max_series} metrics in one upload")
                p.metric(sub, kind, name, name_len, family, decision, &last_ts)
            else:
                skip(d, &fpos, msg.end, wire)
        if p.fbuf.len:
            block = PyBytes_FromStringAndSize(p.fbuf.data, p.fbuf.len)
            if family in out:
                out[family] = (kind, out[family][1] + block)
                spans[family].append((rw_start, p.rw.out.len))
                repeated = True
            else:
                out[family] = (kind, block)
                spans[family] = [(rw_start, p.rw.out.len)]

    result = result_cls()
    result.families = [(name_, entry[0], entry[1]) for name_, entry in out.items()]
    result.received = p.received
    result.kept = p.kept
    result.past = p.past
    result.future = p.future
    if p.forward:  # in the order of the text: a repeated family's series follow its first
        if repeated:
            parts = []
            for f in out:
                for span_start, span_end in spans[f]:
                    rw_start = span_start
                    parts.append(PyBytes_FromStringAndSize(p.rw.out.data + rw_start,
                                                           span_end - rw_start))
            result.write_request = b"".join(parts + [write_tail])
        else:
            put(&p.rw.out, PyBytes_AS_STRING(write_tail), PyBytes_GET_SIZE(write_tail))
            written = _Written()
            written.data, written.size = p.rw.out.data, p.rw.out.len
            p.rw.out.data, p.rw.out.len, p.rw.out.cap = NULL, 0, 0
            result.write_request = memoryview(written)
        result.write_series = p.rw.series
    return result
