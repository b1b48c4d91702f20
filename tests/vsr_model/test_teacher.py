"""Teachers: synthetic ground-truth rationales, the external rationale file and the fallback chain."""

import json
import logging

import pytest

from vsr_model.data import read_moments
from vsr_model.data.synth import SynthConfig, generate
from vsr_model.data.synth_world import ACTION_PHRASES
from vsr_model.data.teacher import RationaleFile, SyntheticTeacher, TeacherChain, default_rationale


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher_bench")
    generate(SynthConfig(num_train=6, num_val=1, num_test=2, seed=5, height=48, width=64), root)
    return root


@pytest.fixture(scope="module")
def moments(bench):
    return read_moments(bench / "annotations" / "synth_train.jsonl").moments


def test_synthetic_rationale_of_the_right_video_names_the_span_and_says_match(bench, moments):
    teacher = SyntheticTeacher(bench)
    m = moments[0]
    text = teacher.rationale(m, m.video_id)
    canonical = " ".join(str(m.extra[a]) for a in ("size", "color", "object"))
    assert text.startswith(f"Query: {canonical}")
    assert f"Closest: {m.start:.1f}-{m.end:.1f}s" in text
    assert text.endswith("Match.")


def test_synthetic_rationale_of_a_wrong_video_lists_exactly_the_missed_requirements(bench, moments):
    teacher = SyntheticTeacher(bench)
    m = moments[0]
    other = next(v for v in teacher.events if v != m.video_id)
    text = teacher.rationale(m, other)
    assert "Differs: " in text and not text.endswith("Match.")
    closest = teacher.closest(m, other)
    expected = [
        ACTION_PHRASES[closest.action][0] if a == "action" else getattr(closest, a)
        for a in ("size", "color", "object", "action")
        if getattr(closest, a) != str(m.extra[a])
    ]
    if teacher.backgrounds[other] != m.extra["background"]:
        expected.append(teacher.backgrounds[other])
    assert expected and text.endswith("Differs: " + ", ".join(expected) + ".")


def test_full_style_lists_every_event_of_the_video_first(bench, moments):
    compact, full = SyntheticTeacher(bench), SyntheticTeacher(bench, style="full")
    m = moments[0]
    text = full.rationale(m, m.video_id)
    assert text.startswith("Video: ") and text.endswith(compact.rationale(m, m.video_id))
    assert text.count("s ") >= len(full.events[m.video_id])
    with pytest.raises(ValueError, match="rationale style"):
        SyntheticTeacher(bench, style="verbose")


def test_frame_words_follow_the_event_on_screen(bench, moments):
    teacher = SyntheticTeacher(bench)
    m = moments[0]
    mid = (m.start + m.end) / 2
    rows = teacher.frame_words(m.video_id, [mid])
    assert rows[0][:3] == [str(m.extra["size"]), str(m.extra["color"]), str(m.extra["object"])]
    assert rows[0][4] == teacher.backgrounds[m.video_id]
    assert teacher.frame_words("no-such-video", [0.0]) is None


def test_rewrite_names_every_attribute_in_canonical_words(bench, moments):
    m = moments[0]
    text = SyntheticTeacher(bench).rewrite(m, m.video_id)
    for attribute in ("color", "object", "background"):
        assert str(m.extra[attribute]) in text


def test_a_benchmark_without_synthetic_fields_is_refused(tmp_path):
    (tmp_path / "videos.jsonl").write_text(json.dumps({"video_id": "v", "path": "v.mp4"}) + "\n")
    (tmp_path / "annotations").mkdir()
    with pytest.raises(ValueError, match="not a synthetic benchmark"):
        SyntheticTeacher(tmp_path)


def test_rationale_file_is_read_by_query_and_video_and_rejects_bad_rows(tmp_path, moments):
    m = moments[0]
    path = tmp_path / "rationales.jsonl"
    rows = [
        {
            "query_id": m.query_id,
            "video_id": m.video_id,
            "rationale": " A red ball rolls. ",
            "rewrite": "red ball",
        },
        {"query_id": m.query_id, "video_id": "other", "rationale": "No ball."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = RationaleFile(path)
    assert teacher.rationale(m, m.video_id) == "A red ball rolls."
    assert teacher.rewrite(m, m.video_id) == "red ball"
    assert teacher.rewrite(m, "other") is None and teacher.rationale(m, "absent") is None
    for bad, message in (
        ({"query_id": "q", "video_id": "v"}, "rationale"),
        ({"query_id": "q", "video_id": "v", "rationale": "  "}, "empty rationale"),
        ({"query_id": "q", "video_id": "v", "rationale": "x", "rewrite": 3}, "rewrite must be text"),
    ):
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match=message):
            RationaleFile(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=":1:"):
        RationaleFile(path)
    path.write_text("".join(json.dumps(rows[0]) + "\n" for _ in range(2)))
    with pytest.raises(ValueError, match="repeated"):
        RationaleFile(path)


def test_chain_takes_the_first_teacher_that_knows_and_counts_fallbacks(tmp_path, bench, moments, caplog):
    m = moments[0]
    path = tmp_path / "r.jsonl"
    path.write_text(
        json.dumps({"query_id": m.query_id, "video_id": m.video_id, "rationale": "From file."}) + "\n"
    )
    chain = TeacherChain([RationaleFile(path), SyntheticTeacher(bench)])
    assert chain.rationale(m, m.video_id) == "From file."
    assert chain.rationale(m, m.video_id) != SyntheticTeacher(bench).rationale(m, "x")
    # The file has no rewrite: the synthetic teacher answers.
    assert chain.rewrite(m, m.video_id) == SyntheticTeacher(bench).rewrite(m, m.video_id)
    assert chain.fallbacks == {"rationale": 0, "rewrite": 0}
    empty = TeacherChain([])
    with caplog.at_level(logging.WARNING):
        assert empty.rationale(m, m.video_id) == default_rationale(True)
        assert empty.rationale(m, "other") == default_rationale(False)
        assert empty.rewrite(m, m.video_id) == m.query.strip()
    assert empty.fallbacks == {"rationale": 2, "rewrite": 1}
    assert sum("fallback" in r.message for r in caplog.records) == 2  # logged once per kind
