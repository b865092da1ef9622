# Type stub of the compiled module (_fastpass.pyx).
from typing import Any

def process(
    data: bytes, config: Any, now_ms: int, min_timestamp_ms: int, result_cls: type[Any]
) -> Any: ...
def crc32_combine(crc1: int, crc2: int, len2: int) -> int: ...
def merge_snapshots(
    values: list[bytes], oldest_ms: int, magic: bytes
) -> tuple[dict[str, list[Any]], int, int, int, int]: ...
