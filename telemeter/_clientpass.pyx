# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The client's compiled pass: a delimited-protobuf ``/federate`` answer -> the upload body.

It applies the client transforms (`telemeter.transforms`, the specification) straight on the
bytes: rename, drop invalid samples and empty families, sort by timestamp, ``--label``,
anonymize, token labels; and writes the varint-delimited MetricFamily body that
``write_families(transform_families(read_families(...)))`` would write, byte for byte
(docs/architecture.md, "The client's pass").

It covers the input Prometheus writes: fields in number order, shortest varints, no unknown
fields, valid UTF-8. On anything else (and on malformed input) it returns None and the caller
runs the reference, so the two can never disagree: a value sub-message is copied as it came,
which is what upb writes back only for input of that canonical form.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, qsort, realloc
from libc.string cimport memchr, memcmp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from telemeter._buffer cimport Buf, grow, put, put_varint, tm_valid_utf8, varint_size

DEF MAX_NAME = 255  # longest name or value the server takes (telemeter.transforms)
DEF NO_FIELD = 0
# The value field each family type calls for (MetricType -> Metric field number).
cdef int VALUE_FIELD[6]
VALUE_FIELD[:] = [3, 2, 4, 5, 7, 7]  # counter, gauge, summary, untyped, histogram x2
# Sub-message schemas for the canonical check: the wire type of fields 1-4, 0 for none.
DEF SCALAR = 0  # Gauge, Counter, Untyped: {1: double}
DEF QUANTILE = 1  # {1: double, 2: double}
DEF SUMMARY = 2  # {1: uint64, 2: double, 3: repeated Quantile}
DEF BUCKET = 3  # {1: uint64, 2: double, 4: double}
DEF HISTOGRAM = 4  # {1: uint64, 2: double, 3: repeated Bucket, 4: double}
cdef int WIRE[20]
WIRE[:] = [
    1, -1, -1, -1,
    1, 1, -1, -1,
    0, 1, 2, -1,
    0, 1, -1, 1,
    0, 1, 2, 1,
]  # fmt: skip


cdef struct Pair:  # a label: spans in the input or in a Python bytes object kept alive
    const char *name
    Py_ssize_t name_len
    const char *value
    Py_ssize_t value_len
    bint has_name
    bint has_value


cdef struct Sample:
    int64_t ts
    Py_ssize_t order  # the input position: the sort is stable
    const uint8_t *value  # the value sub-message, copied as it came
    Py_ssize_t value_len
    int field
    Py_ssize_t first_pair
    Py_ssize_t pairs


cdef struct Scratch:
    Sample *samples
    Py_ssize_t n_samples
    Py_ssize_t cap_samples
    Pair *pairs
    Py_ssize_t n_pairs
    Py_ssize_t cap_pairs


cdef inline int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) noexcept:
    """1 for a shortest varint, 0 for a longer valid one, -1 when truncated or over 64 bits."""
    cdef uint64_t value = 0
    cdef int shift = 0
    cdef uint8_t byte
    cdef bint shortest
    cdef const uint8_t *q = p[0]
    while q < end:
        byte = q[0]
        q += 1
        if shift == 63 and byte > 1:
            return -1
        value |= <uint64_t>(byte & 0x7F) << shift
        if byte < 0x80:
            out[0] = value
            shortest = byte != 0 or q - p[0] == 1
            p[0] = q
            return 1 if shortest else 0
        shift += 7
        if shift > 63:
            return -1
    return -1


cdef inline int read_span(const uint8_t **p, const uint8_t *end, Py_ssize_t *length) noexcept:
    """The length prefix of a field, checked against ``end``; as read_varint."""
    cdef uint64_t n
    cdef int shortest = read_varint(p, end, &n)
    if shortest < 0 or n > <uint64_t>(end - p[0]):
        return -1
    length[0] = <Py_ssize_t>n
    return shortest


