# Type stub of the compiled upload pass (_fastpass.pyx).
from typing import Any

def process(
    data: bytes,
    config: Any,
    now_ms: int,
    min_timestamp_ms: int,
    result_cls: type[Any],
    write_tail: bytes,
) -> Any: ...
