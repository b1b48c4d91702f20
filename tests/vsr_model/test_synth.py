import itertools
import json
from collections import Counter

import numpy as np
import pytest

from vsr_model.config import config_from_dict
from vsr_model.data import read_moments
from vsr_model.data import synth_world as world
from vsr_model.data.synth import (
    SynthConfig,
    chance_baselines,
    generate,
    held_out_pairs,
    plan_split,
    random_span_hit_rate,
)
from vsr_model.video import FrameSampling, decode_video

CFG = SynthConfig(num_train=6, num_val=2, num_test=4, seed=3, height=64, width=80)


def test_plans_are_deterministic_by_seed():
    hidden = held_out_pairs(CFG)
    a = plan_split(CFG, "test", hidden)
    b = plan_split(CFG, "test", hidden)
    assert [q.to_dict() for p in a for q in p.queries] == [q.to_dict() for p in b for q in p.queries]
    other = plan_split(SynthConfig(**{**CFG.__dict__, "seed": 4}), "test", held_out_pairs(CFG))
    assert [q.query for p in a for q in p.queries] != [q.query for p in other for q in p.queries]


def test_each_query_has_exactly_one_correct_moment_in_its_split():
    big = SynthConfig(num_train=120, num_val=10, num_test=60, seed=1)
    hidden = held_out_pairs(big)
    for split in ("train", "test"):
        plans = plan_split(big, split, hidden)
        keys = [
            tuple(q.extra[k] for k in ("size", "color", "object", "action", "background"))
            for p in plans
            for q in p.queries
        ]
        assert len(keys) == len(set(keys))
        texts = Counter(q.query for p in plans for q in p.queries)
        assert max(texts.values()) == 1


def test_train_never_sees_held_out_pairs_and_test_uses_held_out_wording():
    big = SynthConfig(num_train=150, num_val=10, num_test=80, seed=2)
    hidden = held_out_pairs(big)
    train = [q for p in plan_split(big, "train", hidden) for q in p.queries]
    test = [q for p in plan_split(big, "test", hidden) for q in p.queries]
    assert not any((q.extra["color"], q.extra["object"]) in hidden for q in train)
    held = [q for q in test if q.extra["held_out_combo"]]
    assert held and all((q.extra["color"], q.extra["object"]) in hidden for q in held)
    train_phrases = {p for a in world.ACTION_PHRASES.values() for p in a[:2]}
    # every test caption uses a held-out action phrase, never a training one
    for q in test:
        phrases = world.ACTION_PHRASES[q.extra["action"]]
        assert any(p in q.query for p in phrases[2:]), q.query
        assert not any(
            f" {p} " in f" {q.query} " or q.query.endswith(p) for p in phrases[:2] if p not in phrases[2:]
        )
    assert train_phrases  # sanity: vocabulary exists


def test_events_do_not_overlap_and_fit_the_video():
    for plan in plan_split(CFG, "train", held_out_pairs(CFG)):
        spans = sorted((e.start_frame, e.end_frame) for e in plan.events)
        assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))
        assert spans[0][0] > 0 and spans[-1][1] < plan.num_frames


