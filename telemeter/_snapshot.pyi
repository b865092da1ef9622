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
    values: list[bytes],
    oldest_ms: int,
    max_raw: int,
    chunk: int,
    compress: Callable[[memoryview], bytes],
) -> tuple[dict[str, list[Any]], int, int, int]: ...
def inflate_segment(data: bytes, size: int) -> bytes: ...
def raw_length(values: list[bytes]) -> int: ...

class FamilyText:
    clusters: int
    size: int
    segments: list[tuple[bytes, int, int]]
    def seal(self, compress: Callable[[memoryview], bytes]) -> None: ...
    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    def __buffer__(self, flags: int) -> memoryview: ...

def crc32_combine(crc1: int, crc2: int, len2: int) -> int: ...
