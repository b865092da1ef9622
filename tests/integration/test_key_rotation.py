"""Signing key rotation with real servers (docs/operations.md, "Rotating the signing key"): a token
of the old key is accepted by a server that signs with the new key and lists the old one as
``--verify-key``, and refused (401) once the old key is removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization

from app.tokens import load_signing_key, thumbprint
from dev.launch import ServerHandle, start_server, write_signing_key
from tests.conftest import RedisClusterHandle
from tests.support import RING_ARGS, authorize, encode_upload, new_id, post_upload, valid_families

pytestmark = pytest.mark.integration

Specs = dict[str, tuple[Path, Sequence[str]]]  # server name -> (signing key, extra flags)
Start = Callable[[Specs], list[ServerHandle]]


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The old signing key, its public half alone, and the new signing key."""
    old = write_signing_key(tmp_path / "old.pem")
    old_public = tmp_path / "old.pub.pem"
    old_public.write_bytes(
        load_signing_key(old.read_bytes()).public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return old, old_public, write_signing_key(tmp_path / "new.pem")


@pytest.fixture
def start(redis_cluster: RedisClusterHandle, tmp_path: Path) -> Iterator[Start]:
    """Start servers together and wait until they answer; all stopped at teardown."""
    started: list[ServerHandle] = []

    def run(specs: Specs) -> list[ServerHandle]:
        handles = [
            start_server(
                redis_url=redis_cluster.url,
                workdir=tmp_path,
                name=name,
                shared_key=key,
                extra_args=[*RING_ARGS, "--ratelimit", "0s", *args],
                wait=False,
            )
            for name, (key, args) in specs.items()
        ]
        started.extend(handles)
        for handle in handles:
            handle.process.wait_http(handle.external + "/healthz")
        return handles

    yield run
    for handle in started:
        handle.process.stop()


def _upload_status(server: ServerHandle, token: str, cluster_id: str) -> int:
    return post_upload(server, token, encode_upload(valid_families(cluster_id))).status_code


def test_old_token_accepted_during_rotation_and_refused_after(
    start: Start, keys: tuple[Path, Path, Path]
) -> None:
    old, old_public, new = keys
    server_a, server_b = start(
        {
            "rot-a": (old, []),  # not yet rotated
            "rot-b": (new, ["--verify-key", str(old_public)]),  # step 2 of the rotation
        }
    )
    cluster_id = new_id("rot")
    old_token = authorize(server_a, cluster_id)
    old_kid = thumbprint(load_signing_key(old.read_bytes()))
    assert pyjwt.get_unverified_header(old_token) == {"alg": "ES256", "kid": old_kid}
    assert _upload_status(server_a, old_token, cluster_id) == 200
    assert _upload_status(server_b, old_token, cluster_id) == 200
    new_token = authorize(server_b, cluster_id)
    assert pyjwt.get_unverified_header(new_token)["kid"] == thumbprint(
        load_signing_key(new.read_bytes())
    )
    assert _upload_status(server_b, new_token, cluster_id) == 200
    # A lacks the new key as --verify-key (step 1 skipped): it refuses B's token.
    assert _upload_status(server_a, new_token, cluster_id) == 401

    # Step 3: B restarted without the old key.
    server_b.process.stop()
    (server_b,) = start({"rot-b2": (new, [])})
    assert _upload_status(server_b, old_token, cluster_id) == 401
    assert _upload_status(server_b, new_token, cluster_id) == 200
    # The client re-authorizes on 401 and gets a token of the new key.
    assert _upload_status(server_b, authorize(server_b, cluster_id), cluster_id) == 200
