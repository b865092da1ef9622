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

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8String, PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8

from telemeter.errors import InvalidPayload, TooLarge

cdef extern from *:
    """
    #include <math.h>
    #include <stdio.h>
    #include <string.h>

    /* Go's strconv.FormatFloat(v, 'g', -1, 64) for a finite, non-zero v: shortest round-trip
       digits (taken from CPython's repr), exponent form when the exponent is < -4 or >= 6. */
    static int tm_format_double(double v, char *out) {
        char *s = PyOS_double_to_string(fabs(v), 'r', 0, 0, NULL);
        if (s == NULL) return -1;
        char digits[32]; int nd = 0, whole = 0, seen_point = 0, exp10 = 0, lead = 0;
        for (char *c = s; *c; c++) {
            if (*c == '.') { seen_point = 1; continue; }
            if (*c == 'e') { exp10 = atoi(c + 1); break; }
            if (!seen_point) whole++;
            if (nd == 0 && *c == '0') { lead++; continue; }
            if (nd < 31) digits[nd++] = *c;
        }
        PyMem_Free(s);
        while (nd > 1 && digits[nd - 1] == '0') nd--;
        int point = whole + exp10 - lead;
        int exp = point - 1, n = 0;
        if (v < 0) out[n++] = '-';
        if (exp < -4 || exp >= 6) {
            out[n++] = digits[0];
            if (nd > 1) { out[n++] = '.'; memcpy(out + n, digits + 1, nd - 1); n += nd - 1; }
            n += sprintf(out + n, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
        } else if (point <= 0) {
            out[n++] = '0'; out[n++] = '.';
            for (int i = 0; i < -point; i++) out[n++] = '0';
            memcpy(out + n, digits, nd); n += nd;
        } else if (point >= nd) {
            memcpy(out + n, digits, nd); n += nd;
            for (int i = nd; i < point; i++) out[n++] = '0';
        } else {
            memcpy(out + n, digits, point); n += point; out[n++] = '.';
            memcpy(out + n, digits + point, nd - point); n += nd - point;
        }
        return n;
    }

    /* CRC-32 of a concatenation from the CRCs of its parts (zlib's crc32_combine, 1.2.12+):
       lets /federate compress the halves of a gzip answer on two threads. */
    #define TM_POLY 0xedb88320u
    static uint32_t tm_multmodp(uint32_t a, uint32_t b) {
        uint32_t m = (uint32_t)1 << 31, p = 0;
        for (;;) {
            if (a & m) { p ^= b; if ((a & (m - 1)) == 0) break; }
            m >>= 1;
            b = b & 1 ? (b >> 1) ^ TM_POLY : b >> 1;
        }
        return p;
    }
    static uint32_t tm_x2n[32];
    static void tm_crc_init(void) {
        uint32_t p = (uint32_t)1 << 30;
        tm_x2n[0] = p;
        for (int n = 1; n < 32; n++) tm_x2n[n] = p = tm_multmodp(p, p);
    }
    static uint32_t tm_crc32_combine(uint32_t crc1, uint32_t crc2, uint64_t len2) {
        uint32_t p = (uint32_t)1 << 31;
        unsigned k = 3;
        while (len2) {
            if (len2 & 1) p = tm_multmodp(tm_x2n[k & 31], p);
            len2 >>= 1;
            k++;
        }
        return tm_multmodp(p, crc1) ^ crc2;
    }

    /* Whether any of eight bytes needs escape in a label value (backslash, quote, newline):
       a byte equal to c makes (w ^ c*0x01..01) have a zero byte. */
    #define TM_ONES 0x0101010101010101ULL
    #define TM_HIGHS 0x8080808080808080ULL
    static inline uint64_t tm_zero_byte(uint64_t x) { return (x - TM_ONES) & ~x & TM_HIGHS; }
    static inline uint64_t tm_word_escapes(uint64_t w) {
        return tm_zero_byte(w ^ (TM_ONES * 92)) | tm_zero_byte(w ^ (TM_ONES * 34))
            | tm_zero_byte(w ^ (TM_ONES * 10));
    }

    /* Index of the first byte needing escape in a label value, or n; eight bytes at a time. */
    static Py_ssize_t tm_find_escape(const char *s, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            uint64_t w; memcpy(&w, s + i, 8);
            if (tm_word_escapes(w)) break;
        }
        for (; i < n; i++) if (s[i] == 92 || s[i] == 34 || s[i] == 10) return i;
        return n;
    }

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

    /* Strict UTF-8 validation (no overlongs, no surrogates, at most U+10FFFF). */
    static int tm_valid_utf8(const unsigned char *s, Py_ssize_t n) {
        Py_ssize_t i = 0;
        while (i < n) {
            if (i + 8 <= n) {  /* ASCII fast path, eight bytes at a time */
                unsigned long long w; memcpy(&w, s + i, 8);
                if ((w & 0x8080808080808080ULL) == 0) { i += 8; continue; }
            }
            unsigned char c = s[i];
            if (c < 0x80) { i++; continue; }
            int len; unsigned int cp;
            if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
            else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
            else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
            else return 0;
            if (i + len > n) return 0;
            for (int k = 1; k < len; k++) {
                if ((s[i + k] & 0xC0) != 0x80) return 0;
                cp = (cp << 6) | (s[i + k] & 0x3F);
            }
            if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
                (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) return 0;
            i += len;
        }
        return 1;
    }
    /* A label value in one scan: 1 when it is ASCII with nothing to escape (the usual case:
       copied as is), 0 when it is valid UTF-8 with bytes to escape or beyond ASCII, -1 when it
       is not valid UTF-8. */
    static int tm_scan_value(const unsigned char *s, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            uint64_t w; memcpy(&w, s + i, 8);
            if ((w & TM_HIGHS) | tm_word_escapes(w)) break;
        }
        for (; i < n; i++) {
            unsigned char c = s[i];
            if (c >= 0x80 || c == 92 || c == 34 || c == 10) break;
        }
        if (i == n) return 1;
        return tm_valid_utf8(s, n) ? 0 : -1;
    }
    """
    int tm_format_double(double v, char *out) except -1
    int tm_scan_value(const unsigned char *s, Py_ssize_t n)
    void tm_names_init()
    int tm_valid_name(const unsigned char *s, Py_ssize_t n, int colon)
    Py_ssize_t tm_find_escape(const char *s, Py_ssize_t n)
    void tm_crc_init()
    uint32_t tm_crc32_combine(uint32_t crc1, uint32_t crc2, uint64_t len2)
    double fabs(double)
    int isnan(double)
    int isinf(double)
    int signbit(double)
    int snprintf(char *, size_t, const char *, ...)

