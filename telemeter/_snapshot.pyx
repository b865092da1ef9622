# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Stored snapshots in compiled code: packing one at upload, unpacking one, and merging many
for `/federate` (app/snapshot.py; the layout is in _snapshot.pxd; docs/architecture.md, D4).

The merge inflates each snapshot once (libdeflate, exact size known) and appends each family's
text to that family's `FamilyText`, with no Python work per family per cluster. A `FamilyText`
holds at most a chunk of text uncompressed: a full chunk is compressed into a segment, so a
merge of many clusters holds about the compressed size of the answer, not its text
(docs/architecture.md, "/federate").
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memcpy
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8String, PyUnicode_DecodeUTF8

from telemeter._buffer cimport Buf, grow

MAGIC = PyBytes_FromStringAndSize(SNAPSHOT_MAGIC, MAGIC_LEN)


cdef extern from "libdeflate.h":
    struct libdeflate_decompressor:
        pass
    libdeflate_decompressor *libdeflate_alloc_decompressor()
    void libdeflate_free_decompressor(libdeflate_decompressor *d)
    int libdeflate_deflate_decompress(libdeflate_decompressor *d, const void *src, size_t src_len,
                                      void *out, size_t out_len, size_t *actual) nogil
    uint32_t libdeflate_crc32(uint32_t crc, const void *buffer, size_t len) nogil


cdef extern from *:
    """

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
    """
    void tm_crc_init()
    uint32_t tm_crc32_combine(uint32_t crc1, uint32_t crc2, uint64_t len2)

tm_crc_init()


def crc32_combine(uint32_t crc1, uint32_t crc2, uint64_t len2):
    """The CRC-32 of A+B from crc32(A), crc32(B) and len(B), as zlib's crc32_combine."""
    return tm_crc32_combine(crc1, crc2, len2)


# ---- the fields -------------------------------------------------------------------------------

cdef inline uint64_t get_be(const uint8_t *p, int size) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(size):
        v = (v << 8) | p[i]
    return v


cdef inline void put_be(char *p, uint64_t v, int size) noexcept:
    cdef int i
    for i in range(size):
        p[i] = <char>(v >> (8 * (size - 1 - i)))


cdef inline bint framed(const uint8_t *d, Py_ssize_t n) noexcept:
    """Whether a stored value has the magic, a whole head and exactly its deflate data."""
    return (n >= HEAD and memcmp(d, SNAPSHOT_MAGIC, MAGIC_LEN) == 0
            and HEAD + <Py_ssize_t>get_be(d + DEFLATE_LEN_AT, 4) == n)


cdef inline Py_ssize_t read_entry(const uint8_t *r, Py_ssize_t pos, Entry *e) noexcept:
    """Read the table entry at pos (checked by table_end) and return where the next one is."""
    e.kind = r[pos + ENTRY_KIND_AT]
    e.name_len = <Py_ssize_t>get_be(r + pos + ENTRY_NAME_LEN_AT, 2)
    e.name = pos + ENTRY_NAME_AT
    e.text_len = <Py_ssize_t>get_be(r + e.name + e.name_len, TEXT_LEN_LEN)
    return e.name + e.name_len + TEXT_LEN_LEN


cdef Py_ssize_t table_end(const uint8_t *r, Py_ssize_t n) noexcept:
    """Where the family table of an inflated snapshot ends (its first text starts), or -1 when
    the table is invalid or its text lengths do not add up to the rest."""
    cdef Py_ssize_t pos = COUNT_LEN, i, count, texts = 0
    if n < COUNT_LEN:
        return -1
    count = <Py_ssize_t>get_be(r, COUNT_LEN)
    for i in range(count):
        if pos + ENTRY_NAME_AT > n or r[pos + ENTRY_KIND_AT] > MAX_KIND:
            return -1
        pos += ENTRY_NAME_AT + <Py_ssize_t>get_be(r + pos + ENTRY_NAME_LEN_AT, 2)
        if pos + TEXT_LEN_LEN > n:
            return -1
        texts += <Py_ssize_t>get_be(r + pos, TEXT_LEN_LEN)
        pos += TEXT_LEN_LEN
    if pos + texts != n:
        return -1
    return pos


# ---- one snapshot ------------------------------------------------------------------------------

