"""PromQL series selectors, as taken by the server's ``--whitelist`` and the client's ``--match``.

Syntax (a subset of PromQL, what ``promql.ParseMetricSelector`` accepts)::

    name            name{a="b", c!="d",}        {__name__=~"up|foo", job!~`kube.*`}

String literals use double quotes, single quotes (both with Go escape sequences) or backticks (raw).
Regular expressions are fully anchored, as in Prometheus (``^(?:re)$``); they are compiled with
Python's ``re`` in ASCII mode, which agrees with Go's RE2 for the common syntax (RE2-only forms
such as ``\\pL`` or ``[[:alpha:]]`` are not supported). As with ``ParseMetricSelector`` (and
unlike a PromQL query), ``{a!="x"}`` is accepted although every matcher accepts the empty string;
``{}`` and ``name{__name__="other"}`` are refused.

Matching follows the Go telemeter whitelist, not plain Prometheus: a selector is an AND of its
matchers; ``__name__`` is checked against the family name; every other matcher needs the label to
be present on the series (``{a!="x"}`` does not match a series without ``a``). A whitelist is an OR
of selectors, and an empty whitelist matches nothing.
"""

import enum
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from telemeter.errors import InvalidSelector

logger = logging.getLogger(__name__)

NAME_LABEL = "__name__"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_WHITESPACE = " \t\n\r"
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}
# Bound on the per-name decision cache: the family names of one fleet are a few thousand.
_DECISION_CACHE_SIZE = 10_000


class MatchOp(enum.StrEnum):
    """A label matcher operator."""

    EQUAL = "="
    NOT_EQUAL = "!="
    REGEX = "=~"
    NOT_REGEX = "!~"


class Decision(enum.IntEnum):
    """What a whitelist says about a whole family, from its name alone."""

    DROP = 0
    KEEP = 1
    PER_SERIES = 2


@dataclass(frozen=True, slots=True)
class Matcher:
    """One ``name op "value"`` term; regex operators compile ``value`` fully anchored."""

    name: str
    op: MatchOp
    value: str
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op in (MatchOp.REGEX, MatchOp.NOT_REGEX):
            try:
                regex = re.compile(f"(?:{self.value})", re.ASCII)
            except re.error as exc:
                raise InvalidSelector(f"invalid regular expression {self.value!r}: {exc}") from exc
            object.__setattr__(self, "_regex", regex)

    def matches(self, value: str) -> bool:
        """Whether ``value`` satisfies this matcher (regexes must match the whole value)."""
        if self._regex is not None:
            found = self._regex.fullmatch(value) is not None
            return found if self.op is MatchOp.REGEX else not found
        return (value == self.value) == (self.op is MatchOp.EQUAL)

    def __str__(self) -> str:
        return f"{self.name}{self.op.value}{_quote(self.value)}"


