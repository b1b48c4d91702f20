"""Fuzz (CI fuzz job, `pytest -m fuzz`): the annotation readers and the protocol parser on arbitrary
input. Readers return valid Moments or raise AnnotationError naming the file (with skip_malformed, a
line format never raises for a bad row); the parser never raises and reports what it could not read."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsr_model.data import AnnotationError, Moment, read_moments
from vsr_model.protocol import format_response, parse_response

pytestmark = pytest.mark.fuzz

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# JSON values of every kind, nested a little: what a damaged or foreign annotation file holds.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip

FIELDS = {
    "fig": ["video", "time", "desc_id", "duration", "fig_desc", "cog_desc", "fig_desc_score"],
    "tvr": ["desc_id", "desc", "vid_name", "ts", "duration"],
    "activitynet": ["duration", "timestamps", "sentences"],
    "didemo": ["video", "times", "annotation_id", "description"],
}


def row_of(fields: list[str]):
    """A row with the format's field names (each present or not) holding arbitrary JSON values."""
    return st.dictionaries(st.sampled_from(fields), json_values, max_size=len(fields))


def check(path, fmt, skip):
    try:
        result = read_moments(path, fmt, skip_malformed=skip)
    except AnnotationError as exc:
        assert str(path) in str(exc)  # names the file
        return None
    for m in result.moments:
        assert isinstance(m, Moment) and m.query_id and m.query.strip()
        assert math.isfinite(m.start) and math.isfinite(m.end) and 0 <= m.start <= m.end
    return result


@FUZZ
@given(fmt=st.sampled_from(["fig", "tvr"]), rows=st.lists(st.one_of(row_of(FIELDS["fig"] + FIELDS["tvr"]), json_values), max_size=6), skip=st.booleans())  # fmt: skip
def test_jsonl_readers_on_arbitrary_rows(tmp_path, fmt, rows, skip):
    path = tmp_path / f"x_{fmt}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = check(path, fmt, skip)
    if skip:
        assert result is not None  # a line format skips bad rows instead of raising
        assert len(result.moments) + len(result.skipped) == len(rows)


@FUZZ
@given(fmt=st.sampled_from(["fig", "tvr", "charades_sta", "activitynet", "didemo"]), data=st.binary(max_size=400), skip=st.booleans())  # fmt: skip
def test_every_reader_on_arbitrary_bytes(tmp_path, fmt, data, skip):
    path = tmp_path / f"x_test.{'txt' if fmt == 'charades_sta' else 'json'}"
    path.write_bytes(data)
    result = check(path, fmt, skip)
    if skip and fmt in ("fig", "tvr", "charades_sta"):
        assert result is not None


@FUZZ
@given(
    lines=st.lists(
        st.tuples(st.text(max_size=8), st.text(max_size=6), st.text(max_size=6), st.text(max_size=10)),
        max_size=6,
    ),
    durations=st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.floats(), max_size=3)),
    skip=st.booleans(),
)
def test_charades_sta_reader_on_arbitrary_lines(tmp_path, lines, durations, skip):
    path = tmp_path / "charades_sta_test.txt"
    path.write_text(
        "".join(f"{v} {s} {e}##{q}\n" for v, s, e, q in lines), encoding="utf-8", errors="surrogatepass"
    )
    try:
        result = read_moments(path, "charades_sta", durations=durations, skip_malformed=skip)
    except AnnotationError:
        assert not skip
        return
    for m in result.moments:
        assert 0 <= m.start <= m.end and (m.duration is None or m.end <= m.duration + 1e-6)


@FUZZ
@given(
    fmt=st.sampled_from(["activitynet", "didemo"]),
    doc=st.one_of(
        st.dictionaries(
            st.text(max_size=6), st.one_of(row_of(FIELDS["activitynet"]), json_values), max_size=4
        ),
        st.lists(st.one_of(row_of(FIELDS["didemo"]), json_values), max_size=4),
        json_values,
    ),
    skip=st.booleans(),
)
def test_json_readers_on_arbitrary_documents(tmp_path, fmt, doc, skip):
    path = tmp_path / "x_test.json"
    path.write_text(json.dumps(doc))
    check(path, fmt, skip)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_parser_on_arbitrary_text(text):
    parsed = parse_response(text)
    assert parsed.answer in (None, "matched", "not_matched")
    if parsed.span is not None:
        assert all(math.isfinite(t) for t in parsed.span) and parsed.span[0] <= parsed.span[1]
    if parsed.answer is None:
        assert parsed.problems


@settings(max_examples=200, deadline=None)
@given(
    think=st.text(min_size=1, max_size=40).filter(lambda t: t.strip() and "<" not in t and ">" not in t),
    matched=st.booleans(),
    start=st.floats(0, 1e4),
    length=st.floats(0, 1e3),
    noise=st.text(max_size=20).filter(lambda t: "<" not in t and ">" not in t),
)
def test_formatted_responses_parse_back_even_with_text_around_the_tags(think, matched, start, length, noise):
    span = (start, start + length) if matched else None
    parsed = parse_response(noise + format_response(think, matched, span))
    assert parsed.answer == ("matched" if matched else "not_matched")
    assert parsed.think == think.strip() and parsed.refine
    if matched:
        assert parsed.span is not None
        assert parsed.span == pytest.approx(span, abs=0.051)