cdef bytes pack_families(list families):
    """RAW from (name, type, text) tuples; ValueError when a field does not fit."""
    cdef Py_ssize_t n = len(families), size = COUNT_LEN, i, name_len, text_len
    cdef int kind
    cdef bytes name, text, out
    cdef char *p
    cdef list names = [], kinds = [], texts = []
    if n > MAX_FAMILIES:
        raise ValueError(f"more than {MAX_FAMILIES} families in one snapshot")
    for entry in families:
        name = PyUnicode_AsUTF8String(entry[0])
        kind = entry[1]
        text = entry[2]
        if (PyBytes_GET_SIZE(name) > MAX_NAME_LEN or PyBytes_GET_SIZE(text) > 0xFFFFFFFF
                or not 0 <= kind <= 255):
            raise ValueError("a family does not fit in a snapshot")
        names.append(name)
        kinds.append(kind)
        texts.append(text)
        size += ENTRY_NAME_AT + PyBytes_GET_SIZE(name) + TEXT_LEN_LEN + PyBytes_GET_SIZE(text)
    out = PyBytes_FromStringAndSize(NULL, size)
    p = PyBytes_AS_STRING(out)
    put_be(p, n, COUNT_LEN)
    p += COUNT_LEN
    for i in range(n):
        name = <bytes>names[i]
        name_len = PyBytes_GET_SIZE(name)
        text_len = PyBytes_GET_SIZE(<bytes>texts[i])
        p[ENTRY_KIND_AT] = <char><int>kinds[i]
        put_be(p + ENTRY_NAME_LEN_AT, name_len, 2)
        memcpy(p + ENTRY_NAME_AT, PyBytes_AS_STRING(name), name_len)
        p += ENTRY_NAME_AT + name_len
        put_be(p, text_len, TEXT_LEN_LEN)
        p += TEXT_LEN_LEN
    for i in range(n):
        text = <bytes>texts[i]
        memcpy(p, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
        p += PyBytes_GET_SIZE(text)
    return out


def pack_snapshot(uint64_t push_time_ms, uint64_t series, list families, object compress):
    """A stored snapshot of (name, type, text) tuples, RAW compressed by ``compress(raw)`` (raw
    deflate). Raises ValueError when a field does not fit."""
    cdef bytes raw = pack_families(families)
    cdef bytes data = compress(raw)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef char *p
    if series > 0xFFFFFFFF or size > 0xFFFFFFFF:
        raise ValueError("a snapshot field does not fit")
    out = PyBytes_FromStringAndSize(NULL, HEAD + size)
    p = PyBytes_AS_STRING(out)
    memcpy(p, SNAPSHOT_MAGIC, MAGIC_LEN)
    put_be(p + PUSH_TIME_AT, push_time_ms, 8)
    put_be(p + SERIES_AT, series, 4)
    put_be(p + RAW_LEN_AT, PyBytes_GET_SIZE(raw), 4)
    put_be(p + DEFLATE_LEN_AT, size, 4)
    memcpy(p + HEAD, PyBytes_AS_STRING(data), size)
    return out


cdef int inflate_into(libdeflate_decompressor *inflater, const uint8_t *d, Py_ssize_t n,
                      char *out, Py_ssize_t raw_len) noexcept nogil:
    """Inflate a framed value's deflate data to exactly raw_len bytes; libdeflate's status."""
    return libdeflate_deflate_decompress(inflater, d + HEAD, n - HEAD, out, raw_len, NULL)


def unpack_snapshot(bytes value, Py_ssize_t max_raw):
    """``(push time ms, series, [(name, type, text), ...])`` of a stored snapshot.

    Raises ValueError (UnicodeDecodeError for a name) when the value is not a snapshot of this
    format, inflates to more than ``max_raw`` bytes, or its table does not match its texts.
    """
    cdef const uint8_t *d = <const uint8_t *>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), raw_len, pos, text_pos, i
    cdef const uint8_t *r
    cdef Entry e
    cdef int status
    cdef libdeflate_decompressor *inflater
    cdef list families = []
    if n < HEAD or memcmp(d, SNAPSHOT_MAGIC, MAGIC_LEN) != 0:
        raise ValueError("not a telemeter snapshot")
    if not framed(d, n):
        raise ValueError("truncated snapshot, or trailing bytes")
    raw_len = <Py_ssize_t>get_be(d + RAW_LEN_AT, 4)
    if raw_len > max_raw:
        raise ValueError("snapshot larger than the limit")
    raw = PyBytes_FromStringAndSize(NULL, raw_len)
    inflater = libdeflate_alloc_decompressor()
    if inflater == NULL:
        raise MemoryError()
    status = inflate_into(inflater, d, n, PyBytes_AS_STRING(raw), raw_len)
    libdeflate_free_decompressor(inflater)
    if status != 0:
        raise ValueError(f"invalid deflate data (libdeflate status {status})")
    r = <const uint8_t *>PyBytes_AS_STRING(raw)
    text_pos = table_end(r, raw_len)
    if text_pos < 0:
        raise ValueError("the family table does not match the texts")
    pos = COUNT_LEN
    for i in range(<Py_ssize_t>get_be(r, COUNT_LEN)):
        pos = read_entry(r, pos, &e)
        families.append((
            PyUnicode_DecodeUTF8(<const char *>r + e.name, e.name_len, NULL),
            e.kind,
            PyBytes_FromStringAndSize(<const char *>r + text_pos, e.text_len),
        ))
        text_pos += e.text_len
    return get_be(d + PUSH_TIME_AT, 8), get_be(d + SERIES_AT, 4), families


