"""Go ``time.Duration`` text: parse and format, for flags such as ``--interval 4m30s``.

The Go programs take their durations through ``time.ParseDuration``, so ours accept exactly that
syntax (a sign, then one or more ``<number><unit>`` parts; a bare ``0`` is the only unitless value)
and print durations the way ``time.Duration.String`` does, so logs and ``--help`` read the same.
"""

import logging
import re

logger = logging.getLogger(__name__)

_NANOS_PER_UNIT: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # MICRO SIGN, as Go prints it
    "\u03bcs": 1_000,  # GREEK SMALL LETTER MU, also accepted by Go
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}

# One "<number><unit>" part. Go allows "5.", ".5" but not "." alone; the unit is any run of
# characters that are neither digits nor '.', so unknown units are reported by name.
_PART = re.compile(r"(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?(?P<unit>[^0-9.]*)")

# Go's Duration is an int64 of nanoseconds: about 292 years.
_MAX_NANOS = 2**63 - 1


def parse_duration(text: str) -> float:
    """Parse a Go duration such as ``"4m30s"``, ``"1.5h"`` or ``"-300ms"`` into seconds.

    Raises ``ValueError`` (message quoting the input, as Go's does) for an empty string, a number
    without a unit (other than ``"0"``), an unknown unit such as ``d``, or an out-of-range value.
    """
    rest = text
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    total_nanos = 0
    while rest:
        part = _PART.match(rest)
        if part is None:  # pragma: no cover - the pattern matches the empty string
            raise ValueError(f"invalid duration {text!r}")
        whole, frac, unit = part.group("int"), part.group("frac") or "", part.group("unit")
        if not whole and not frac:
            raise ValueError(f"invalid duration {text!r}")
        if not unit:
            raise ValueError(f"missing unit in duration {text!r}")
        if unit not in _NANOS_PER_UNIT:
            valid = ", ".join(_NANOS_PER_UNIT)
            raise ValueError(f"unknown unit {unit!r} in duration {text!r} (valid units: {valid})")
        scale = _NANOS_PER_UNIT[unit]
        # Integer arithmetic keeps "0.1s" exact to the nanosecond, like Go; Go truncates the
        # fraction beyond nanosecond precision, and so do we.
        nanos = int(whole or "0") * scale
        if frac:
            nanos += int(frac) * scale // 10 ** len(frac)
        total_nanos += nanos
        if total_nanos > _MAX_NANOS:
            raise ValueError(f"invalid duration {text!r}: out of range")
        rest = rest[part.end() :]
    seconds = total_nanos / 1e9
    return -seconds if negative else seconds


def format_duration(seconds: float) -> str:
    """Format seconds like Go's ``time.Duration.String``: ``"4m30s"``, ``"1h0m0s"``, ``"300ms"``.

    The value is rounded to whole nanoseconds first (Go's resolution).
    """
    nanos = round(seconds * 1e9)
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos == 0:
        return "0s"
    if nanos < 1_000_000_000:
        # Below one second Go switches to the largest unit that keeps an integer part.
        if nanos < 1_000:
            return f"{sign}{nanos}ns"
        if nanos < 1_000_000:
            return f"{sign}{_with_fraction(nanos, digits=3)}\u00b5s"
        return f"{sign}{_with_fraction(nanos, digits=6)}ms"
    minutes, second_nanos = divmod(nanos, 60 * 1_000_000_000)
    secs = _with_fraction(second_nanos, digits=9)
    if minutes == 0:
        return f"{sign}{secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours == 0:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{hours}h{minutes}m{secs}s"


def _with_fraction(value: int, *, digits: int) -> str:
    """``value / 10**digits`` as decimal text without trailing zeros (Go's ``fmtFrac``)."""
    whole, frac = divmod(value, 10**digits)
    frac_text = f"{frac:0{digits}d}".rstrip("0")
    return f"{whole}.{frac_text}" if frac_text else str(whole)