cdef bint canonical(const uint8_t *p, const uint8_t *end, int kind) noexcept:
    """Whether upb would write this sub-message back byte for byte: known fields only, with
    their wire types, in number order (a repeated one contiguous), shortest varints."""
    cdef uint64_t tag, value
    cdef int last = 0, field, wire
    cdef Py_ssize_t n
    while p < end:
        if read_varint(&p, end, &tag) != 1:
            return False
        field = <int>(tag >> 3)
        wire = <int>(tag & 7)
        if field < 1 or field > 4 or WIRE[kind * 4 + field - 1] != wire:
            return False
        if field < last or (field == last and field != 3):
            return False
        last = field
        if wire == 0:
            if read_varint(&p, end, &value) != 1:
                return False
        elif wire == 1:
            if end - p < 8:
                return False
            p += 8
        else:
            if read_span(&p, end, &n) != 1:
                return False
            if not canonical(p, p + n, QUANTILE if kind == SUMMARY else BUCKET):
                return False
            p += n
    return True


cdef inline bint name_ok(const char *s, Py_ssize_t n, bint colon) noexcept:
    """``[a-zA-Z_][a-zA-Z0-9_]*`` (label names), with ``:`` also (metric names), at most 255
    characters."""
    cdef Py_ssize_t i
    cdef char c
    if n == 0 or n > MAX_NAME:
        return False
    for i in range(n):
        c = s[i]
        if not (
            b'a' <= c <= b'z' or b'A' <= c <= b'Z' or c == b'_' or (colon and c == b':')
            or (i and b'0' <= c <= b'9')
        ):
            return False
    return True


cdef inline Py_ssize_t characters(const char *s, Py_ssize_t n) noexcept:
    """Code points of valid UTF-8: the bytes that do not continue a character."""
    cdef Py_ssize_t i, count = 0
    for i in range(n):
        if (<uint8_t>s[i] & 0xC0) != 0x80:
            count += 1
    return count


cdef inline bint same(const char *a, Py_ssize_t a_len, bytes b) noexcept:
    return a_len == PyBytes_GET_SIZE(b) and memcmp(a, PyBytes_AS_STRING(b), a_len) == 0


cdef int reserve(Scratch *s, Py_ssize_t samples, Py_ssize_t pairs) except -1:
    cdef void *grown
    if s.n_samples + samples > s.cap_samples:
        s.cap_samples = 2 * (s.n_samples + samples)
        grown = realloc(s.samples, s.cap_samples * sizeof(Sample))
        if grown == NULL:
            raise MemoryError()
        s.samples = <Sample *>grown
    if s.n_pairs + pairs > s.cap_pairs:
        s.cap_pairs = 2 * (s.n_pairs + pairs) + 64
        grown = realloc(s.pairs, s.cap_pairs * sizeof(Pair))
        if grown == NULL:
            raise MemoryError()
        s.pairs = <Pair *>grown
    return 0


cdef int by_time(const void *a, const void *b) noexcept nogil:
    cdef const Sample *x = <const Sample *>a
    cdef const Sample *y = <const Sample *>b
    if x.ts != y.ts:
        return -1 if x.ts < y.ts else 1
    return -1 if x.order < y.order else (1 if x.order > y.order else 0)


cdef int read_pair(const uint8_t *p, const uint8_t *end, Pair *pair) noexcept:
    """A LabelPair; -1 when the pass does not cover it."""
    cdef uint64_t tag
    cdef Py_ssize_t n
    pair.has_name = pair.has_value = False
    pair.name = pair.value = b""
    pair.name_len = pair.value_len = 0
    while p < end:
        if read_varint(&p, end, &tag) < 0 or read_span(&p, end, &n) < 0:
            return -1
        if tag == 0x0A and not pair.has_name:
            pair.name, pair.name_len, pair.has_name = <const char *>p, n, True
        elif tag == 0x12 and not pair.has_value:
            pair.value, pair.value_len, pair.has_value = <const char *>p, n, True
        else:
            return -1
        if not tm_valid_utf8(p, n):
            return -1
        p += n
    return 0