# ---- merging many (/federate) -------------------------------------------------------------------

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
    """One family's text from many snapshots: compressed segments, then a tail of at most a
    chunk not compressed yet. ``bytes(t)`` is all of the text; the buffer protocol
    (``memoryview(t)``) reads the tail alone, in memory given back to the system when it is
    dropped. ``segments`` lists ``(deflate, text length, CRC-32 of the text)``: each segment is
    raw deflate ending with a sync flush and then an empty final block (its last two bytes), so
    it inflates alone (`inflate_segment`) and, without those two bytes, can be spliced into a
    longer stream after a full flush."""

    cdef tm_region region
    cdef readonly list segments
    cdef readonly Py_ssize_t clusters  # how many snapshots' texts are in it
    cdef readonly Py_ssize_t size  # the length of all its text

    def __cinit__(self):
        self.segments = []

    def __dealloc__(self):
        tm_region_free(&self.region)

    cdef int spill(self, object compress) except -1:
        """Compress the tail into a segment (``compress(buffer)``) and empty it."""
        cdef uint32_t crc
        cdef Py_ssize_t n = self.region.len
        if n == 0:
            return 0
        with nogil:
            crc = libdeflate_crc32(0, self.region.data, n)
        self.segments.append((compress(memoryview(self)), n, crc))
        self.region.len = 0
        return 0

    def seal(self, compress):
        """Compress the tail into a segment too: all of the text is then in `segments`."""
        self.spill(compress)

    def __len__(self):
        return self.size

    def __bytes__(self):
        cdef bytes out = PyBytes_FromStringAndSize(NULL, self.size)
        cdef char *p = PyBytes_AS_STRING(out)
        for data, n, _ in self.segments:
            inflate_raw(data, p, n)
            p += <Py_ssize_t>n
        memcpy(p, self.region.data, self.region.len)
        return out

    def __getbuffer__(self, Py_buffer *view, int flags):
        cdef char *data = self.region.data
        if data == NULL:  # an empty tail needs a valid pointer
            data = _EMPTY
        PyBuffer_FillInfo(view, self, data, self.region.len, 1, flags)

    def __releasebuffer__(self, Py_buffer *view):
        pass


cdef int inflate_raw(bytes data, char *out, Py_ssize_t size) except -1:
    """Inflate a whole raw deflate stream to exactly size bytes at out."""
    cdef int status
    cdef const char *src = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef libdeflate_decompressor *inflater = libdeflate_alloc_decompressor()
    if inflater == NULL:
        raise MemoryError()
    with nogil:
        status = libdeflate_deflate_decompress(inflater, src, n, out, size, NULL)
    libdeflate_free_decompressor(inflater)
    if status != 0:
        raise ValueError(f"invalid segment (libdeflate status {status})")
    return 0


def inflate_segment(bytes data, Py_ssize_t size):
    """The text of a `FamilyText` segment (``size`` bytes)."""
    out = PyBytes_FromStringAndSize(NULL, size)
    inflate_raw(data, PyBytes_AS_STRING(out), size)
    return out


cdef struct Copy:
    tm_region *dst
    Py_ssize_t src
    Py_ssize_t size


