# The hashes of the upload pass's duplicate-series check (docs/protocol.md, section 3):
# inline C, compiled into the module that cimports them.
from libc.stdint cimport uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    /* The hash of some bytes, eight at a time, the last word overlapping the one before. A
       label's hash is its value's seeded with its name's; a series hashes as the mix of the sum
       over its labels, seeded with its metric name's, so the same labels in another order hash
       the same. */
    static inline uint64_t tm_mix(uint64_t h, uint64_t w) {
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
        return h ^ (h >> 31);
    }
    static inline uint64_t tm_item_hash(const char *s, Py_ssize_t n, uint64_t seed) {
        uint64_t h = seed ^ (uint64_t)n, w = 0;
        if (n >= 8) {
            for (Py_ssize_t i = 0; i + 8 < n; i += 8) { memcpy(&w, s + i, 8); h = tm_mix(h, w); }
            memcpy(&w, s + n - 8, 8);
        } else {
            for (Py_ssize_t i = 0; i < n; i++) w |= (uint64_t)(unsigned char)s[i] << (8 * i);
        }
        h = tm_mix(h, w) * 0xFF51AFD7ED558CCDULL;
        return h ^ (h >> 33);
    }
    /* The same for a label value of the upload (n >= 1): a short one is read as the word that
       ends with it, shifted. At least seven bytes come before any value in the upload (the
       family's length and field keys, the label's key and length, the value's key and length),
       so that word is inside it. */
    static inline uint64_t tm_value_hash(const char *s, Py_ssize_t n, uint64_t seed) {
        uint64_t w;
        if (n >= 8) return tm_item_hash(s, n, seed);
        memcpy(&w, s + n - 8, 8);
        w >>= 8 * (8 - n);
        w = tm_mix(seed ^ (uint64_t)n, w) * 0xFF51AFD7ED558CCDULL;
        return w ^ (w >> 33);
    }
    """
    uint64_t tm_item_hash(const char *s, Py_ssize_t n, uint64_t seed)
    uint64_t tm_value_hash(const char *s, Py_ssize_t n, uint64_t seed)
