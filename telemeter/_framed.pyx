# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The snappy framed-stream encoder of the client's uploads (docs/protocol.md section 3), and
the server's walk of a framed stream's chunks and fresh output for its decoders.

The compressor is the greedy one of Go's snappy package (``encodeBlock``: a hash table of 4-byte
sequences, literals and copies), the framing is framing_format.txt's: the stream identifier,
then one chunk per 64 KiB of input, compressed unless that saves less than an eighth (as Go's
writer decides), each with the masked CRC-32C of its input. It lives here rather than in
cramjam for the client alone, whose memory is budgeted: cramjam's module is ~1.6 MiB of RSS for
its many codecs (docs/architecture.md, "The client's footprint"). The tests check that cramjam
and the server's decoder read every stream it writes back to its input.
"""

from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    #define TM_TABLE_BITS 14
    #define TM_MAX_BLOCK 65536

    static uint32_t tm_crc_table[8][256];  /* slicing by 8 */
    static void tm_crc_init(void) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            tm_crc_table[0][i] = c;
        }
        for (int t = 1; t < 8; t++)
            for (int i = 0; i < 256; i++) {
                uint32_t c = tm_crc_table[t - 1][i];
                tm_crc_table[t][i] = tm_crc_table[0][c & 0xFF] ^ (c >> 8);
            }
    }
    /* The masked CRC-32C (Castagnoli) of framing_format.txt section 3. */
    static uint32_t tm_masked_crc(const uint8_t *p, size_t n) {
        uint32_t c = 0xFFFFFFFFu;
        for (; n >= 8; n -= 8, p += 8) {
            uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16
                               | (uint32_t)p[3] << 24);
            c = tm_crc_table[7][lo & 0xFF] ^ tm_crc_table[6][(lo >> 8) & 0xFF]
                ^ tm_crc_table[5][(lo >> 16) & 0xFF] ^ tm_crc_table[4][lo >> 24]
                ^ tm_crc_table[3][p[4]] ^ tm_crc_table[2][p[5]] ^ tm_crc_table[1][p[6]]
                ^ tm_crc_table[0][p[7]];
        }
        for (; n; n--, p++) c = tm_crc_table[0][(c ^ *p) & 0xFF] ^ (c >> 8);
        c = ~c;
        return ((c >> 15) | (c << 17)) + 0xa282ead8u;
    }

    static inline uint32_t tm_load32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
    static inline uint64_t tm_load64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
    static inline uint32_t tm_hash(uint32_t u) {
        return (u * 0x1e35a7bdu) >> (32 - TM_TABLE_BITS);
    }

    static size_t tm_literal(uint8_t *dst, const uint8_t *lit, size_t n) {
        size_t i = 0, m = n - 1;
        if (m < 60) dst[i++] = (uint8_t)(m << 2);
        else if (m < 256) { dst[i++] = 60 << 2; dst[i++] = (uint8_t)m; }
        else { dst[i++] = 61 << 2; dst[i++] = (uint8_t)m; dst[i++] = (uint8_t)(m >> 8); }
        memcpy(dst + i, lit, n);
        return i + n;
    }

    /* A copy of len >= 4 bytes from offset < 65536 back (Go's emitCopy). */
    static size_t tm_copy(uint8_t *dst, size_t offset, size_t len) {
        size_t i = 0;
        while (len >= 68) {
            dst[i++] = 63 << 2 | 2; dst[i++] = (uint8_t)offset; dst[i++] = (uint8_t)(offset >> 8);
            len -= 64;
        }
        if (len > 64) {
            dst[i++] = 59 << 2 | 2; dst[i++] = (uint8_t)offset; dst[i++] = (uint8_t)(offset >> 8);
            len -= 60;
        }
        if (len >= 12 || offset >= 2048) {
            dst[i++] = (uint8_t)((len - 1) << 2 | 2);
            dst[i++] = (uint8_t)offset; dst[i++] = (uint8_t)(offset >> 8);
            return i;
        }
        dst[i++] = (uint8_t)((offset >> 8) << 5 | (len - 4) << 2 | 1);
        dst[i++] = (uint8_t)offset;
        return i;
    }

    /* One snappy block of n <= 65536 bytes into dst (room for 32 + n + n / 6): Go's
       encodeBlock, with its 15-byte input margin and its skip heuristic. */
    static size_t tm_block(uint8_t *dst, const uint8_t *src, size_t n) {
        size_t d = 0, v = n;
        while (v >= 0x80) { dst[d++] = (uint8_t)(v | 0x80); v >>= 7; }
        dst[d++] = (uint8_t)v;
        if (n < 17) {
            if (n) d += tm_literal(dst + d, src, n);
            return d;
        }
        uint16_t table[1 << TM_TABLE_BITS];
        memset(table, 0, sizeof table);
        size_t s_limit = n - 15, next_emit = 0, s = 1;
        uint32_t next_hash = tm_hash(tm_load32(src + s));
        for (;;) {
            size_t skip = 32, next_s = s, candidate;
            for (;;) {
                s = next_s;
                size_t step = skip >> 5;
                next_s = s + step;
                skip += step;
                if (next_s > s_limit) goto remainder;
                candidate = table[next_hash];
                table[next_hash] = (uint16_t)s;
                next_hash = tm_hash(tm_load32(src + next_s));
                if (tm_load32(src + s) == tm_load32(src + candidate)) break;
            }
            d += tm_literal(dst + d, src + next_emit, s - next_emit);
            for (;;) {
                size_t base = s, i = candidate + 4;
                s += 4;
                while (s < n && src[i] == src[s]) { i++; s++; }
                d += tm_copy(dst + d, base - candidate, s - base);
                next_emit = s;
                if (s >= s_limit) goto remainder;
                uint64_t x = tm_load64(src + s - 1);
                table[tm_hash((uint32_t)x)] = (uint16_t)(s - 1);
                uint32_t h = tm_hash((uint32_t)(x >> 8));
                candidate = table[h];
                table[h] = (uint16_t)s;
                if ((uint32_t)(x >> 8) != tm_load32(src + candidate)) {
                    next_hash = tm_hash((uint32_t)(x >> 16));
                    s++;
                    break;
                }
            }
        }
    remainder:
        if (next_emit < n) d += tm_literal(dst + d, src + next_emit, n - next_emit);
        return d;
    }

    /* The framed stream of n bytes into dst (room for tm_framed_bound(n)). */
    static size_t tm_framed_bound(size_t n) {
        size_t chunks = n / TM_MAX_BLOCK + 1;
        return 10 + chunks * (8 + 32) + n + n / 6;
    }
    static size_t tm_framed(uint8_t *dst, const uint8_t *src, size_t n) {
        static const uint8_t id[10] = {0xff, 0x06, 0x00, 0x00, 's', 'N', 'a', 'P', 'p', 'Y'};
        size_t d = 10;
        memcpy(dst, id, 10);
        for (size_t at = 0; at < n; at += TM_MAX_BLOCK) {
            size_t len = n - at < TM_MAX_BLOCK ? n - at : TM_MAX_BLOCK;
            uint32_t crc = tm_masked_crc(src + at, len);
            size_t packed = tm_block(dst + d + 8, src + at, len);
            uint8_t kind = 0x00;
            if (packed >= len - len / 8) {  /* not worth it: the chunk goes as it is */
                memcpy(dst + d + 8, src + at, len);
                packed = len;
                kind = 0x01;
            }
            size_t body = packed + 4;
            dst[d] = kind;
            dst[d + 1] = (uint8_t)body; dst[d + 2] = (uint8_t)(body >> 8);
            dst[d + 3] = (uint8_t)(body >> 16);
            for (int k = 0; k < 4; k++) dst[d + 4 + k] = (uint8_t)(crc >> (8 * k));
            d += 8 + packed;
        }
        return d;
    }
    """
    void tm_crc_init()

    size_t tm_framed_bound(size_t n)
    size_t tm_framed(uint8_t *dst, const uint8_t *src, size_t n)