@dataclass(frozen=True, slots=True)
class Selector:
    """An AND of matchers; see the module docstring for the whitelist semantics."""

    matchers: tuple[Matcher, ...]
    name_matchers: tuple[Matcher, ...] = field(init=False, repr=False, compare=False)
    label_matchers: tuple[Matcher, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.matchers:
            # An AND of nothing would let every series through.
            raise InvalidSelector("a selector needs at least one matcher")
        names = tuple(m for m in self.matchers if m.name == NAME_LABEL)
        object.__setattr__(self, "name_matchers", names)
        labels = tuple(m for m in self.matchers if m.name != NAME_LABEL)
        object.__setattr__(self, "label_matchers", labels)

    def matches_name(self, name: str) -> bool:
        """Whether every ``__name__`` matcher accepts the family name."""
        return all(m.matches(name) for m in self.name_matchers)

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        """Whether a series (family ``name``, its ``labels``) satisfies every matcher.

        A label counts as present when it is a key of ``labels``, even with an empty value (the Go
        server scans the label list of the protobuf metric the same way).
        """
        return self.matches_name(name) and _labels_match(self.label_matchers, labels)

    def __str__(self) -> str:
        return "{" + ",".join(str(m) for m in self.matchers) + "}"


@dataclass(frozen=True, slots=True)
class _Entry:
    """Cached verdict for one family name."""

    decision: Decision
    # Label matchers of the selectors whose name matchers accept the name (for PER_SERIES).
    candidates: tuple[tuple[Matcher, ...], ...]


class Whitelist:
    """An OR of selectors; empty matches nothing. Decides per family name once, then per series."""

    def __init__(self, selectors: Sequence[Selector]) -> None:
        self.selectors: tuple[Selector, ...] = tuple(selectors)
        self._cache: dict[str, _Entry] = {}
        # The decisions of the cached entries, read directly by the compiled upload pass (a dict
        # lookup instead of two Python calls per family).
        self.decisions: dict[str, Decision] = {}

    @classmethod
    def from_strings(cls, texts: Iterable[str]) -> "Whitelist":
        """Parse every selector text (raises ``InvalidSelector`` on the first bad one)."""
        return cls([parse_selector(text) for text in texts])

    def family_decision(self, name: str) -> Decision:
        """KEEP or DROP every series of family ``name``, or PER_SERIES when labels decide."""
        return self._entry(name).decision

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        """Whether some selector matches the series (see ``Selector.matches``)."""
        entry = self._entry(name)
        if entry.decision is not Decision.PER_SERIES:
            return entry.decision is Decision.KEEP
        return any(_labels_match(matchers, labels) for matchers in entry.candidates)

    def _entry(self, name: str) -> _Entry:
        entry = self._cache.get(name)
        if entry is None:
            entry = self._decide(name)
            if len(self._cache) >= _DECISION_CACHE_SIZE:
                # Evict the oldest entry (dicts keep insertion order); a miss only costs time.
                oldest = next(iter(self._cache))
                del self._cache[oldest], self.decisions[oldest]
            self._cache[name] = entry
            self.decisions[name] = entry.decision
        return entry

    def _decide(self, name: str) -> _Entry:
        candidates = tuple(s.label_matchers for s in self.selectors if s.matches_name(name))
        if not candidates:
            return _Entry(Decision.DROP, ())
        if any(not matchers for matchers in candidates):
            return _Entry(Decision.KEEP, ())
        return _Entry(Decision.PER_SERIES, candidates)


def parse_selector(text: str) -> Selector:
    """Parse one series selector such as ``up{job="x"}``; raise ``InvalidSelector`` if it is bad."""
    return _Parser(text).selector()


def _labels_match(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    for matcher in matchers:
        value = labels.get(matcher.name)
        if value is None or not matcher.matches(value):
            return False
    return True


def _quote(value: str) -> str:
    """Double-quoted PromQL string literal for ``value``."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


class _Parser:
    """Recursive-descent parser over one selector text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def selector(self) -> Selector:
        self._skip_space()
        metric_name = self._take(_METRIC_NAME)
        matchers: list[Matcher] = []
        if metric_name:
            matchers.append(Matcher(NAME_LABEL, MatchOp.EQUAL, metric_name))
        self._skip_space()
        if self._peek() == "{":
            self.pos += 1
            matchers.extend(self._braces(has_name=bool(metric_name)))
            self._skip_space()
        elif not metric_name:
            raise self._error("expected a metric name or '{'")
        if self.pos != len(self.text):
            raise self._error("unexpected text")
        if not matchers:
            raise self._error("a selector needs at least one matcher", at_position=False)
        return Selector(tuple(matchers))

    def _braces(self, *, has_name: bool) -> list[Matcher]:
        matchers: list[Matcher] = []
        while True:
            self._skip_space()
            if self._peek() == "}":
                self.pos += 1
                return matchers
            label = self._take(_LABEL_NAME)
            if not label:
                raise self._error("expected a label name or '}'")
            if label == NAME_LABEL and has_name:
                raise self._error("the metric name must not be set twice")
            self._skip_space()
            op = self._operator()
            self._skip_space()
            value = self._string()
            try:
                matchers.append(Matcher(label, op, value))
            except InvalidSelector as exc:
                raise self._error(str(exc), at_position=False) from exc
            self._skip_space()
            if self._peek() == ",":
                self.pos += 1
            elif self._peek() != "}":
                raise self._error("expected ',' or '}'")

    def _operator(self) -> MatchOp:
        for op in (MatchOp.REGEX, MatchOp.NOT_REGEX, MatchOp.NOT_EQUAL, MatchOp.EQUAL):
            if self.text.startswith(op.value, self.pos):
                self.pos += len(op.value)
                return op
        raise self._error("expected one of =, !=, =~, !~")

    def _string(self) -> str:
        quote = self._peek()
        if quote not in ('"', "'", "`"):
            raise self._error("expected a quoted string")
        start = self.pos
        if quote == "`":
            end = self.text.find(quote, start + 1)
            if end < 0:
                raise self._error("unterminated raw string")
            self.pos = end + 1
            return self.text[start + 1 : end]
        self.pos += 1
        out = bytearray()
        while True:
            char = self._peek()
            if char == "" or char == "\n":
                self.pos = start
                raise self._error("unterminated quoted string")
            self.pos += 1
            if char == quote:
                break
            if char == "\\":
                out += self._escape(quote)
            else:
                out += char.encode()
        try:
            return out.decode()
        except UnicodeDecodeError as exc:
            self.pos = start
            raise self._error("string is not valid UTF-8") from exc

    def _escape(self, quote: str) -> bytes:
        """Decode the escape after a backslash (Go rules, as in Prometheus's strutil.Unquote)."""
        char = self._peek()
        self.pos += 1
        if char in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[char].encode()
        if char == quote:
            return char.encode()
        if char in _HEX_DIGITS:
            digits = self.text[self.pos : self.pos + _HEX_DIGITS[char]]
            if len(digits) != _HEX_DIGITS[char] or not all(
                d in "0123456789abcdefABCDEF" for d in digits
            ):
                raise self._error(f"invalid \\{char} escape")
            self.pos += len(digits)
            code = int(digits, 16)
            if char == "x":
                return bytes([code])  # a raw byte, as in Go
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise self._error(f"invalid code point \\{char}{digits}")
            return chr(code).encode()
        if char in "01234567":
            digits = char + self.text[self.pos : self.pos + 2]
            if len(digits) != 3 or not all(d in "01234567" for d in digits) or int(digits, 8) > 255:
                raise self._error("invalid octal escape")
            self.pos += 2
            return bytes([int(digits, 8)])
        raise self._error(f"unknown escape sequence \\{char}")

    def _take(self, pattern: re.Pattern[str]) -> str:
        found = pattern.match(self.text, self.pos)
        if found is None:
            return ""
        self.pos = found.end()
        return found.group()

    def _peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def _skip_space(self) -> None:
        while self._peek() and self._peek() in _WHITESPACE:
            self.pos += 1

    def _error(self, problem: str, *, at_position: bool = True) -> InvalidSelector:
        where = f" at position {self.pos}" if at_position else ""
        return InvalidSelector(f"invalid selector {self.text!r}: {problem}{where}")