cdef inline int schema(int field) noexcept:
    return SUMMARY if field == 4 else (HISTOGRAM if field == 7 else SCALAR)


cdef int read_metric(const uint8_t *p, const uint8_t *end, Scratch *s, Sample *out) except -2:
    """A Metric into ``out`` and its labels onto ``s.pairs``: 1 read, -1 not covered. ``field``
    is the one value field present, or -1 when there are several."""
    cdef uint64_t tag, ts = 0
    cdef Py_ssize_t n
    cdef int field
    cdef unsigned seen = 0
    out.first_pair = s.n_pairs
    out.field = NO_FIELD
    while p < end:
        if read_varint(&p, end, &tag) < 0:
            return -1
        field = <int>(tag >> 3)
        if tag == 0x30:
            if seen & (1 << 6) or read_varint(&p, end, &ts) < 0:
                return -1
            seen |= 1 << 6
            continue
        if (tag & 7) != 2 or field < 1 or field > 7 or field == 6 or read_span(&p, end, &n) < 0:
            return -1
        if field == 1:
            reserve(s, 0, 1)
            if read_pair(p, p + n, &s.pairs[s.n_pairs]) < 0:
                return -1
            s.n_pairs += 1
        else:
            # Twice, upb would merge the two; and upb must be able to read each, kept or not.
            if seen & (1 << field) or not canonical(p, p + n, schema(field)):
                return -1
            seen |= 1 << field
            out.field = field if out.field == NO_FIELD else -1
            out.value, out.value_len = p, n
        p += n
    out.ts = <int64_t>ts
    out.pairs = s.n_pairs - out.first_pair
    return 1


cdef inline int put_field(Buf *b, char tag, const char *p, Py_ssize_t n) except -1:
    put(b, &tag, 1)
    put_varint(b, n)
    return put(b, p, n)


cdef int set_labels(Scratch *s, Py_ssize_t first, Py_ssize_t *count, list labels) except -1:
    """Go's appendLabels: overwrite labels of these names, append the missing ones."""
    cdef Py_ssize_t i, end = first + count[0]
    cdef bytes name, value
    cdef bint found
    cdef Pair *pair
    for name, value in labels:
        found = False
        for i in range(first, end):
            pair = &s.pairs[i]
            if same(pair.name, pair.name_len, name):
                pair.value, pair.value_len, pair.has_value = PyBytes_AS_STRING(value), len(value), True
                found = True
        if not found:
            reserve(s, 0, 1)
            pair = &s.pairs[first + count[0]]
            pair.name, pair.name_len, pair.has_name = PyBytes_AS_STRING(name), len(name), True
            pair.value, pair.value_len, pair.has_value = PyBytes_AS_STRING(value), len(value), True
            count[0] += 1
            end += 1
            s.n_pairs += 1
    return 0


cdef inline Py_ssize_t encoded_size(Pair *pair) noexcept:
    """The bytes of a LabelPair's fields."""
    return (
        (1 + varint_size(pair.name_len) + pair.name_len if pair.has_name else 0)
        + (1 + varint_size(pair.value_len) + pair.value_len if pair.has_value else 0)
    )


cdef int put_metric(Buf *b, Scratch *s, Sample *m) except -1:
    cdef Py_ssize_t i, size = 0, pair_size
    cdef Pair *pair
    for i in range(m.first_pair, m.first_pair + m.pairs):
        pair = &s.pairs[i]
        pair_size = encoded_size(pair)
        size += 1 + varint_size(pair_size) + pair_size
    size += 1 + varint_size(m.value_len) + m.value_len + 1 + varint_size(<uint64_t>m.ts)
    put(b, b"\x22", 1)  # MetricFamily.metric
    put_varint(b, size)
    for i in range(m.first_pair, m.first_pair + m.pairs):
        pair = &s.pairs[i]
        pair_size = encoded_size(pair)
        put(b, b"\x0a", 1)
        put_varint(b, pair_size)
        if pair.has_name:
            put_field(b, 0x0A, pair.name, pair.name_len)
        if pair.has_value:
            put_field(b, 0x12, pair.value, pair.value_len)
    if m.field != 7:
        put_field(b, <char>(m.field << 3 | 2), <const char *>m.value, m.value_len)
    put(b, b"\x30", 1)
    put_varint(b, <uint64_t>m.ts)
    if m.field == 7:
        put_field(b, 0x3A, <const char *>m.value, m.value_len)
    return 0


