# The growable buffer and the text writers shared by the compiled modules: the C text helpers
# and the hot writers are here (inline, compiled into each module that uses them), the others
# in _buffer.pyx. `telemeter.exposition` holds the rendering rules they follow byte for byte.
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy

cdef extern from *:
    """
    #include <math.h>
    #include <stdio.h>
    #include <string.h>

    /* Go's strconv.FormatFloat(v, 'g', -1, 64) for a finite, non-zero v: shortest round-trip
       digits (taken from CPython's repr), exponent form when the exponent is < -4 or >= 6. */
    static inline int tm_format_double(double v, char *out) {
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
    static inline Py_ssize_t tm_find_escape(const char *s, Py_ssize_t n) {
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            uint64_t w; memcpy(&w, s + i, 8);
            if (tm_word_escapes(w)) break;
        }
        for (; i < n; i++) if (s[i] == 92 || s[i] == 34 || s[i] == 10) return i;
        return n;
    }

    /* memcpy for the short strings of labels: fixed-size moves (overlapping at the ends) instead
       of a library call per name and value; never touches a byte outside [0, n). */
    static inline void tm_copy(char *d, const char *s, size_t n) {
        uint64_t a, b, c, e;
        uint32_t x, y;
        if (n > 32) { memcpy(d, s, n); return; }
        if (n >= 16) {
            memcpy(&a, s, 8); memcpy(&b, s + 8, 8); memcpy(&c, s + n - 16, 8); memcpy(&e, s + n - 8, 8);
            memcpy(d, &a, 8); memcpy(d + 8, &b, 8); memcpy(d + n - 16, &c, 8); memcpy(d + n - 8, &e, 8);
        } else if (n >= 8) {
            memcpy(&a, s, 8); memcpy(&b, s + n - 8, 8); memcpy(d, &a, 8); memcpy(d + n - 8, &b, 8);
        } else if (n >= 4) {
            memcpy(&x, s, 4); memcpy(&y, s + n - 4, 4); memcpy(d, &x, 4); memcpy(d + n - 4, &y, 4);
        } else {
            for (size_t i = 0; i < n; i++) d[i] = s[i];
        }
    }

    /* Strict UTF-8 validation (no overlongs, no surrogates, at most U+10FFFF). */
    static inline int tm_valid_utf8(const unsigned char *s, Py_ssize_t n) {
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
    static inline int tm_scan_value(const unsigned char *s, Py_ssize_t n) {
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
    int tm_valid_utf8(const unsigned char *s, Py_ssize_t n)
    Py_ssize_t tm_find_escape(const char *s, Py_ssize_t n)
    void tm_copy(char *d, const char *s, size_t n) nogil
    double fabs(double)
    int isnan(double)
    int isinf(double)
    int signbit(double)
    int snprintf(char *, size_t, const char *, ...)


cdef struct Buf:
    char *data
    Py_ssize_t len
    Py_ssize_t cap


cdef int grow(Buf *b, Py_ssize_t extra) except -1


cdef inline int put(Buf *b, const char *s, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        grow(b, n)
    tm_copy(b.data + b.len, s, n)  # names and values: mostly short
    b.len += n
    return 0


cdef int put_uint(Buf *b, uint64_t v) except -1
cdef int put_count(Buf *b, uint64_t integer, double floating) except -1  # the float when > 0
cdef int put_escaped(Buf *b, const char *s, Py_ssize_t n) except -1  # a label value, escaped


cdef inline int put_value(Buf *b, double v) except -1:
    """A sample value, as Go's strconv.FormatFloat(v, 'g', -1, 64)."""
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


cdef inline int scan_value(const unsigned char *s, Py_ssize_t n) noexcept:
    """A label value in one scan: 1 ASCII with nothing to escape, 0 valid UTF-8 to escape or
    beyond ASCII, -1 not valid UTF-8."""
    return tm_scan_value(s, n)


cdef inline int varint_size(uint64_t v) noexcept:
    """The bytes of ``v`` as a protobuf varint."""
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline int put_varint(Buf *b, uint64_t v) except -1:
    """``v`` as a protobuf varint."""
    cdef char tmp[10]
    cdef int n = 0
    while v >= 0x80:
        tmp[n] = <char>((v & 0x7F) | 0x80)
        v >>= 7
        n += 1
    tmp[n] = <char>v
    return put(b, tmp, n + 1)


cdef inline char *varint_at(char *p, uint64_t v) noexcept:
    """``v`` as a protobuf varint at ``p``, in room the caller has reserved (10 bytes at most);
    returns the end. Through a local pointer: a store through ``b.data`` would make the
    compiler load ``b.data`` and ``b.len`` again after every byte."""
    while v >= 0x80:
        p[0] = <char>((v & 0x7F) | 0x80)
        p += 1
        v >>= 7
    p[0] = <char>v
    return p + 1


cdef inline void put_varint_raw(Buf *b, uint64_t v) noexcept:
    """``v`` as a protobuf varint, into room the caller has reserved (10 bytes at most)."""
    b.len = varint_at(b.data + b.len, v) - b.data
