"""`dev.compiled.stale_extensions`: a compiled module older than its .pyx, or than a .pxd it
cimports (directly or through another .pxd), is stale; others are not."""

from __future__ import annotations

import os
from pathlib import Path

from dev.compiled import TELEMETER, stale_extensions


def _write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_older_than_a_source_is_stale(tmp_path: Path) -> None:
    _write(tmp_path / "_buffer.pxd", "cdef int put()\n", 100)
    _write(tmp_path / "_rwpass.pxd", "from telemeter._buffer cimport put\n", 100)
    _write(tmp_path / "_fastpass.pyx", "from telemeter._rwpass cimport rw\n", 100)
    _write(tmp_path / "_framed.pyx", "x = 1\n", 100)
    for name in ("_fastpass", "_framed"):
        _write(tmp_path / f"{name}.cpython-311-x86_64-linux-gnu.so", "", 200)
    assert stale_extensions(tmp_path) == []
    os.utime(tmp_path / "_buffer.pxd", (300, 300))  # cimported through _rwpass.pxd
    assert stale_extensions(tmp_path) == ["_fastpass"]
    os.utime(tmp_path / "_framed.pyx", (300, 300))
    assert stale_extensions(tmp_path) == ["_fastpass", "_framed"]


def test_the_tree_is_built_from_its_sources() -> None:
    # make test builds the modules first (make bootstrap), so none is stale here.
    assert list(TELEMETER.glob("_fastpass*.so")), "no compiled upload pass in the tree"
    assert stale_extensions() == []