def raw_length(list values):
    """The text the stored values inflate to, all together (as their heads say)."""
    cdef Py_ssize_t total = 0
    cdef bytes value
    for value in values:
        if framed(<const uint8_t *>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value)):
            total += <Py_ssize_t>get_be(<const uint8_t *>PyBytes_AS_STRING(value) + RAW_LEN_AT, 4)
    return total


def merge_snapshots(list values, int64_t oldest_ms, Py_ssize_t max_raw, Py_ssize_t chunk,
                    object compress):
    """Group the family texts of stored snapshots per family and type (app.snapshot).

    Each value is inflated once by libdeflate into one reused buffer, and each family's text is
    appended to the `FamilyText` of its (family, type); a tail that would grow past ``chunk``
    bytes is first compressed into a segment by ``compress(buffer)`` (raw deflate ending with a
    sync flush, then an empty final block). Returns ``(families, clusters, series,
    corrupt)`` where ``families`` maps a family name, in the order first seen, to a list indexed
    by type of `FamilyText` or None, followed by the type seen first. Snapshots pushed before
    ``oldest_ms`` are skipped; values that do not inflate or parse, or inflate to more than
    ``max_raw`` bytes, are counted in ``corrupt`` and contribute nothing.
    """
    cdef dict families = {}
    cdef list seen = []  # per place in the family table: (name, its entry in families) last seen
    cdef tuple cached
    cdef bytes known
    cdef Py_ssize_t clusters = 0, series = 0, corrupt = 0
    cdef Py_ssize_t n, raw_len, pos, text_pos, i, count, ncopies, copies_cap = 0
    cdef const uint8_t *d
    cdef const uint8_t *r
    cdef char *out
    cdef int status, failed
    cdef Entry e
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
            if not framed(d, n):
                corrupt += 1
                continue
            if <int64_t>get_be(d + PUSH_TIME_AT, 8) < oldest_ms:
                continue
            raw_len = <Py_ssize_t>get_be(d + RAW_LEN_AT, 4)
            if raw_len > max_raw:
                corrupt += 1
                continue
            grow(&scratch, raw_len)
            out = scratch.data
            # The inflating and the copies run without the GIL: merges of several halves of
            # the snapshots can run on several threads (snapshot.merge).
            with nogil:
                status = inflate_into(inflater, d, n, out, raw_len)
            if status != 0:
                corrupt += 1  # bad data, or not exactly raw_len bytes
                continue
            r = <const uint8_t *>out
            text_pos = table_end(r, raw_len)
            if text_pos < 0:
                corrupt += 1
                continue
            clusters += 1
            series += <Py_ssize_t>get_be(d + SERIES_AT, 4)
            count = <Py_ssize_t>get_be(r, COUNT_LEN)
            if count > copies_cap:
                grown = <Copy *>realloc(copies, count * sizeof(Copy))
                if grown == NULL:
                    raise MemoryError()
                copies = grown
                copies_cap = count
            ncopies = 0
            pos = COUNT_LEN
            for i in range(count):
                pos = read_entry(r, pos, &e)
                texts = None
                if i < len(seen):  # the usual case: the family at this place in the last snapshot
                    cached = <tuple>seen[i]
                    known = <bytes>cached[0]
                    if (PyBytes_GET_SIZE(known) == e.name_len
                            and memcmp(PyBytes_AS_STRING(known), r + e.name, e.name_len) == 0):
                        texts = <list>cached[1]
                if texts is None:
                    name = PyUnicode_DecodeUTF8(<const char *>r + e.name, e.name_len, "replace")
                    texts = families.get(name)
                    if texts is None:
                        texts = [None] * (MAX_KIND + 1)
                        texts.append(e.kind)  # last: the type seen first
                        families[name] = texts
                    cached = (PyBytes_FromStringAndSize(<const char *>r + e.name, e.name_len), texts)
                    if i < len(seen):
                        seen[i] = cached
                    else:
                        seen.append(cached)
                text = texts[e.kind]
                if text is None:
                    text = FamilyText()
                    texts[e.kind] = text
                if text.region.len and text.region.len + e.text_len > chunk:
                    # What copies of this snapshot are pending for it come after the spilled text
                    # in any case: the order holds.
                    text.spill(compress)
                text.clusters += 1
                text.size += e.text_len
                copies[ncopies].dst = &text.region
                copies[ncopies].src = text_pos
                copies[ncopies].size = e.text_len
                ncopies += 1
                text_pos += e.text_len
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
