"""Whether the compiled modules were built from the sources in the tree.

A worktree keeps the ``.so`` files of its last build: after a pull or a checkout that changed a
``.pyx`` or ``.pxd``, they are older than their sources until rebuilt, and a benchmark run then
measures other code than the tree's (this happened: docs/benchmarks.md, 2026-12-03 evening).
"""

from __future__ import annotations

import re
from pathlib import Path

TELEMETER = Path(__file__).resolve().parents[1] / "telemeter"
_CIMPORT = re.compile(r"^\s*(?:from\s+telemeter\.(\w+)\s+cimport|cimport\s+telemeter\.(\w+))", re.M)


def _sources(root: Path, name: str, seen: set[Path]) -> set[Path]:
    """A module's ``.pyx`` and ``.pxd`` and every ``.pxd`` they cimport, transitively."""
    for suffix in (".pyx", ".pxd"):
        path = root / f"{name}{suffix}"
        if path.exists() and path not in seen:
            seen.add(path)
            for match in _CIMPORT.finditer(path.read_text()):
                _sources(root, match.group(1) or match.group(2), seen)
    return seen


def stale_extensions(root: Path = TELEMETER) -> list[str]:
    """The compiled modules of ``root`` older than a source they are built from."""
    stale = []
    for built in root.glob("_*.so"):  # _fastpass.cpython-311-x86_64-linux-gnu.so
        name = built.name.split(".", 1)[0]
        mtime = built.stat().st_mtime
        if any(p.stat().st_mtime > mtime for p in _sources(root, name, set())):
            stale.append(name)
    return sorted(stale)