tm_crc_init()

from telemeter.errors import InvalidPayload, TooLarge

DEF MAX_CHUNK_DATA = 65536  # framing_format.txt 4.2/4.3: the most a data chunk inflates to
STREAM_IDENTIFIER = b"\xff\x06\x00\x00sNaPpY"


cdef Py_ssize_t preamble(const uint8_t *d, Py_ssize_t pos, Py_ssize_t end) except -1:
    """A block's length preamble: a base-128 varint of at most 5 bytes at ``d[pos:end]``."""
    cdef Py_ssize_t value = 0
    cdef int i
    for i in range(5):
        if pos + i >= end:
            raise InvalidPayload("snappy: truncated length preamble")
        value |= <Py_ssize_t>(d[pos + i] & 0x7F) << (7 * i)
        if d[pos + i] < 0x80:
            return value
    raise InvalidPayload("snappy: length preamble longer than 5 bytes")


def block_preamble(bytes data):
    """A block's declared length and the bytes its preamble takes."""
    cdef const uint8_t *d = <const uint8_t *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t value = preamble(d, 0, PyBytes_GET_SIZE(data))
    cdef Py_ssize_t width = 1
    while d[width - 1] >= 0x80:
        width += 1
    return value, width


def framed_size(bytes data, Py_ssize_t max_size):
    """Walk the chunks of a framed stream without inflating; return the declared total size.

    Raises TooLarge as soon as the running total exceeds ``max_size`` and InvalidPayload for any
    structural error (missing identifier, truncated chunk, bad chunk length, unskippable chunk).
    """
    cdef const uint8_t *d = <const uint8_t *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data), pos = 0, total = 0, length, body, end, declared
    cdef uint8_t kind
    if not data.startswith(STREAM_IDENTIFIER):
        raise InvalidPayload("snappy: missing stream identifier")
    while pos < size:
        if pos + 4 > size:
            raise InvalidPayload("snappy: truncated chunk header")
        kind = d[pos]
        length = d[pos + 1] | (d[pos + 2] << 8) | (d[pos + 3] << 16)
        body = pos + 4
        end = body + length
        if end > size:
            raise InvalidPayload("snappy: truncated chunk")
        if kind == 0x00:  # compressed: the CRC-32C, then a block
            if length < 5:
                raise InvalidPayload("snappy: compressed chunk too short")
            declared = preamble(d, body + 4, end)
        elif kind == 0x01:  # uncompressed: the CRC-32C, then the data
            if length < 4:
                raise InvalidPayload("snappy: uncompressed chunk too short")
            declared = length - 4
        elif kind == 0xFF:  # the stream identifier, again
            if length != 6 or memcmp(d + pos, PyBytes_AS_STRING(STREAM_IDENTIFIER), 10) != 0:
                raise InvalidPayload("snappy: bad stream identifier")
            declared = 0
        elif kind >= 0x80:  # padding (0xfe) and the reserved skippable chunks
            declared = 0
        else:
            raise InvalidPayload(f"snappy: reserved unskippable chunk type 0x{kind:02x}")
        if declared > MAX_CHUNK_DATA:
            raise InvalidPayload("snappy: chunk declares more than 65536 bytes")
        total += declared
        if total > max_size:
            raise TooLarge(f"snappy: stream declares more than {max_size} bytes")
        pos = end
    return total