def test_generated_benchmark_loads_with_the_tvr_reader(tiny_benchmark):
    meta = json.loads((tiny_benchmark / "meta.json").read_text())
    for split in ("train", "val", "test"):
        result = read_moments(tiny_benchmark / "annotations" / f"synth_{split}.jsonl")
        assert len(result.moments) == meta["splits"][split]["queries"]
        assert result.moments[0].dataset == "synth" and result.moments[0].split == split
        assert not result.skipped and result.clipped == 0
    rows = [json.loads(line) for line in (tiny_benchmark / "videos.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all((tiny_benchmark / r["path"]).is_file() for r in rows)


def test_annotated_moments_match_the_pixels(tiny_benchmark):
    """Inside an event the frame differs from the background; in the gaps it does not."""
    moments = read_moments(tiny_benchmark / "annotations" / "synth_test.jsonl").moments
    video_id = moments[0].video_id
    clip = decode_video(tiny_benchmark / "videos" / f"{video_id}.mp4", FrameSampling(fps=8, max_frames=1000))
    assert clip.duration == pytest.approx(moments[0].duration)
    spans = [(m.start, m.end) for m in moments if m.video_id == video_id]
    first_gap_frame = clip.frames[0].astype(np.int16)
    for t, frame in zip(clip.timestamps, clip.frames, strict=True):
        inside = any(s + 0.2 <= t < e - 0.3 for s, e in spans)  # away from fade-in/out and blink-off edges
        outside = all(t < s - 0.01 or t >= e + 0.01 for s, e in spans)
        diff = np.abs(frame.astype(np.int16) - first_gap_frame).mean()
        if outside:
            assert diff < 3.0, (t, diff)
        elif inside and "blink" not in [
            m.extra["action"] for m in moments if m.video_id == video_id and m.start <= t < m.end
        ]:
            assert diff > 1.0, (t, diff)


def test_generation_is_reproducible_and_resumable(tmp_path, tiny_benchmark):
    cfg = SynthConfig(num_train=2, num_val=0, num_test=1, seed=3, height=64, width=80)
    a, b = tmp_path / "a", tmp_path / "b"
    generate(cfg, a)
    generate(cfg, b)
    assert (a / "annotations" / "synth_train.jsonl").read_bytes() == (
        b / "annotations" / "synth_train.jsonl"
    ).read_bytes()
    vid = a / "videos" / "synth_train_00001.mp4"
    before = decode_video(vid, FrameSampling(fps=2)).frames
    vid.unlink()
    generate(cfg, a)  # resumes: recreates the missing video identically
    np.testing.assert_array_equal(decode_video(vid, FrameSampling(fps=2)).frames, before)
    with pytest.raises(FileExistsError, match="different config"):
        generate(SynthConfig(num_train=3, num_val=0, num_test=1, seed=3, height=64, width=80), a)


def test_chance_baselines():
    # ground truth = whole video: IoU = |U1 - U2|, so P(IoU >= 0.5) = 0.25 and E[IoU] = 1/3
    samples = np.random.default_rng(0).random((200_000, 2))
    rates = random_span_hit_rate(10.0, 0.0, 10.0, (0.5,), samples)
    assert rates[0.5] == pytest.approx(0.25, abs=0.01)
    assert rates[-1.0] == pytest.approx(1 / 3, abs=0.01)
    moments = plan_split(CFG, "test", held_out_pairs(CFG))[0].queries
    chance = chance_baselines(moments, num_videos=20)
    assert chance["vr_r@1"] == 0.05 and chance["vr_r@5"] == 0.25 and chance["vr_r@10"] == 0.5
    assert chance["vcmr_r@1_iou>=0.5"] == pytest.approx(chance["moment_iou>=0.5"] / 20)
    assert 0 < chance["moment_iou>=0.7"] < chance["moment_iou>=0.5"] < chance["moment_iou>=0.3"] < 1


@pytest.mark.parametrize(
    "bad", [{"height": 63}, {"min_events": 3, "max_events": 2}, {"fps": 0}, {"num_train": -1}]
)
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValueError, match="SynthConfig"):
        SynthConfig(**bad)
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict(SynthConfig, {"num_trian": 3})


def test_cli_synth_and_inspect(tmp_path, capsys):
    from vsr_index.cli import main

    assert main(["data", "synth", str(tmp_path / "b"), "--preset", "ci", "--num-train", "1", "--num-val", "0",
                 "--num-test", "1", "--height", "64", "--width", "80"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["splits"]["train"]["videos"] == 1
    assert main(["data", "inspect", str(tmp_path / "b" / "annotations" / "synth_test.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["videos"] == 1
    bad = tmp_path / "bad_test.jsonl"
    bad.write_text('{"desc_id": 1, "desc": "x", "vid_name": "v", "duration": 5, "ts": [4, 2]}\n')
    with pytest.raises(SystemExit, match=r"bad_test.jsonl:1"):
        main(["data", "inspect", str(bad)])
