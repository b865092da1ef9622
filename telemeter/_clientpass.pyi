# Type stub of the client's compiled pass (_clientpass.pyx).
from collections.abc import Mapping
from typing import Any

class Transforms:
    def __init__(self, config: Any) -> None: ...
    def run(
        self,
        data: bytes,
        token_labels: Mapping[str, str],
        now_ms: int,
        max_age_ms: int,
        max_families: int,
    ) -> tuple[bytes, int, int, int] | None: ...

def frames(data: bytes) -> int: ...
def text_families(data: bytes) -> bytes | None: ...
