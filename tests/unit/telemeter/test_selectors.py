"""PromQL series selectors and the Go telemeter whitelist semantics."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemeter.errors import InvalidSelector
from telemeter.selectors import (
    Decision,
    Matcher,
    MatchOp,
    Selector,
    Whitelist,
    parse_selector,
)

EQ, NE, RE, NRE = MatchOp.EQUAL, MatchOp.NOT_EQUAL, MatchOp.REGEX, MatchOp.NOT_REGEX


def _m(name: str, op: MatchOp, value: str) -> Matcher:
    return Matcher(name, op, value)


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "matchers"),
    [
        ("up", [_m("__name__", EQ, "up")]),
        ("cluster:usage:ratio", [_m("__name__", EQ, "cluster:usage:ratio")]),
        ('{a="b"}', [_m("a", EQ, "b")]),
        ('name{a="b",c!="d"}', [_m("__name__", EQ, "name"), _m("a", EQ, "b"), _m("c", NE, "d")]),
        ('{__name__=~"up|foo"}', [_m("__name__", RE, "up|foo")]),
        ('{a!~"x.*",b="y"}', [_m("a", NRE, "x.*"), _m("b", EQ, "y")]),
        ("x{}", [_m("__name__", EQ, "x")]),
        (
            ' \t x \n{ a = "b" , c =~ `d` , }\r',
            [_m("__name__", EQ, "x"), _m("a", EQ, "b"), _m("c", RE, "d")],
        ),
        ("{a='b'}", [_m("a", EQ, "b")]),
        ("{a=`raw\\n'\"`}", [_m("a", EQ, "raw\\n'\"")]),
        (r'{a="q\"\\\n\t"}', [_m("a", EQ, 'q"\\\n\t')]),
        (r"""{a='it\'s "ok"'}""", [_m("a", EQ, 'it\'s "ok"')]),
        ("{a='say \"hi\"'}", [_m("a", EQ, 'say "hi"')]),
        (r'{a="\x41\101\u00e9\U0001F600\a"}', [_m("a", EQ, "AA\u00e9\U0001f600\a")]),
        (r'{a="\xc3\xa9"}', [_m("a", EQ, "\u00e9")]),  # \x is a byte, as in Go
        ('{a="\u00e9t\u00e9"}', [_m("a", EQ, "\u00e9t\u00e9")]),
        ('{_a_1="1"}', [_m("_a_1", EQ, "1")]),
        # Accepted like ParseMetricSelector does (it skips PromQL's "non-empty matcher" check).
        ('{a!="x"}', [_m("a", NE, "x")]),
        ('{a=~".*"}', [_m("a", RE, ".*")]),
    ],
)
def test_parse_accepts_selector_forms(text: str, matchers: list[Matcher]) -> None:
    assert parse_selector(text) == Selector(tuple(matchers))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "expected a metric name or '{'"),
        ("   ", "expected a metric name or '{'"),
        ("{}", "at least one matcher"),
        ('x{a="b"', "expected ',' or '}'"),
        ('{a="b" c="d"}', "expected ',' or '}'"),
        ('{a="b",,}', "expected a label name"),
        ("{,}", "expected a label name"),
        ('{1a="b"}', "expected a label name"),
        ('{a:b="c"}', "expected one of =, !=, =~, !~"),
        ('{a=="b"}', "expected a quoted string"),
        ("{a=b}", "expected a quoted string"),
        ('{a<"b"}', "expected one of =, !=, =~, !~"),
        ('{a="b}', "unterminated quoted string"),
        ('{a="b\n"}', "unterminated quoted string"),
        ("{a=`b}", "unterminated raw string"),
        (r'{a="\q"}', r"unknown escape sequence \q"),
        (r"{a='\"'}", r"unknown escape sequence \""),
        (r'{a="\x4"}', r"invalid \x escape"),
        (r'{a="\u12G4"}', r"invalid \u escape"),
        (r'{a="\400"}', "invalid octal escape"),
        (r'{a="\xff"}', "not valid UTF-8"),
        (r'{a="\ud800"}', "invalid code point"),
        ('{a=~"("}', "invalid regular expression '('"),
        ('{a!~"[z-a]"}', "invalid regular expression"),
        ('x{__name__="y"}', "metric name must not be set twice"),
        ("1x", "expected a metric name or '{'"),
        ("x y", "unexpected text"),
        ('{a="b"} z', "unexpected text"),
        ("x-y", "unexpected text"),
    ],
)
def test_parse_rejects_with_named_problem(text: str, problem: str) -> None:
    with pytest.raises(InvalidSelector) as info:
        parse_selector(text)
    message = str(info.value)
    assert repr(text) in message
    assert problem in message


def test_selector_without_matchers_is_refused() -> None:
    with pytest.raises(InvalidSelector, match="at least one matcher"):
        Selector(())


def test_bad_regex_in_matcher_is_refused() -> None:
    with pytest.raises(InvalidSelector, match=re.escape("invalid regular expression 'a['")):
        Matcher("x", RE, "a[")


# --- matcher semantics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("matcher", "value", "expected"),
    [
        (_m("a", EQ, "b"), "b", True),
        (_m("a", EQ, "b"), "bb", False),
        (_m("a", NE, "b"), "b", False),
        (_m("a", NE, "b"), "", True),
        (_m("a", RE, "fo"), "foo", False),  # anchored at both ends
        (_m("a", RE, "fo"), "xfo", False),
        (_m("a", RE, "fo+"), "foo", True),
        (_m("a", RE, "a|b"), "b", True),  # the alternation is grouped before anchoring
        (_m("a", RE, "a|b"), "ab", False),
        (_m("a", RE, "x"), "x\n", False),  # Go's $ does not match before a final newline
        (_m("a", RE, r"\d+"), "\u0663", False),  # RE2 classes are ASCII
        (_m("a", NRE, "fo"), "foo", True),
        (_m("a", NRE, "fo.*"), "foo", False),
    ],
)
def test_matcher_matches(matcher: Matcher, value: str, expected: bool) -> None:
    assert matcher.matches(value) is expected


def test_selector_is_immutable_and_hashable() -> None:
    selector = parse_selector('up{a=~"b"}')
    with pytest.raises(AttributeError):
        selector.matchers = ()  # type: ignore[misc]
    assert hash(selector) == hash(parse_selector('up{a=~"b"}'))


# --- whitelist semantics (the Go telemeter server's) ---------------------------------------------

# One family "C" with four series, as in the Go whitelist tests.
_C_SERIES = [
    {"method": "POST", "status": "200"},
    {"method": "GET", "status": "200"},
    {"method": "POST", "status": "500"},
    {"method": "DELETE", "status": "200"},
]


@pytest.mark.parametrize(
    ("rules", "kept"),
    [
        (['{__name__="C"}'], [0, 1, 2, 3]),
        (['{__name__="A"}'], []),
        (['{method="PUT"}'], []),
        (['{__name__="C",method="GET"}'], [1]),
        (['{status="200"}'], [0, 1, 3]),
        (['{method="GET"}', '{status="500"}'], [1, 2]),
        (['{method="GET",status="400"}', '{status="500"}'], [2]),
        (['{method="POST",status="200"}', '{method="DELETE"}'], [0, 3]),
        ([], []),
    ],
)
def test_whitelist_selects_series_like_go(rules: list[str], kept: list[int]) -> None:
    whitelist = Whitelist.from_strings(rules)
    assert [i for i, labels in enumerate(_C_SERIES) if whitelist.matches("C", labels)] == kept


def test_matcher_needs_the_label_present() -> None:
    whitelist = Whitelist.from_strings(['{a!="x"}'])
    assert not whitelist.matches("m", {})
    assert not whitelist.matches("m", {"b": "y"})
    assert whitelist.matches("m", {"a": "y"})
    # A label present with an empty value counts as present (Go scans the label list).
    assert whitelist.matches("m", {"a": ""})
    assert not whitelist.matches("m", {"a": "x"})


def test_name_matcher_checks_the_family_name() -> None:
    whitelist = Whitelist.from_strings(['{__name__=~"up|foo"}'])
    assert whitelist.matches("up", {})
    assert whitelist.matches("foo", {"a": "b"})
    assert not whitelist.matches("upx", {"__name__": "up"})


def test_empty_whitelist_matches_nothing() -> None:
    whitelist = Whitelist([])
    assert not whitelist.matches("up", {"a": "b"})
    assert whitelist.family_decision("up") is Decision.DROP


@pytest.mark.parametrize(
    ("rules", "name", "decision"),
    [
        (["up"], "up", Decision.KEEP),
        (["up"], "down", Decision.DROP),
        (['{__name__=~"u.*"}'], "up", Decision.KEEP),
        (['{__name__=~"u.*",__name__!="us"}'], "us", Decision.DROP),
        (['up{job="x"}'], "up", Decision.PER_SERIES),
        (['up{job="x"}'], "down", Decision.DROP),
        (['{job="x"}'], "anything", Decision.PER_SERIES),
        (['up{job="x"}', "up"], "up", Decision.KEEP),
        (['up{job="x"}', "down"], "down", Decision.KEEP),
        (['up{job="x"}', '{__name__="a",b="c"}'], "a", Decision.PER_SERIES),
        (['up{job="x"}', '{__name__="a",b="c"}'], "z", Decision.DROP),
    ],
)
def test_family_decision(rules: list[str], name: str, decision: Decision) -> None:
    assert Whitelist.from_strings(rules).family_decision(name) is decision


def test_decision_values_are_stable() -> None:
    # The compiled upload pass relies on these numbers.
    assert (Decision.DROP, Decision.KEEP, Decision.PER_SERIES) == (0, 1, 2)


def test_decision_cache_is_bounded() -> None:
    whitelist = Whitelist.from_strings(['{__name__=~"m1.*"}'])
    for i in range(10_050):
        whitelist.family_decision(f"m{i}")
    assert len(whitelist._cache) == 10_000
    # The decisions the compiled pass reads are those of the cached entries, and only those.
    assert whitelist.decisions == {n: e.decision for n, e in whitelist._cache.items()}
    assert "m0" not in whitelist.decisions and whitelist.decisions["m10049"] is Decision.KEEP
    # Evicted names are still decided correctly.
    assert whitelist.family_decision("m1") is Decision.KEEP
    assert whitelist.family_decision("m2") is Decision.DROP


def test_from_strings_reports_the_bad_rule() -> None:
    with pytest.raises(InvalidSelector, match=re.escape("'{a=~\"(\"}'")):
        Whitelist.from_strings(["up", '{a=~"("}'])


# --- properties ----------------------------------------------------------------------------------

_NAMES = st.sampled_from(["up", "foo", "foo_bar", "x", ""])
_LABEL_NAMES = st.sampled_from(["__name__", "a", "b"])
_VALUES = st.sampled_from(["", "up", "foo", "x", "y", "fo.*", "up|x", ".+", ".*", "[a-z]+"])
_matchers = st.builds(Matcher, _LABEL_NAMES, st.sampled_from(list(MatchOp)), _VALUES)
_selectors = st.lists(_matchers, min_size=1, max_size=3).map(lambda ms: Selector(tuple(ms)))
_labels = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["", "x", "y", "up"]))


def _go_match(name: str, labels: dict[str, str], selector: Selector) -> bool:
    """The Go whitelist's match(): every matcher is met by the name or by some label pair."""
    for matcher in selector.matchers:
        if matcher.name == "__name__" and matcher.matches(name):
            continue
        if any(k == matcher.name and matcher.matches(v) for k, v in labels.items()):
            continue
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.lists(_selectors, max_size=3), _NAMES, st.lists(_labels, min_size=1, max_size=4))
def test_family_decision_agrees_with_matches(
    selectors: list[Selector], name: str, series: list[dict[str, str]]
) -> None:
    whitelist = Whitelist(selectors)
    decision = whitelist.family_decision(name)
    for labels in series:
        matched = whitelist.matches(name, labels)
        assert matched == any(_go_match(name, labels, s) for s in selectors)
        if decision is Decision.KEEP:
            assert matched
        elif decision is Decision.DROP:
            assert not matched


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            Matcher,
            st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,5}", fullmatch=True).filter(
                lambda n: n != "__name__"
            ),
            st.sampled_from([EQ, NE]),
            st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_str_round_trips_through_parse(matchers: list[Matcher]) -> None:
    selector = Selector(tuple(matchers))
    assert parse_selector(str(selector)) == selector