cdef class Transforms:
    """The transforms of one configuration, as bytes: built once, used every cycle."""

    cdef dict renames
    cdef list labels
    cdef list hashed
    cdef bytes salt
    cdef bint labels_ok
    cdef dict anonymized

    def __init__(self, config):
        """From a `telemeter.clientpass.ClientPass`: its renames, labels, anonymized names, salt
        and whether the labels are valid."""
        self.renames = {k.encode(): v.encode() for k, v in config.renames.items()}
        self.labels = [(k.encode(), v.encode()) for k, v in config.labels.items()]
        self.hashed = [name.encode() for name in dict.fromkeys(config.anonymize_labels)]
        self.salt = config.salt.encode()
        self.labels_ok = config.labels_ok
        self.anonymized = {}

    def run(self, bytes data, token_labels, int64_t now_ms, int64_t max_age_ms, Py_ssize_t max_families):
        """``(body, families, scraped, dropped)``, or None when the reference must run."""
        cdef Buf out, family
        cdef Scratch s
        out.data = family.data = NULL
        out.len = out.cap = family.len = family.cap = 0
        s.samples = NULL
        s.pairs = NULL
        s.n_samples = s.cap_samples = s.n_pairs = s.cap_pairs = 0
        if len(self.anonymized) > 65536:
            self.anonymized.clear()
        tokens = [(k.encode(), v.encode()) for k, v in token_labels.items()]
        try:
            return self._run(data, tokens, now_ms - max_age_ms, max_families, &out, &family, &s)
        finally:
            free(out.data)
            free(family.data)
            free(s.samples)
            free(s.pairs)

    cdef object _run(
        self, bytes data, list tokens, int64_t min_ms, Py_ssize_t max_families,
        Buf *out, Buf *family, Scratch *s,
    ):
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(data)
        cdef const uint8_t *end = p + PyBytes_GET_SIZE(data)
        cdef const uint8_t *q
        cdef const uint8_t *stop
        cdef Py_ssize_t n, m, families = 0, scraped = 0, kept = 0, i, j, written = 0
        cdef uint64_t tag, kind
        cdef bytes name, help_, renamed
        cdef Sample *sample
        cdef bint seen_name, seen_help, seen_type
        while p < end:
            if read_span(&p, end, &n) < 0 or families == max_families:
                return None
            families += 1
            stop = p + n
            name = help_ = b""
            kind = 0
            s.n_samples = s.n_pairs = 0
            seen_name = seen_help = seen_type = False
            while p < stop:
                if read_varint(&p, stop, &tag) < 0:
                    return None
                if tag == 0x18:
                    if seen_type or read_varint(&p, stop, &kind) < 0 or kind > 5:
                        return None
                    seen_type = True
                    continue
                if read_span(&p, stop, &m) < 0:
                    return None
                if tag == 0x22:
                    reserve(s, 1, 0)
                    sample = &s.samples[s.n_samples]
                    if read_metric(p, p + m, s, sample) < 0:
                        return None
                    sample.order = s.n_samples
                    s.n_samples += 1
                elif (tag == 0x0A and not seen_name) or (tag == 0x12 and not seen_help):
                    if not tm_valid_utf8(p, m):
                        return None
                    if tag == 0x0A:
                        name, seen_name = PyBytes_FromStringAndSize(<const char *>p, m), True
                    else:
                        help_, seen_help = PyBytes_FromStringAndSize(<const char *>p, m), True
                else:
                    return None
                p += m
            scraped += s.n_samples
            renamed = self.renames.get(name, name)
            if not (self.labels_ok and name_ok(renamed, len(renamed), True)):
                continue
            j = 0  # the kept samples, compacted to the front
            for i in range(s.n_samples):
                sample = &s.samples[i]
                if self._valid(s, sample, VALUE_FIELD[kind], min_ms):
                    s.samples[j] = sample[0]
                    j += 1
            if j == 0:
                continue
            kept += j
            qsort(s.samples, j, sizeof(Sample), by_time)
            family.len = 0
            put_field(family, 0x0A, renamed, len(renamed))
            put_field(family, 0x12, help_, len(help_))
            put(family, b"\x18", 1)
            put_varint(family, kind)
            for i in range(j):
                self._transform(s, &s.samples[i], tokens)
                put_metric(family, s, &s.samples[i])
            put_varint(out, family.len)
            put(out, family.data, family.len)
            written += 1
        return PyBytes_FromStringAndSize(out.data, out.len), written, scraped, scraped - kept

    cdef bint _valid(self, Scratch *s, Sample *m, int expected, int64_t min_ms) except -1:
        """telemeter.transforms._sample_ok"""
        cdef Py_ssize_t i
        cdef Pair *pair
        cdef bytes name, value
        cdef bint overridden
        if m.ts == 0 or m.ts < min_ms or m.field != expected:
            return False
        for i in range(m.first_pair, m.first_pair + m.pairs):
            pair = &s.pairs[i]
            overridden = False
            for name, value in self.labels:
                if same(pair.name, pair.name_len, name):
                    overridden = True
                    break
            if not overridden and not (
                name_ok(pair.name, pair.name_len, False)
                and characters(pair.value, pair.value_len) <= MAX_NAME
            ):
                return False
        return True

    cdef int _transform(self, Scratch *s, Sample *m, list tokens) except -1:
        """``--label``, anonymize, token labels; the pairs move to the end of ``s.pairs``."""
        cdef Py_ssize_t i, first = s.n_pairs, count = m.pairs
        cdef Pair *pair
        cdef bytes name, hashed
        reserve(s, 0, count)
        for i in range(count):
            s.pairs[first + i] = s.pairs[m.first_pair + i]
        s.n_pairs += count
        m.first_pair = first
        set_labels(s, first, &count, self.labels)
        if self.hashed:
            for i in range(first, first + count):
                pair = &s.pairs[i]
                if pair.value_len == 0:
                    continue
                for name in self.hashed:
                    if same(pair.name, pair.name_len, name):
                        hashed = self._anonymize(PyBytes_FromStringAndSize(pair.value, pair.value_len))
                        pair.value, pair.value_len = PyBytes_AS_STRING(hashed), len(hashed)
                        break
        set_labels(s, first, &count, tokens)
        m.pairs = count
        return 0

    cdef bytes _anonymize(self, bytes value):
        cdef bytes hashed = self.anonymized.get(value)
        if hashed is None:
            hashed = _hash(self.salt, value)
            self.anonymized[value] = hashed
        return hashed


