"""Go duration syntax: parse_duration and format_duration."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemeter.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("4m30s", 270.0),
        ("1h", 3600.0),
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        ("2h45m", 9900.0),
        ("10s", 10.0),
        ("0", 0.0),
        ("-0", 0.0),
        ("+5m", 300.0),
        ("-1.5s", -1.5),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("1ns", 1e-9),
        ("2us", 2e-6),
        ("2\u00b5s", 2e-6),
        ("2\u03bcs", 2e-6),
        ("1h2m3.004s", 3723.004),
        ("1s1s", 2.0),
        ("0.1s", 0.1),
    ],
)
def test_parse_accepts_go_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid duration ''"),
        ("5", "missing unit in duration '5'"),
        ("1d", "unknown unit 'd' in duration '1d'"),
        ("1 s", "unknown unit ' s' in duration '1 s'"),
        ("s", "invalid duration 's'"),
        (".s", "invalid duration '.s'"),
        ("-", "invalid duration '-'"),
        ("1h1", "missing unit in duration '1h1'"),
        ("1.5.3s", "missing unit in duration '1.5.3s'"),
        ("3000000h", "out of range"),
    ],
)
def test_parse_rejects_with_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (270.0, "4m30s"),
        (3600.0, "1h0m0s"),
        (9900.0, "2h45m0s"),
        (10.0, "10s"),
        (1.5, "1.5s"),
        (0.3, "300ms"),
        (0.0015, "1.5ms"),
        (2e-6, "2\u00b5s"),
        (5e-9, "5ns"),
        (0.0, "0s"),
        (-90.0, "-1m30s"),
        (3723.004, "1h2m3.004s"),
    ],
)
def test_format_matches_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_then_parse_round_trips(nanos: int) -> None:
    seconds = nanos / 1e9
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-12, abs=1e-9)
