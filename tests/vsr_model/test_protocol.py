"""The prompt protocol: well-formed responses round-trip, model garbage never raises and is reported."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsr_model.protocol import (
    REFINE_TOKEN,
    QueryTrace,
    RefinementMode,
    TurnTrace,
    build_verify_prompt,
    format_response,
    parse_response,
)


def test_matched_response_round_trips():
    text = format_response("a person opens a door at the start", True, (1.25, 7.5))
    parsed = parse_response(text)
    assert parsed.matched and not parsed.not_matched
    assert parsed.span == (1.2, 7.5)  # one decimal place: 1.25 rounds half to even
    assert parsed.think == "a person opens a door at the start"
    assert parsed.refine and text.endswith(REFINE_TOKEN)
    assert parsed.problems == ()


def test_not_matched_response_round_trips():
    parsed = parse_response(format_response("wrong kitchen", False))
    assert parsed.not_matched and parsed.span is None and not parsed.span_tags_present
    assert parsed.refine and parsed.problems == ()


def test_hard_mode_carries_rewritten_query_and_no_refine_token():
    text = format_response("no dog here", False, mode="hard", rewritten_query="a dog jumps over a red fence")
    parsed = parse_response(text)
    assert parsed.rewritten_query == "a dog jumps over a red fence"
    assert not parsed.refine and parsed.problems == ()


def test_tolerates_case_spacing_and_unit_suffixes():
    parsed = parse_response(
        "<THINK> ok </THINK><Answer> Matched </Answer><start>3s</start><end> 9.5 seconds</end><refine>"
    )
    assert parsed.matched and parsed.span == (3.0, 9.5) and parsed.refine and parsed.problems == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty response"),
        ("<answer>matched</answer>", "missing <think>"),
        ("<think></think><answer>maybe</answer>", "neither matched nor not_matched"),
        ("<think>x</think><answer>matched</answer><start>9</start><end>2</end>", "after end"),
        ("<think>x</think><answer>matched</answer><start>abc</start><end>2</end>", "holds no number"),
        ("<think>x</think><answer>matched</answer><start>nan</start><end>2</end>", "holds no number"),
        ("<think>x</think><answer>matched</answer><start>1e999</start><end>2</end>", "not finite"),
        ("<think>x</think><answer>matched</answer><start>-1</start><end>2</end>", "negative"),
        ("<think>x</think><answer>matched</answer><start>1</start>", "only one of"),
        (
            "<think>x</think><answer>not_matched</answer><start>1</start><end>2</end>",
            "not_matched with a span",
        ),
        ("<think>x<answer>matched</answer>", "<think> is not closed"),
        ("<think>a</think><think>b</think><answer>matched</answer>", "2 <think> blocks"),
    ],
)
def test_reports_what_it_could_not_parse(text, problem):
    parsed = parse_response(text)
    assert any(problem in p for p in parsed.problems), parsed.problems


def test_invalid_span_is_not_a_span_but_tags_were_present():
    parsed = parse_response("<think>x</think><answer>matched</answer><start>9</start><end>2</end>")
    assert parsed.matched and parsed.span is None and parsed.span_tags_present
    assert "matched without a valid span" in parsed.problems


def test_non_text_input_is_reported_not_raised():
    parsed = parse_response(None)
    assert parsed.answer is None and "response is not text but NoneType" in parsed.problems


_TAGS = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<start>",
    "</start>",
    "<end>",
    "</end>",
    "<REFINE>",
    "<query>",
    "</query>",
    "matched",
    "not_matched",
    "1.5",
    "-3",
    "nan",
    "1e400",
    "<",
    ">",
    "/",
    " ",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_TAGS), st.text(max_size=8)), max_size=30))
def test_parser_never_raises_on_garbage(pieces):
    parsed = parse_response("".join(pieces))
    assert parsed.answer in (None, "matched", "not_matched")
    if parsed.span is not None:
        s, e = parsed.span
        assert math.isfinite(s) and math.isfinite(e) and 0 <= s <= e
    # A response without a usable verdict always says why.
    if parsed.answer is None:
        assert parsed.problems


@settings(max_examples=100, deadline=None)
@given(
    think=st.text(alphabet=st.characters(blacklist_characters="<>"), min_size=1, max_size=40).filter(
        str.strip
    ),
    matched=st.booleans(),
    start=st.floats(0, 1000),
    length=st.floats(0, 500),
)
def test_format_then_parse_round_trips(think, matched, start, length):
    span = (start, start + length) if matched else None
    parsed = parse_response(format_response(think, matched, span))
    assert parsed.matched == matched and parsed.think == think.strip() and parsed.refine
    if matched:
        assert parsed.span is not None
        assert abs(parsed.span[0] - start) <= 0.05 + 1e-9
        assert abs(parsed.span[1] - (start + length)) <= 0.05 + 1e-6


def test_prompt_has_query_and_duration_and_rejects_bad_input():
    prompt = build_verify_prompt("a man waves", 31.04)
    # the query comes before the video, as the authors lay it out
    assert prompt.before_video.startswith("Query: a man waves\n") and "31.0 seconds" in prompt.before_video
    assert REFINE_TOKEN in prompt.system
    assert "<query>" in build_verify_prompt("a man waves", 3.0, RefinementMode.HARD).system
    after = build_verify_prompt("a man waves", 31.04, query_first=False)
    assert "a man waves" in after.after_video and "a man waves" not in after.before_video
    compact = build_verify_prompt("a man waves", 31.04, style="compact")
    assert len(compact.system) < len(prompt.system) / 3 and REFINE_TOKEN in compact.system
    assert "<query>" in build_verify_prompt("q", 3.0, RefinementMode.HARD, style="compact").system
    with pytest.raises(ValueError, match="prompt style"):
        build_verify_prompt("q", 3.0, style="terse")
    with pytest.raises(ValueError, match="non-empty"):
        build_verify_prompt("  ", 3.0)
    with pytest.raises(ValueError, match="duration"):
        build_verify_prompt("q", float("nan"))
    with pytest.raises(ValueError, match="unknown refinement mode"):
        build_verify_prompt("q", 3.0, "latent")


def test_format_response_rejects_inconsistent_targets():
    with pytest.raises(ValueError, match="needs a"):
        format_response("x", True)
    with pytest.raises(ValueError, match="no span"):
        format_response("x", False, (1.0, 2.0))
    with pytest.raises(ValueError, match="invalid span"):
        format_response("x", True, (3.0, 2.0))


def test_trace_records_round_trip_through_dicts():
    turn = TurnTrace(1, ["v2", "v1"], [0.9, 0.8], "r", parse_response(format_response("t", False)), False)
    turn2 = TurnTrace(2, ["v1"], [0.7], "r2", parse_response(format_response("t", True, (1.0, 2.0))), True)
    trace = QueryTrace("q1", "query", "v1", (1.0, 2.5), [turn, turn2], ["v1"])
    back = QueryTrace.from_dict(trace.to_dict())
    assert back.to_dict() == trace.to_dict()
    assert back.answer_video == "v1" and back.answer_span == (1.0, 2.0) and back.answer_turn.turn == 2


def test_block_runs_from_first_open_to_next_close():
    parsed = parse_response("<think>a<think>b</think> <answer>not_matched</answer> <answer>matched</answer>")
    assert parsed.think == "a<think>b" and parsed.not_matched
    assert "2 <answer> blocks; the first is used" in parsed.problems


def test_huge_garbage_is_still_parsed():
    parsed = parse_response("<think>" * 50_000 + "<answer>matched</answer>")
    assert parsed.matched and "<think> is not closed" in parsed.problems


def test_text_after_refine_is_reported():
    assert "text after <REFINE>" in parse_response(format_response("x", False) + " and more").problems
    assert parse_response(format_response("x", False) + "  \n").problems == ()
