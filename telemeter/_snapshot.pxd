# The layout of a stored snapshot (docs/architecture.md, D4): the one place that says where each
# field is. Its writer and readers are in _snapshot.pyx; app/snapshot.py goes through them.
#
#     MAGIC | push time ms (u64) | series (u32) | raw length (u32) | deflate length (u32)
#           | raw deflate of RAW
#     RAW = family count (u16) | per family: type (u8) | name length (u16) | name
#           | text length (u32) | then the family texts, in table order
#
# Integers are big-endian. The format is that of the stored values of a running fleet: a change
# here makes them unreadable (tests/unit/app/test_snapshot.py builds one by hand).

cdef extern from *:
    """
    #define TM_SNAPSHOT_MAGIC "TM3"
    """
    const char *SNAPSHOT_MAGIC "TM_SNAPSHOT_MAGIC"

cdef enum:
    MAGIC_LEN = 3
    PUSH_TIME_AT = 3  # u64
    SERIES_AT = 11  # u32
    RAW_LEN_AT = 15  # u32
    DEFLATE_LEN_AT = 19  # u32
    HEAD = 23  # where the deflate data starts
    # In RAW:
    COUNT_LEN = 2  # the family count (u16), at 0; the table follows
    ENTRY_KIND_AT = 0  # u8, from the start of a table entry
    ENTRY_NAME_LEN_AT = 1  # u16
    ENTRY_NAME_AT = 3  # the name, then the text length (u32)
    TEXT_LEN_LEN = 4
    MAX_FAMILIES = 0xFFFF
    MAX_NAME_LEN = 0xFFFF
    MAX_KIND = 5  # the MetricType values (GAUGE_HISTOGRAM)


cdef struct Entry:  # one entry of the family table
    int kind
    Py_ssize_t name  # offset of the name in RAW
    Py_ssize_t name_len
    Py_ssize_t text_len
