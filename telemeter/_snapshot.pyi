# Type stub of the compiled snapshot module (_snapshot.pyx; the layout is in _snapshot.pxd).
from collections.abc import Callable
from typing import Any

MAGIC: bytes

def pack_snapshot(
    push_time_ms: int,
    series: int,
    families: list[tuple[str, int, bytes]],
    compress: Callable[[bytes], bytes],
) -> bytes: ...
def unpack_snapshot(
    value: bytes, max_raw: int
) -> tuple[int, int, list[tuple[str, int, bytes]]]: ...
def merge_snapshots(
    values: list[bytes], oldest_ms: int, max_raw: int
) -> tuple[dict[str, list[Any]], int, int, int]: ...

class FamilyText:
    clusters: int
    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    def __buffer__(self, flags: int) -> memoryview: ...

def crc32_combine(crc1: int, crc2: int, len2: int) -> int: ...