import base64
import hashlib


cdef bytes _hash(bytes salt, bytes value):
    """telemeter.transforms.anonymize, on bytes."""
    return base64.urlsafe_b64encode(hashlib.sha256(salt + value).digest()[:9])


def frames(bytes data):
    """The varint-delimited messages in ``data``, or -1 when the framing is broken."""
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(data)
    cdef const uint8_t *end = p + PyBytes_GET_SIZE(data)
    cdef Py_ssize_t n, count = 0
    while p < end:
        if read_span(&p, end, &n) < 0:
            return -1
        p += n
        count += 1
    return count


# ---- the text answer --------------------------------------------------------------------------

from libc.stdlib cimport strtod


cdef inline bint is_digit(char c) noexcept:
    return b'0' <= c <= b'9'


cdef Py_ssize_t number_end(const char *s, Py_ssize_t n) noexcept:
    """The length of ``-?(\\d+(\\.\\d*)?|\\.\\d+)([eE][+-]?\\d+)?`` at ``s``, or of ``NaN``,
    ``+Inf``, ``-Inf``; 0 when neither: the forms where C and Python read the same double."""
    cdef Py_ssize_t i = 0, digits = 0
    if n >= 3 and memcmp(s, b"NaN", 3) == 0:
        return 3
    if n >= 4 and (memcmp(s, b"+Inf", 4) == 0 or memcmp(s, b"-Inf", 4) == 0):
        return 4
    if i < n and s[i] == b'-':
        i += 1
    while i < n and is_digit(s[i]):
        i += 1
        digits += 1
    if i < n and s[i] == b'.':
        i += 1
        while i < n and is_digit(s[i]):
            i += 1
            digits += 1
    if digits == 0:
        return 0
    if i < n and (s[i] == b'e' or s[i] == b'E'):
        i += 1
        if i < n and (s[i] == b'+' or s[i] == b'-'):
            i += 1
        if i >= n or not is_digit(s[i]):
            return 0
        while i < n and is_digit(s[i]):
            i += 1
    return i


