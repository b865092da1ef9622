"""Launch helpers of the dev harness: start a real `telemeter-server` or the authorization
stand-in on free loopback ports, and write a signing key for them.

Used by the demo stack (:mod:`dev.stack`), the integration and end-to-end tests and ``bench/``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dev.ports import free_ports
from dev.processes import ManagedProcess

KEEP_ALL = '{__name__=~".+"}'


def write_signing_key(path: Path) -> Path:
    """Write a new EC P-256 private key (PEM) for ``--shared-key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


@dataclass
class ServerHandle:
    """A running `telemeter-server` process and its two listeners."""

    process: ManagedProcess
    name: str
    external: str
    internal: str


def start_server(
    *,
    redis_url: str,
    workdir: Path,
    name: str,
    shared_key: Path,
    whitelist: Sequence[str] = (KEEP_ALL,),
    authorize: str | None = None,
    extra_args: Sequence[str] = (),
    wait: bool = True,
) -> ServerHandle:
    """Start a server on two free loopback ports; wait for ``/healthz`` unless ``wait`` is false."""
    ext, internal = free_ports(2)
    argv = [
        sys.executable, "-m", "app.main",
        "--name", name,
        "--redis-url", redis_url,
        "--listen", f"127.0.0.1:{ext}",
        "--listen-internal", f"127.0.0.1:{internal}",
        "--shared-key", str(shared_key),
        *(arg for rule in whitelist for arg in ("--whitelist", rule)),
        *(["--authorize", authorize] if authorize else []),
        *extra_args,
    ]  # fmt: skip
    proc = ManagedProcess(f"server {name}", argv, log_path=workdir / f"server-{name}.log").start()
    handle = ServerHandle(proc, name, f"http://127.0.0.1:{ext}", f"http://127.0.0.1:{internal}")
    if wait:
        try:
            proc.wait_http(handle.external + "/healthz")
            proc.wait_http(handle.internal + "/healthz")
        except BaseException:
            proc.stop()
            raise
    return handle


def start_authorization_server(
    *, workdir: Path, tokens: Sequence[str]
) -> tuple[ManagedProcess, str]:
    """Start the authorization stand-in with the given tokens; returns it and its URL."""
    (port,) = free_ports(1)
    tokens_file = workdir / "tokens.json"
    tokens_file.write_text(json.dumps([{"token": t} for t in tokens]))
    argv = [
        sys.executable, "-m", "dev.authorization_server",
        f"127.0.0.1:{port}", str(tokens_file),
    ]  # fmt: skip
    proc = ManagedProcess("authorization-server", argv, log_path=workdir / "authorization.log")
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(url + "/", status=405)  # the stand-in answers only POST
    except BaseException:
        proc.stop()
        raise
    return proc, url
