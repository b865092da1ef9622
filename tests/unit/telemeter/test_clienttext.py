"""The client's compiled reading of a text answer against the reference (prometheus_client's
parser, regrouped by `telemeter.textparse`): the same delimited families, or the reference's
answer or error where the compiled reading declines."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemeter import metrics_pb2
from telemeter._clientpass import text_families
from telemeter.delimited import write_families
from telemeter.errors import InvalidPayload
from telemeter.exposition import render_text
from telemeter.textparse import parse_text

names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,8}", fullmatch=True)
label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,6}", fullmatch=True).filter(
    lambda n: not n.startswith("__")
)
values = st.one_of(st.text(max_size=8), st.sampled_from(['a"b', "a\\b", "a\nb", "ü€𝄞", ""]))


@st.composite
def families(draw: st.DrawFn) -> list[metrics_pb2.MetricFamily]:
    out = []
    for name in draw(st.lists(names, max_size=4, unique=True)):
        kind = draw(st.sampled_from([metrics_pb2.UNTYPED, metrics_pb2.GAUGE]))
        family = metrics_pb2.MetricFamily(name=name, type=kind)
        for _ in range(draw(st.integers(0, 3))):
            metric = family.metric.add()
            for label, value in draw(st.dictionaries(label_names, values, max_size=3)).items():
                metric.label.add(name=label, value=value)
            field = metric.untyped if kind == metrics_pb2.UNTYPED else metric.gauge
            field.value = draw(st.floats(allow_nan=True, allow_infinity=True))
            if draw(st.booleans()):
                metric.timestamp_ms = draw(st.integers(0, 10**13))
        out.append(family)
    return out


def _reference(text: bytes) -> bytes | Exception:
    try:
        return write_families(parse_text(text))
    except InvalidPayload as exc:
        return exc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(families())
def test_prometheus_form_takes_the_compiled_reading(source: list[metrics_pb2.MetricFamily]) -> None:
    text = render_text(source).encode()
    fast = text_families(text)
    assert fast is not None, text
    assert fast == _reference(text)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(render_text(draw(families())).encode())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and at < len(data):
            data[at] = draw(st.sampled_from(b' \n#{}",=\\.-+eE0aN\t\xff'))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 5))]
        else:
            data[at:at] = draw(st.sampled_from([b" ", b"\n", b"# HELP x y\n", b",", b"1", b"\\"]))
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_damaged_text_gets_the_reference_answer(text: bytes) -> None:
    fast, reference = text_families(text), _reference(text)
    if isinstance(reference, Exception):
        assert fast is None, f"compiled reading answered where the reference raised {reference!r}"
    elif fast is not None:
        assert fast == reference


@pytest.mark.parametrize(
    "text",
    [
        b"# HELP up The target is up.\n# TYPE up untyped\nup 1\n",
        b"# TYPE c counter\nc_total 1\n",
        b'# TYPE s summary\ns{quantile="0.5"} 1\ns_sum 1\ns_count 1\n',
        b"up 1\n",  # no TYPE line
        b'# TYPE up untyped\nup{a="1",a="2"} 1\n',  # a repeated label: the reference refuses
        b'# TYPE up untyped\nup{a="\\q"} 1\n',  # an escape the reference keeps as written
        b"# TYPE up untyped\nup 1_0\n",
        b"# TYPE up untyped\nup  1\n",
    ],
)
def test_other_forms_are_left_to_the_reference(text: bytes) -> None:
    assert text_families(text) is None