def text_families(bytes data):
    """A text answer in the form Prometheus's ``/federate`` writes (``# TYPE name untyped`` or
    ``gauge``, then that family's sample lines ``name{a="b",...} value [ms]``) as delimited
    MetricFamily messages, as ``write_families(parse_text(data))`` writes them; None for
    anything else (HELP or other comments, counters, summaries, histograms, other spacing,
    escapes other than ``\\\\ \\" \\n``), where the reference runs."""
    cdef const char *p = PyBytes_AS_STRING(data)
    cdef const char *end = p + PyBytes_GET_SIZE(data)
    cdef const char *line
    cdef const char *eol
    cdef const char *q
    cdef const char *name = NULL
    cdef Py_ssize_t name_len = 0, n, k, i, j
    cdef int kind = -1
    cdef char value_tag
    cdef double value
    cdef Buf out, family, metric, labels
    cdef bint has_ts
    cdef uint64_t ts
    if not tm_valid_utf8(<const unsigned char *>p, end - p):
        return None
    out.data = family.data = metric.data = labels.data = NULL
    out.len = out.cap = family.len = family.cap = metric.len = metric.cap = 0
    labels.len = labels.cap = 0
    seen = set()
    try:
        while p < end:
            line = p
            q = <const char *>memchr(p, b'\n', end - p)
            eol = end if q == NULL else q
            p = eol + 1
            n = eol - line
            if n == 0:
                return None
            if line[0] == b'#':
                # "# TYPE <name> untyped|gauge": the family before it is complete.
                if n < 8 or memcmp(line, b"# TYPE ", 7) != 0:
                    return None
                q = <const char *>memchr(line + 7, b' ', n - 7)
                if q == NULL:
                    return None
                if not _close(&out, &family, name, name_len, kind):
                    return None
                name, name_len = line + 7, q - (line + 7)
                if not name_ok(name, name_len, True):
                    return None
                key = PyBytes_FromStringAndSize(name, name_len)
                if key in seen:
                    return None
                seen.add(key)
                k = eol - (q + 1)
                if k == 7 and memcmp(q + 1, b"untyped", 7) == 0:
                    kind = 3
                elif k == 5 and memcmp(q + 1, b"gauge", 5) == 0:
                    kind = 1
                else:
                    return None
                family.len = 0
                continue
            # A sample line of the family named by the TYPE line before it.
            if name == NULL or n <= name_len or memcmp(line, name, name_len) != 0:
                return None
            q = line + name_len
            labels.len = 0
            if q[0] == b'{':
                q += 1
                if _labels(&q, eol, &labels) < 0:
                    return None
            if q >= eol or q[0] != b' ':
                return None
            q += 1
            k = number_end(q, eol - q)
            if k == 0 or (q + k < eol and q[k] != b' '):
                return None
            value = strtod(q, NULL) if q[0] != b'+' else strtod(q + 1, NULL)
            if value == 0 and memchr(q, b'.', k) == NULL and memchr(q, b'e', k) == NULL \
                    and memchr(q, b'E', k) == NULL:
                value = 0.0  # the reference reads an integer as an int first: "-0" is 0
            q += k
            has_ts = q < eol
            ts = 0
            if has_ts:  # milliseconds, up to 15 digits (exact through the reference's float)
                q += 1
                if eol - q < 1 or eol - q > 15:
                    return None
                while q < eol:
                    if not is_digit(q[0]):
                        return None
                    ts = ts * 10 + <uint64_t>(q[0] - 48)
                    q += 1
            metric.len = 0
            put(&metric, labels.data, labels.len)
            value_tag = 0x2A if kind == 3 else 0x12  # Metric.untyped, Metric.gauge: 9 bytes
            put(&metric, &value_tag, 1)
            put(&metric, b"\x09\x09", 2)  # ... holding field 1, a double
            put(&metric, <const char *>&value, 8)  # little-endian, as protobuf (x86-64, arm64)
            if has_ts:
                put(&metric, b"\x30", 1)
                put_varint(&metric, ts)
            put(&family, b"\x22", 1)
            put_varint(&family, metric.len)
            put(&family, metric.data, metric.len)
        if not _close(&out, &family, name, name_len, kind):
            return None
        return PyBytes_FromStringAndSize(out.data, out.len)
    finally:
        free(out.data)
        free(family.data)
        free(metric.data)
        free(labels.data)