tm_names_init()
tm_crc_init()


def crc32_combine(uint32_t crc1, uint32_t crc2, uint64_t len2):
    """The CRC-32 of A+B from crc32(A), crc32(B) and len(B), as zlib's crc32_combine."""
    return tm_crc32_combine(crc1, crc2, len2)


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

cdef struct Buf:
    char *data
    Py_ssize_t len
    Py_ssize_t cap

cdef struct Span:
    Py_ssize_t start
    Py_ssize_t end

cdef struct Label:
    Py_ssize_t name
    Py_ssize_t name_len
    Py_ssize_t value
    Py_ssize_t value_len
    bint plain  # the value is ASCII with nothing to escape (set by check_values)

cdef struct Pair:
    const char *name
    Py_ssize_t name_len
    const char *value
    Py_ssize_t value_len


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


cdef inline int put(Buf *b, const char *s, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        grow(b, n)
    memcpy(b.data + b.len, s, n)
    b.len += n
    return 0


cdef int put_value(Buf *b, double v) except -1:
    cdef char tmp[48]
    cdef int n
    if isnan(v):
        return put(b, "NaN", 3)
    if isinf(v):
        return put(b, "+Inf", 4) if v > 0 else put(b, "-Inf", 4)
    if v == 0:
        return put(b, "-0", 2) if signbit(v) else put(b, "0", 1)
    if fabs(v) < 1e6 and v == <double>(<int64_t>v):
        n = snprintf(tmp, 48, "%lld", <long long>v)
    else:
        n = tm_format_double(v, tmp)
    return put(b, tmp, n)


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


# ---- the body of a stored snapshot (uploads) --------------------------------------------------

def pack_families(list families):
    """The uncompressed body of a stored snapshot (app.snapshot) from (name, type,
    text) tuples: the family count (u16), per family its type (u8), name length (u16), name and
    text length (u32), then the texts. Raises ValueError when a field does not fit."""
    cdef Py_ssize_t n = len(families), size = 2, i, name_len, text_len
    cdef int kind
    cdef bytes name, text, out
    cdef char *p
    cdef list names = [], kinds = [], texts = []
    if n > 0xFFFF:
        raise ValueError("more than 65535 families in one snapshot")
    for entry in families:
        name = PyUnicode_AsUTF8String(entry[0])
        kind = entry[1]
        text = entry[2]
        if PyBytes_GET_SIZE(name) > 0xFFFF or PyBytes_GET_SIZE(text) > 0xFFFFFFFF or not 0 <= kind <= 255:
            raise ValueError("a family does not fit in a snapshot")
        names.append(name)
        kinds.append(kind)
        texts.append(text)
        size += 7 + PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(text)
    out = PyBytes_FromStringAndSize(NULL, size)
    p = PyBytes_AS_STRING(out)
    p[0] = <char>(n >> 8)
    p[1] = <char>n
    p += 2
    for i in range(n):
        name = <bytes>names[i]
        name_len = PyBytes_GET_SIZE(name)
        text_len = PyBytes_GET_SIZE(<bytes>texts[i])
        p[0] = <char><int>kinds[i]
        p[1] = <char>(name_len >> 8)
        p[2] = <char>name_len
        memcpy(p + 3, PyBytes_AS_STRING(name), name_len)
        p += 3 + name_len
        p[0] = <char>(text_len >> 24)
        p[1] = <char>(text_len >> 16)
        p[2] = <char>(text_len >> 8)
        p[3] = <char>text_len
        p += 4
    for i in range(n):
        text = <bytes>texts[i]
        memcpy(p, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
        p += PyBytes_GET_SIZE(text)
    return out


# ---- merging stored snapshots (/federate) ---------------------------------------------------

cdef inline uint32_t be32(const uint8_t *p):
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t be64(const uint8_t *p):
    return (<uint64_t>be32(p) << 32) | be32(p + 4)


cdef extern from "libdeflate.h":
    struct libdeflate_decompressor:
        pass
    libdeflate_decompressor *libdeflate_alloc_decompressor()
    void libdeflate_free_decompressor(libdeflate_decompressor *d)
    int libdeflate_deflate_decompress(libdeflate_decompressor *d, const void *src, size_t src_len,
                                      void *out, size_t out_len, size_t *actual) nogil


cdef extern from *:
    """
    #include <sys/mman.h>

    /* A growable region of anonymous memory: grown by mremap (pages are moved, not copied),
       huge pages asked for once it is large, and given back to the system when freed. */
    typedef struct { char *data; size_t len; size_t cap; } tm_region;

    static int tm_region_put(tm_region *r, const char *src, size_t n) {
        if (r->len + n > r->cap) {
            size_t cap = r->cap ? r->cap : 65536;
            while (cap < r->len + n) cap *= 2;
            void *p = r->data
                ? mremap(r->data, r->cap, cap, MREMAP_MAYMOVE)
                : mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) return -1;
            if (cap >= ((size_t)2 << 20)) madvise(p, cap, MADV_HUGEPAGE);
            r->data = (char *)p;
            r->cap = cap;
        }
        memcpy(r->data + r->len, src, n);
        r->len += n;
        return 0;
    }

    static void tm_region_free(tm_region *r) {
        if (r->data) munmap(r->data, r->cap);
        r->data = NULL;
        r->len = r->cap = 0;
    }
    """
    ctypedef struct tm_region:
        char *data
        size_t len
        size_t cap
    int tm_region_put(tm_region *r, const char *src, size_t n) nogil
    void tm_region_free(tm_region *r)


cdef char _EMPTY[1]


cdef class FamilyText:
    """One family's text from many snapshots, read through the buffer protocol (`bytes(t)`,
    `memoryview(t)`), in memory that is given back to the system when it is dropped."""

    cdef tm_region region
    cdef readonly Py_ssize_t clusters  # how many snapshots' texts are in it

    def __dealloc__(self):
        tm_region_free(&self.region)

    cdef int put(self, const char *src, size_t n) except -1:
        if tm_region_put(&self.region, src, n) != 0:
            raise MemoryError()
        return 0

    def __len__(self):
        return self.region.len

    def __bytes__(self):
        return PyBytes_FromStringAndSize(self.region.data, self.region.len)

    def __getbuffer__(self, Py_buffer *view, int flags):
        cdef char *data = self.region.data
        if data == NULL:  # an empty text (never handed out by the merge) needs a valid pointer
            data = _EMPTY
        PyBuffer_FillInfo(view, self, data, self.region.len, 1, flags)

    def __releasebuffer__(self, Py_buffer *view):
        pass


def inflate(bytes value, Py_ssize_t offset, Py_ssize_t size):
    """``value[offset:]``, raw deflate data, inflated to exactly ``size`` bytes (libdeflate).

    Raises ValueError when the data is invalid or does not inflate to exactly that size.
    """
    cdef libdeflate_decompressor *inflater
    cdef int status
    if offset < 0 or offset > PyBytes_GET_SIZE(value) or size < 0:
        raise ValueError("offset or size out of range")
    out = PyBytes_FromStringAndSize(NULL, size)
    inflater = libdeflate_alloc_decompressor()
    if inflater == NULL:
        raise MemoryError()
    status = libdeflate_deflate_decompress(
        inflater, PyBytes_AS_STRING(value) + offset, PyBytes_GET_SIZE(value) - offset,
        PyBytes_AS_STRING(out), size, NULL)
    libdeflate_free_decompressor(inflater)
    if status != 0:
        raise ValueError(f"invalid deflate data (libdeflate status {status})")
    return out


cdef struct Copy:
    tm_region *dst
    Py_ssize_t src
    Py_ssize_t size


DEF HEAD = 23  # magic (3) | push time (8) | series (4) | raw length (4) | deflate length (4)


DEF MAX_KIND = 5  # the MetricType values (GAUGE_HISTOGRAM)


cdef Py_ssize_t _table_end(const uint8_t *r, Py_ssize_t n):
    """Where the family table of an inflated snapshot ends, or -1 when the table is invalid."""
    cdef Py_ssize_t pos = 2, i, count, texts = 0
    if n < 2:
        return -1
    count = (r[0] << 8) | r[1]
    for i in range(count):
        if pos + 3 > n or r[pos] > MAX_KIND:
            return -1
        pos += 3 + ((r[pos + 1] << 8) | r[pos + 2])
        if pos + 4 > n:
            return -1
        texts += be32(r + pos)
        pos += 4
    if pos + texts != n:
        return -1
    return pos


def merge_snapshots(list values, int64_t oldest_ms, bytes magic, Py_ssize_t max_raw):
    """Group the family texts of stored snapshots per family and type (app.snapshot).

    Each value is inflated once by libdeflate into one reused buffer, and each family's text is
    appended to the `FamilyText` of its (family, type). Returns ``(families, clusters, series,
    corrupt)`` where ``families`` maps a family name, in the order first seen, to a list indexed
    by type of `FamilyText` or None, followed by the type seen first. Snapshots pushed before ``oldest_ms`` are skipped; values
    that do not inflate or parse are counted in ``corrupt`` and contribute nothing.
    """
    cdef dict families = {}
    cdef list seen = []  # per place in the family table: (name, its entry in families) last seen
    cdef tuple cached
    cdef bytes known
    cdef Py_ssize_t clusters = 0, series = 0, corrupt = 0, conflicts = 0
    cdef Py_ssize_t n, raw_len, pos, text_pos, name_len, size, i, count, ncopies, copies_cap = 0
    cdef const uint8_t *d
    cdef const uint8_t *r
    cdef char *out
    cdef int kind, status, failed
    cdef list texts
    cdef bytes value
    cdef FamilyText text
    cdef Buf scratch
    cdef Copy *copies = NULL
    cdef Copy *grown
    cdef libdeflate_decompressor *inflater = libdeflate_alloc_decompressor()
    if inflater == NULL:
        raise MemoryError()
    scratch.data = NULL
    scratch.len = 0
    scratch.cap = 0
    try:
        for value in values:
            d = <const uint8_t *>PyBytes_AS_STRING(value)
            n = PyBytes_GET_SIZE(value)
            if n < HEAD or memcmp(d, PyBytes_AS_STRING(magic), 3) != 0 or HEAD + be32(d + 19) != n:
                corrupt += 1
                continue
            if <int64_t>be64(d + 3) < oldest_ms:
                continue
            raw_len = be32(d + 15)
            if raw_len > max_raw:
                corrupt += 1
                continue
            grow(&scratch, raw_len)
            out = scratch.data
            # The inflating and the copies run without the GIL: merges of several halves of
            # the snapshots can run on several threads (snapshot.merge).
            with nogil:
                status = libdeflate_deflate_decompress(inflater, d + HEAD, n - HEAD, out, raw_len, NULL)
            if status != 0:
                corrupt += 1  # bad data, or not exactly raw_len bytes
                continue
            r = <const uint8_t *>out
            text_pos = _table_end(r, raw_len)
            if text_pos < 0:
                corrupt += 1
                continue
            clusters += 1
            series += be32(d + 11)
            count = (r[0] << 8) | r[1]
            if count > copies_cap:
                grown = <Copy *>realloc(copies, count * sizeof(Copy))
                if grown == NULL:
                    raise MemoryError()
                copies = grown
                copies_cap = count
            ncopies = 0
            pos = 2
            for i in range(count):
                kind = r[pos]
                name_len = (r[pos + 1] << 8) | r[pos + 2]
                texts = None
                if i < len(seen):  # the usual case: the family at this place in the last snapshot
                    cached = <tuple>seen[i]
                    known = <bytes>cached[0]
                    if (PyBytes_GET_SIZE(known) == name_len
                            and memcmp(PyBytes_AS_STRING(known), r + pos + 3, name_len) == 0):
                        texts = <list>cached[1]
                if texts is None:
                    name = PyUnicode_DecodeUTF8(<const char *>r + pos + 3, name_len, "replace")
                    texts = families.get(name)
                    if texts is None:
                        texts = [None] * (MAX_KIND + 1)
                        texts.append(kind)  # last: the type seen first
                        families[name] = texts
                    cached = (PyBytes_FromStringAndSize(<const char *>r + pos + 3, name_len), texts)
                    if i < len(seen):
                        seen[i] = cached
                    else:
                        seen.append(cached)
                pos += 3 + name_len
                size = be32(r + pos)
                pos += 4
                text = texts[kind]
                if text is None:
                    text = FamilyText()
                    texts[kind] = text
                text.clusters += 1
                copies[ncopies].dst = &text.region
                copies[ncopies].src = text_pos
                copies[ncopies].size = size
                ncopies += 1
                text_pos += size
            failed = 0
            with nogil:
                for i in range(ncopies):
                    if tm_region_put(copies[i].dst, out + copies[i].src, copies[i].size) != 0:
                        failed = 1
                        break
            if failed:
                raise MemoryError()
    finally:
        free(copies)
        free(scratch.data)
        libdeflate_free_decompressor(inflater)
    return families, clusters, series, corrupt


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
    if wire == 0:
        read_varint(d, pos, end, &ignored)
    elif wire == 1:
        if end - pos[0] < 8:
            raise InvalidPayload("truncated protobuf fixed64")
        pos[0] += 8
    elif wire == 2:
        read_len(d, pos, end, &span)
    elif wire == 5:
        if end - pos[0] < 4:
            raise InvalidPayload("truncated protobuf fixed32")
        pos[0] += 4
    else:
        raise InvalidPayload("unsupported protobuf wire type")
    return 0


cdef inline int expect(int wire, int wanted) except -1:
    if wire != wanted:
        raise InvalidPayload("unexpected protobuf wire type")
    return 0


cdef double read_value_message(const uint8_t *d, Span span) except? -1.0:
    """Gauge, Counter or Untyped: field 1 is the double value."""
    cdef Py_ssize_t pos = span.start
    cdef int field, wire
    cdef double v = 0.0
    while pos < span.end:
        read_key(d, &pos, span.end, &field, &wire)
        if field == 1:
            expect(wire, 1)
            v = read_double(d, &pos, span.end)
        else:
            skip(d, &pos, span.end, wire)
    return v


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

cdef class _Pass:
    cdef const uint8_t *d
    cdef object whitelist
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
    cdef Buf fbuf
    cdef char ts[32]
    cdef int ts_len
    cdef Py_ssize_t received, kept, past, future

    def __dealloc__(self):
        free(self.tokens)
        free(self.extras)
        free(self.elide)
        free(self.labels)
        free(self.shape)
        free(self.token_at)
        free(self.action)
        free(self.extra_used)
        free(self.lbuf.data)
        free(self.fbuf.data)

    cdef int put_labels(self, Py_ssize_t nlabels) except -1:
        """Render `{a="b",...` (no closing brace) into lbuf: elide, replace and append extras."""
        cdef Buf *b = &self.lbuf
        cdef Py_ssize_t i, j
        cdef const char *name
        cdef const char *value
        cdef Py_ssize_t name_len, value_len
        b.len = 0
        for i in range(nlabels):
            j = self.action[i]
            if j == ELIDED:
                continue
            name = <const char *>self.d + self.labels[i].name
            name_len = self.labels[i].name_len
            if j == KEPT:
                value = <const char *>self.d + self.labels[i].value
                value_len = self.labels[i].value_len
            else:
                value = self.extras[j].value
                value_len = self.extras[j].value_len
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
        for j in range(self.nextras):
            if self.extra_used[j] or self.extras[j].value_len == 0:
                continue
            put(b, "," if b.len else "{", 1)
            put(b, self.extras[j].name, self.extras[j].name_len)
            put(b, '="', 2)
            put_escaped(b, self.extras[j].value, self.extras[j].value_len)
            put(b, '"', 1)
        return 0

    cdef int line_start(self, const char *name, Py_ssize_t name_len, const char *suffix,
                        Py_ssize_t suffix_len) except -1:
        put(&self.fbuf, name, name_len)
        put(&self.fbuf, suffix, suffix_len)
        return 0

    cdef int line_labels(self, const char *extra, Py_ssize_t extra_len, bint has_extra) except -1:
        """Close the label set, adding `extra` (`le=`/`quantile=` prefix) when given, then a space."""
        cdef Buf *b = &self.fbuf
        if has_extra:
            put(b, self.lbuf.data, self.lbuf.len) if self.lbuf.len else put(b, "{", 1)
            if self.lbuf.len:
                put(b, ",", 1)
            put(b, extra, extra_len)
            put(b, "} ", 2)
        elif self.lbuf.len:
            put(b, self.lbuf.data, self.lbuf.len)
            put(b, "} ", 2)
        else:
            put(b, " ", 1)
        return 0

    cdef int line_end(self) except -1:
        return put(&self.fbuf, self.ts, self.ts_len)

    cdef int simple_line(self, const char *name, Py_ssize_t name_len, const char *suffix,
                         Py_ssize_t suffix_len, double value) except -1:
        self.line_start(name, name_len, suffix, suffix_len)
        self.line_labels(NULL, 0, False)
        put_value(&self.fbuf, value)
        return self.line_end()

    cdef int render_summary(self, const char *name, Py_ssize_t name_len, Span span) except -1:
        cdef const uint8_t *d = self.d
        cdef Py_ssize_t pos = span.start
        cdef Py_ssize_t qpos
        cdef int field, wire, qfield, qwire
        cdef uint64_t count = 0
        cdef double total = 0.0, q, v
        cdef Span sub
        cdef Buf extra
        extra.data = NULL
        extra.len = 0
        extra.cap = 0
        try:
            while pos < span.end:
                read_key(d, &pos, span.end, &field, &wire)
                if field == 1:
                    expect(wire, 0)
                    read_varint(d, &pos, span.end, &count)
                elif field == 2:
                    expect(wire, 1)
                    total = read_double(d, &pos, span.end)
                elif field == 3:
                    expect(wire, 2)
                    read_len(d, &pos, span.end, &sub)
                    q = 0.0
                    v = 0.0
                    qpos = sub.start
                    while qpos < sub.end:
                        read_key(d, &qpos, sub.end, &qfield, &qwire)
                        if qfield == 1:
                            expect(qwire, 1)
                            q = read_double(d, &qpos, sub.end)
                        elif qfield == 2:
                            expect(qwire, 1)
                            v = read_double(d, &qpos, sub.end)
                        else:
                            skip(d, &qpos, sub.end, qwire)
                    extra.len = 0
                    put(&extra, 'quantile="', 10)
                    put_value(&extra, q)
                    put(&extra, '"', 1)
                    self.line_start(name, name_len, "", 0)
                    self.line_labels(extra.data, extra.len, True)
                    put_value(&self.fbuf, v)
                    self.line_end()
                else:
                    skip(d, &pos, span.end, wire)
            self.simple_line(name, name_len, "_sum", 4, total)
            self.line_start(name, name_len, "_count", 6)
            self.line_labels(NULL, 0, False)
            put_uint(&self.fbuf, count)
            self.line_end()
        finally:
            free(extra.data)
        return 0

    cdef int render_histogram(self, const char *name, Py_ssize_t name_len, Span span) except -1:
        cdef const uint8_t *d = self.d
        cdef Py_ssize_t pos = span.start
        cdef Py_ssize_t bpos
        cdef int field, wire, bfield, bwire
        cdef uint64_t count = 0, bcount
        cdef double count_f = 0.0, total = 0.0, ub, bcount_f
        cdef bint has_inf = False
        cdef Span sub
        cdef Buf extra
        extra.data = NULL
        extra.len = 0
        extra.cap = 0
        try:
            # Buckets are written first but _count/_sum come after them: read the scalars first.
            while pos < span.end:
                read_key(d, &pos, span.end, &field, &wire)
                if field == 1:
                    expect(wire, 0)
                    read_varint(d, &pos, span.end, &count)
                elif field == 4:
                    expect(wire, 1)
                    count_f = read_double(d, &pos, span.end)
                elif field == 2:
                    expect(wire, 1)
                    total = read_double(d, &pos, span.end)
                else:
                    skip(d, &pos, span.end, wire)
            pos = span.start
            while pos < span.end:
                read_key(d, &pos, span.end, &field, &wire)
                if field != 3:
                    skip(d, &pos, span.end, wire)
                    continue
                expect(wire, 2)
                read_len(d, &pos, span.end, &sub)
                bcount = 0
                bcount_f = 0.0
                ub = 0.0
                bpos = sub.start
                while bpos < sub.end:
                    read_key(d, &bpos, sub.end, &bfield, &bwire)
                    if bfield == 1:
                        expect(bwire, 0)
                        read_varint(d, &bpos, sub.end, &bcount)
                    elif bfield == 4:
                        expect(bwire, 1)
                        bcount_f = read_double(d, &bpos, sub.end)
                    elif bfield == 2:
                        expect(bwire, 1)
                        ub = read_double(d, &bpos, sub.end)
                    else:
                        skip(d, &bpos, sub.end, bwire)
                if isinf(ub) and ub > 0:
                    has_inf = True
                extra.len = 0
                put(&extra, 'le="', 4)
                put_value(&extra, ub)
                put(&extra, '"', 1)
                self.line_start(name, name_len, "_bucket", 7)
                self.line_labels(extra.data, extra.len, True)
                put_count(&self.fbuf, bcount, bcount_f)
                self.line_end()
            if not has_inf:
                self.line_start(name, name_len, "_bucket", 7)
                self.line_labels('le="+Inf"', 9, True)
                put_count(&self.fbuf, count, count_f)
                self.line_end()
            self.simple_line(name, name_len, "_sum", 4, total)
            self.line_start(name, name_len, "_count", 6)
            self.line_labels(NULL, 0, False)
            put_count(&self.fbuf, count, count_f)
            self.line_end()
        finally:
            free(extra.data)
        return 0

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
        return 0

    cdef int check_values(self, Py_ssize_t nlabels, str family) except -1:
        cdef Py_ssize_t i
        cdef Label *l
        cdef int scan
        for i in range(nlabels):
            l = &self.labels[i]
            scan = tm_scan_value(self.d + l.value, l.value_len)
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
        if field == 4:
            self.render_summary(name, name_len, values[4])
        elif field == 7:
            self.render_histogram(name, name_len, values[7])
        else:
            self.simple_line(name, name_len, "", 0, read_value_message(d, values[field]))
        return 0


def process(bytes data, object config, int64_t now_ms, int64_t min_timestamp_ms, object result_cls):
    """Validate, filter, transform and render one upload; see telemeter.upload.process."""
    cdef _Pass p = _Pass()
    cdef const uint8_t *d = <const uint8_t *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0, fpos, count = 0
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
    p.extra_used = <bint *>malloc((p.nextras + 1) * sizeof(bint))
    if (p.labels == NULL or p.shape == NULL or p.token_at == NULL or p.action == NULL
            or p.extra_used == NULL):
        raise MemoryError()
    p.ts_len = snprintf(p.ts, 32, " %lld\n", <long long>now_ms)

    # Count the families first, so too many of them is reported before anything else (413).
    while pos < n:
        read_len(d, &pos, n, &msg)
        count += 1
        if count > p.max_series:
            raise TooLarge(f"more than {p.max_series} families in one upload")

    out = {}
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
        if types.setdefault(family, kind) != kind:
            raise InvalidPayload(f"family {family} appears twice with different types")
        decision = decisions.get(family, -1)  # the whitelist's cached decision, if any
        if decision < 0:
            decision = p.whitelist.family_decision(family)
        last_ts = <int64_t>NO_TS
        p.fbuf.len = 0
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
            else:
                out[family] = (kind, block)

    result = result_cls()
    result.families = [(name_, entry[0], entry[1]) for name_, entry in out.items()]
    result.received = p.received
    result.kept = p.kept
    result.past = p.past
    result.future = p.future
    return result
