"""The Go Telemeter of 2019, built offline: the peer the benchmarks and interoperability tests run.

The build script (:data:`GO_BUILD`, outside the repository) puts the four binaries (server,
client, authorization server, benchmark) in ``.upstream/bin`` (about a minute the first time,
nothing after).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GO_BIN = ROOT / ".upstream" / "bin"
GO_BUILD = ROOT / ".." / "shared" / "upstream" / "build.sh"


def go_binaries() -> Path:
    """The folder of the Go 2019 binaries, built on first use (raises when the build fails)."""
    if not (GO_BIN / "telemeter-server").exists() or not (GO_BIN / "telemeter-client").exists():
        subprocess.run([str(GO_BUILD.resolve()), str(GO_BIN)], check=True)
    return GO_BIN