cdef int _labels(const char **pp, const char *eol, Buf *labels) except -2:
    """``a="b",c="d"}`` at ``pp[0]`` as LabelPair fields; -1 when not of that strict form or a
    name repeats."""
    cdef const char *q = pp[0]
    cdef const char *start
    cdef const char *v
    cdef Buf value
    cdef Py_ssize_t i
    cdef list names = []
    value.data = NULL
    value.len = value.cap = 0
    try:
        while True:
            start = q
            while q < eol and q[0] != b'=':
                q += 1
            if q + 1 >= eol or q[1] != b'"' or not name_ok(start, q - start, False):
                return -1
            key = PyBytes_FromStringAndSize(start, q - start)
            if key in names:
                return -1
            names.append(key)
            q += 2
            value.len = 0
            while True:
                if q >= eol:
                    return -1
                if q[0] == b'"':
                    break
                if q[0] == b'\\':
                    if q + 1 >= eol:
                        return -1
                    if q[1] == b'\\' or q[1] == b'"':
                        put(&value, q + 1, 1)
                    elif q[1] == b'n':
                        put(&value, b"\n", 1)
                    else:
                        return -1
                    q += 2
                    continue
                v = q
                while q < eol and q[0] != b'"' and q[0] != b'\\':
                    q += 1
                put(&value, v, q - v)
            q += 1
            # LabelPair{name, value}
            put(labels, b"\x0a", 1)
            put_varint(labels, 2 + varint_size(len(key)) + len(key) + varint_size(value.len) + value.len)
            put_field(labels, 0x0A, key, len(key))
            put_field(labels, 0x12, value.data if value.data != NULL else <char *>b"", value.len)
            if q < eol and q[0] == b',':
                q += 1
                continue
            if q < eol and q[0] == b'}':
                pp[0] = q + 1
                return 0
            return -1
    finally:
        free(value.data)


cdef bint _close(Buf *out, Buf *family, const char *name, Py_ssize_t name_len, int kind) except -1:
    """Write the family being read, if it has samples (the reference drops empty ones)."""
    cdef Py_ssize_t size
    if name == NULL or family.len == 0:
        return True
    size = 1 + varint_size(name_len) + name_len + 2 + family.len
    put_varint(out, size)
    put_field(out, 0x0A, name, name_len)
    put(out, b"\x18", 1)
    put_varint(out, kind)
    put(out, family.data, family.len)
    family.len = 0
    return True
