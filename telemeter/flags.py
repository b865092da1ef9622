"""Go-style command lines generated from settings models (the server's and the client's).

A field ``limit_bytes`` is the flag ``--limit-bytes``; its help ends in `` (default …)``, durations
as Go prints them (``4m30s``) and lists comma-joined; an unset default (none, empty, false) is not
shown. Pure and pydantic-free: the client uses it too (docs/architecture.md, "Conventions").
"""

from __future__ import annotations

from collections.abc import Sequence

from telemeter.durations import format_duration

__all__ = ["flag_name", "with_default"]


def flag_name(name: str) -> str:
    """The flag of a field: ``--`` plus its name with ``-`` for ``_``."""
    return "--" + name.replace("_", "-")


def with_default(help_text: str, default: object, *, duration: bool = False) -> str:
    """``help_text`` followed by `` (default …)`` unless the default is unset."""
    if default is None or default is False or default in ("", [], ()):
        return help_text
    if duration:
        assert isinstance(default, int | float)
        shown = format_duration(default)
    elif isinstance(default, Sequence) and not isinstance(default, str):
        shown = ",".join(str(item) for item in default)
    else:
        shown = str(default)
    return f"{help_text} (default {shown})"
