"""Go-style flag names and help defaults, shared by the server's and the client's command lines."""

from __future__ import annotations

from pathlib import Path

from telemeter.flags import flag_name, with_default


def test_a_field_name_gives_the_flag() -> None:
    assert flag_name("limit_bytes") == "--limit-bytes"
    assert flag_name("ttl") == "--ttl"


def test_help_ends_with_the_default_as_go_shows_it() -> None:
    assert with_default("time between pushes", 270.0, duration=True) == (
        "time between pushes (default 4m30s)"
    )
    assert with_default("largest body", 204800) == "largest body (default 204800)"
    assert with_default("verbosity", 0) == "verbosity (default 0)"
    assert with_default("renames", ("A=a", "B=b")) == "renames (default A=a,B=b)"
    assert with_default("key", Path("/k.pem")) == "key (default /k.pem)"


def test_unset_defaults_are_not_shown() -> None:
    unset: list[object] = [None, "", [], (), False]
    assert all(with_default("text", default) == "text" for default in unset)