cdef class _Room:
    """A new bytes object's storage as a writable buffer, for a decoder to fill before the bytes
    are handed out (the C API's ``PyBytes_FromStringAndSize(NULL, n)``: no zeroing, no copy)."""
    cdef bytes data

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        PyBuffer_FillInfo(buffer, self, PyBytes_AS_STRING(self.data), PyBytes_GET_SIZE(self.data),
                          0, flags)

    def __releasebuffer__(self, Py_buffer *buffer):
        pass


def inflate_fresh(object inflate, bytes data, Py_ssize_t size):
    """``(out, written)``: ``inflate(data, room)`` into a new bytes of ``size`` bytes. ``out``
    is whole only when ``written == size``: the caller drops it otherwise."""
    cdef _Room room = _Room()
    room.data = PyBytes_FromStringAndSize(NULL, size)
    view = memoryview(room)
    try:
        written = inflate(data, view)
    finally:
        view.release()
    return room.data, written


def encode_framed(bytes data):
    """``data`` as a snappy framed stream."""
    cdef size_t n = PyBytes_GET_SIZE(data)
    cdef uint8_t *out = <uint8_t *>malloc(tm_framed_bound(n))
    if out == NULL:
        raise MemoryError()
    try:
        size = tm_framed(out, <const uint8_t *>PyBytes_AS_STRING(data), n)
        return PyBytes_FromStringAndSize(<char *>out, size)
    finally:
        free(out)
