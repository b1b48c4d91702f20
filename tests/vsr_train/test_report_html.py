"""report.html: per-query outcomes, the card sample, and the page written from traces and a corpus."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from vsr_index.cli import main
from vsr_model.corpus import Corpus
from vsr_model.protocol import QueryTrace, TurnTrace, format_response, parse_response
from vsr_model.video import VideoClip, write_video
from vsr_train.report_html import (
    ASSETS_DIR,
    OUTCOMES,
    ReportSettings,
    ReportVariant,
    gt_rank,
    load_eval_variant,
    query_outcomes,
    report_eval_runs,
    select_queries,
    turn_verdict,
    write_html_report,
)


class FakeCorpus:
    """Clips whose timestamps are deliberately irregular, so the page can only show them if it reads
    them from the clip; counts decodes."""

    def __init__(self, ids):
        self.ids = set(ids)
        self.decoded: list[str] = []

    def __contains__(self, video_id):
        return video_id in self.ids

    def clip(self, video_id, sampling=None):
        self.decoded.append(video_id)
        n = sampling.max_frames if sampling is not None else 4
        seed = sum(map(ord, video_id))
        frames = np.random.default_rng(seed).integers(0, 256, (n, 30, 40, 3), dtype=np.uint8)
        times = 0.37 + 2.0 * np.arange(n) + 0.01 * np.arange(n) ** 2
        return VideoClip(frames, times, duration=2.0 * n + 1.0, fps=25.0, video_id=video_id)


def turn(n, ranking, matched=None, span=None, think="looking", response=None, **kw):
    if response is None:
        response = format_response(think, bool(matched), span) if matched is not None else "garbage"
    return TurnTrace(n, list(ranking), [1.0] * len(ranking), response, parse_response(response), **kw)


def trace(qid, turns, final=None, gt="v1", span=(2.0, 6.0)):
    for t in turns:
        t.label_matched = t.shown_video == gt
    out = QueryTrace(qid, f"query {qid}", gt, span, turns)
    out.final_ranking = final if final is not None else list(turns[-1].ranking)
    return out


def recovered():
    """Turn 1 shows v2 (rejected), SQR moves v1 from rank 2 to 1, turn 2 matches with IoU 0.8."""
    return trace(
        "rec",
        [
            turn(1, ["v2", "v1", "v3"], False, refinement_tokens=4),
            turn(2, ["v1", "v3", "v4"], True, (2.0, 5.2)),
        ],
    )


def false_accept():
    return trace("fa", [turn(1, ["v3", "v2", "v4"], True, (1.0, 2.0))])


def never_shown():
    """Two rejections of wrong videos; the ground truth is ranked 5th, then 2nd after refinement."""
    return trace(
        "never",
        [
            turn(1, ["v2", "v3", "v4", "v5", "v1"], False, rewritten_query="a better query"),
            turn(2, ["v3", "v4", "v5", "v6", "v7"], None),
        ],
        final=["v4", "v1", "v5", "v6", "v7"],
    )


def false_reject():
    return trace("fr", [turn(1, ["v1", "v2"], False), turn(2, ["v2", "v3"], False)], final=["v3", "v4"])


ALL_IDS = [f"v{i}" for i in range(1, 9)]


def test_ranks_verdicts_and_outcomes():
    assert gt_rank(["a", "b", "c"], "b") == "2"
    assert gt_rank(["a", "b", "c"], "z") == "> 3"
    assert gt_rank(["a", "b"], "z", excluded=["z"]) == "excluded (shown before)"
    assert gt_rank(["a"], None) == "?"
    rec, fa, never, fr = recovered(), false_accept(), never_shown(), false_reject()
    assert [turn_verdict(t, "v1") for t in rec.turns] == ["right", "right"]
    assert [turn_verdict(t, "v1") for t in never.turns] == ["right", "unreadable"]
    assert query_outcomes(rec) == ["verdict_right", "recovered", "grounded"]
    assert query_outcomes(fa) == ["verdict_wrong", "false_accept", "never_shown"]
    assert query_outcomes(never) == ["verdict_wrong", "never_shown", "unreadable"]
    assert query_outcomes(fr) == ["verdict_wrong", "false_reject"]
    loose = trace("loose", [turn(1, ["v1"], True, (0.0, 30.0))])
    assert query_outcomes(loose) == ["verdict_right", "loose_span"]
    assert all(tag in OUTCOMES for t in (rec, fa, never, fr, loose) for tag in query_outcomes(t))


def test_sample_spreads_over_outcomes_and_all_of_adds_every_query_of_a_kind():
    traces = [false_accept() for _ in range(5)] + [recovered(), never_shown(), false_reject()]
    for i, t in enumerate(traces):
        t.query_id = f"q{i}"
    picked = select_queries(traces, ReportSettings(max_cards=3))
    # One from each of the first groups (grounded, false accept, false reject) before any repeat.
    assert picked == [5, 0, 7]
    every = select_queries(traces, ReportSettings(max_cards=3, all_of="false_accept"))
    assert every[:5] == [0, 1, 2, 3, 4] and len(every) == 5
    assert select_queries(traces, ReportSettings(max_cards=0)) == []
    with pytest.raises(ValueError, match="unknown outcome 'nope'"):
        ReportSettings(all_of="nope")


def _variant(key="sqr_2", traces=None, **kw):
    traces = traces if traces is not None else [recovered(), false_accept(), never_shown(), false_reject()]
    metrics = {"vcmr_r1_iou0.5": 25.0, "vr_post_refinement_r1": 50.0}
    return ReportVariant(key, f"SQR {key}", metrics, traces, **kw)


def _cards(page):
    return re.findall(r'<article class="card" id="([^"]+)" data-variant="([^"]+)" data-tags="([^"]*)"', page)


def test_page_shows_each_turn_with_true_timestamps_ranks_spans_and_verdicts(tmp_path):
    corpus = FakeCorpus(ALL_IDS)
    plot_inside = tmp_path / "out" / "plots" / "a.png"
    plot_inside.parent.mkdir(parents=True)
    plot_inside.write_bytes(b"\x89PNG inside")
    plot_outside = tmp_path / "b.png"
    plot_outside.write_bytes(b"\x89PNG outside")
    variants = [
        _variant(intervals={"vcmr_r1_iou0.5": (10.0, 40.0)}),
        _variant(
            "single_shot", [false_accept()], paired_intervals={"sqr_2": {"vcmr_r1_iou0.5": (-30.0, 5.0)}}
        ),
    ]
    path = write_html_report(tmp_path / "out", variants, [plot_inside, plot_outside], corpus)
    page = path.read_text()
    assert path.name == "report.html"
    assert [(c[1], c[2]) for c in _cards(page)] == [
        ("sqr_2", "verdict_right recovered grounded"),
        ("sqr_2", "verdict_wrong false_accept never_shown"),
        ("sqr_2", "verdict_wrong never_shown unreadable"),
        ("sqr_2", "verdict_wrong false_reject"),
        ("single_shot", "verdict_wrong false_accept never_shown"),
    ]
    # Results with intervals, the paired difference, plots linked in place or copied beside.
    assert '25.0<span class="ci">[10.0, 40.0]</span>' in page
    assert '+0.0<span class="ci">[-30.0, +5.0]</span>' in page
    assert 'src="plots/a.png"' in page and f'src="{ASSETS_DIR}/plot-1-b.png"' in page
    assert (tmp_path / "out" / ASSETS_DIR / "plot-1-b.png").read_bytes() == b"\x89PNG outside"
    rec = page.split('id="sqr_2-rec"')[1].split("</article>")[0]
    # The clip's own timestamps label the thumbnails; ranks before and after the refinement.
    assert ">0.4s</span>" in rec and ">2.4s</span>" in rec and ">14.9s</span>" in rec
    assert (
        "ground truth ranked 2" in rec and "soft refinement (4 latent tokens); ground truth ranked 1" in rec
    )
    assert "(right)" in rec and "predicted</span> 2.0–5.2 s" in rec and "IoU 0.80" in rec
    assert rec.count('class="span gt"') == 1 and rec.count('class="span pred"') == 1
    never = page.split('id="sqr_2-never"')[1].split("</article>")[0]
    assert "ground truth ranked 5" in never and "rewritten query: “a better query”" in never
    assert "ground truth ranked 2 after it" in never and "(wrong: no verdict parsed)" in never
    assert "The ground-truth video</b> <code>v1</code>, never shown (final ranking: 2)" in never
    fr = page.split('id="sqr_2-fr"')[1].split("</article>")[0]
    assert (
        "ground truth excluded (shown before) after it" in fr
    )  # shown at turn 1, so the engine skips it afterwards
    strips = sorted(p.name for p in (tmp_path / "out" / ASSETS_DIR).glob("*.jpg"))
    assert len(strips) == len(corpus.decoded) == 3  # v1, v2, v3: one strip each, each decoded once
    assert all(f'src="{ASSETS_DIR}/{name}"' in page for name in strips)


def test_page_escapes_model_text_and_is_deterministic(tmp_path):
    evil = turn(1, ["v1"], response='<think><script>alert("x")</script></think> <answer>matched</answer>')
    variants = [_variant(traces=[trace("q<1>", [evil]), recovered()])]
    first = write_html_report(tmp_path / "a", variants, [], FakeCorpus(ALL_IDS)).read_bytes()
    second = write_html_report(tmp_path / "b", variants, [], FakeCorpus(ALL_IDS)).read_bytes()
    assert first == second
    assert b"<script>alert" not in first and b"&lt;script&gt;alert" in first
    files = sorted(p.name for p in (tmp_path / "a" / ASSETS_DIR).iterdir())
    assert [(tmp_path / "a" / ASSETS_DIR / f).read_bytes() for f in files] == [
        (tmp_path / "b" / ASSETS_DIR / f).read_bytes() for f in files
    ]


def test_size_cap_leaves_cards_out_and_says_so(tmp_path):
    traces = [false_accept() for _ in range(40)]
    for i, t in enumerate(traces):
        t.query_id = f"q{i}"
        t.turns[0].ranking[0] = f"w{i}"
    corpus = FakeCorpus([*ALL_IDS, *(f"w{i}" for i in range(40))])
    settings = ReportSettings(max_cards=40, max_bytes=60_000, thumbnail_height=40)
    out = tmp_path / "out"
    page = write_html_report(out, [_variant(traces=traces)], [], corpus, settings).read_text()
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    kept = len(_cards(page))
    assert 0 < kept < 40 and total <= 60_000
    assert f"{40 - kept} left out for the size cap" in page


def test_unknown_video_is_named_and_nothing_is_written(tmp_path):
    bad = trace("q7", [turn(1, ["ghost", "v1"], False)])
    with pytest.raises(ValueError, match=r"variant 'sqr_2', query 'q7': video 'ghost' is not in"):
        write_html_report(tmp_path / "out", [_variant(traces=[bad])], [], FakeCorpus(ALL_IDS))
    assert not (tmp_path / "out" / "report.html").exists()
    with pytest.raises(ValueError, match="duplicate variant keys"):
        write_html_report(tmp_path / "out", [_variant(), _variant()], [], FakeCorpus(ALL_IDS))
    with pytest.raises(ValueError, match="variant key"):
        _variant("a b")


def test_thumbnails_carry_the_decoded_frames_true_times(tmp_path):
    """A real mp4 through vsr_model's Corpus: the labels are the decoder's frame times."""
    frames = np.zeros((60, 48, 64, 3), dtype=np.uint8)
    write_video(tmp_path / "v1.mp4", frames, fps=10)
    corpus = Corpus({"v1": tmp_path / "v1.mp4"})
    settings = ReportSettings(thumbnails_per_strip=4)
    one = trace("q", [turn(1, ["v1"], True, (2.0, 4.0))], span=(2.0, 4.0))
    page = write_html_report(tmp_path / "out", [_variant(traces=[one])], [], corpus, settings).read_text()
    # Bins of 1.5 s over the 6 s video; their centres fall on frames starting at 0.7, 2.2, 3.7, 5.2 s.
    stamps = re.findall(r'<span style="width:\d+px"( class="in-gt")?>([\d.]+)s</span>', page)
    assert stamps == [("", "0.7"), (' class="in-gt"', "2.2"), (' class="in-gt"', "3.7"), ("", "5.2")]


def _eval_folder(folder, name, traces, corpus_file):
    folder.mkdir(parents=True)
    (folder / "traces.jsonl").write_text("".join(json.dumps(t.to_dict()) + "\n" for t in traces))
    summary = {"vcmr_r1_iou0.5": 25.0}
    config = {"corpus": str(corpus_file), "corpus_split": "test"}
    (folder / "summary.json").write_text(json.dumps({"name": name, "summary": summary, "config": config}))
    return folder


def test_eval_folders_and_the_vsr_report_command(tmp_path):
    """`vsr eval` folders -> variants keyed by folder, intervals from a demo summary, thumbnails from
    the run's own corpus; `vsr report --all-of` shows every query of that kind."""
    rows = []
    for vid in ALL_IDS:
        write_video(tmp_path / "videos" / f"{vid}.mp4", np.zeros((20, 48, 64, 3), np.uint8), fps=10)
        rows.append({"video_id": vid, "path": f"videos/{vid}.mp4", "split": "test"})
    corpus_file = tmp_path / "videos.jsonl"
    corpus_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    many = [false_accept() for _ in range(3)]
    for i, t in enumerate(many):
        t.query_id = f"fa{i}"
    sqr = _eval_folder(
        tmp_path / "demo" / "eval" / "sqr_2", "SQR, 2 turns", [recovered(), *many], corpus_file
    )
    single = _eval_folder(
        tmp_path / "demo" / "eval" / "single_shot", "Single shot", [false_reject()], corpus_file
    )
    demo = {
        "results": {"single_shot": {}, "sqr_2": {}},
        "paired_ci": {"sqr_2__vs__single_shot": {"vcmr_r1_iou0.5": [-1.5, 12.0]}, "bad": "shape"},
    }
    variant = load_eval_variant(sqr, summary=demo)
    assert (variant.key, variant.title, len(variant.traces)) == ("sqr_2", "SQR, 2 turns", 4)
    assert variant.paired_intervals == {"single_shot": {"vcmr_r1_iou0.5": (-1.5, 12.0)}}
    page = report_eval_runs(tmp_path / "demo", [single, sqr], [], summary=demo).read_text()
    assert "SQR, 2 turns − Single shot" in page and "[-1.5, +12.0]" in page
    assert len(_cards(page)) == 5

    (tmp_path / "demo" / "summary.json").write_text(json.dumps(demo))
    argv = ["report", str(tmp_path / "demo"), "--max-cards", "1", "--all-of", "false_accept"]
    assert main(argv) == 0
    cards = _cards((tmp_path / "demo" / "report.html").read_text())
    # single shot: its one sampled card; SQR: every false accept (3), nothing else past max_cards.
    assert [c[0] for c in cards] == ["single_shot-fr", "sqr_2-fa0", "sqr_2-fa1", "sqr_2-fa2"]
    with pytest.raises(FileNotFoundError, match=r"not a finished evaluation: summary\.json is missing"):
        load_eval_variant(tmp_path / "videos")
