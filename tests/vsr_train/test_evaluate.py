"""`vsr eval` end to end on a tiny synthetic benchmark: every variant's traces, summary, results table and
plots, the combined summary with paired bootstrap intervals, and the report; and the pieces it is made of."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vsr_train.config import EvalConfig, config_from_dict
from vsr_train.evaluate import (
    PAPER_COLUMNS,
    baselines_of,
    paper_table,
    run_eval,
    variant_title,
)
from vsr_train.tiny import tiny_search_setup, tiny_video_policy


def test_paper_table_layout():
    summary = {key: 10.0 + i for i, (key, _) in enumerate(PAPER_COLUMNS)}
    table = paper_table([("SQR", summary), ("HQR", {"miou": 3.0})])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Method | VCMR R@1 IoU=0.3 | IoU=0.5 | IoU=0.7 |")
    assert lines[2] == "| SQR | " + " | ".join(f"{10.0 + i:.1f}" for i in range(len(PAPER_COLUMNS))) + " |"
    assert lines[3].count("n/a") == len(PAPER_COLUMNS) - 1


def test_each_variant_is_compared_with_single_shot_and_the_next_candidate_at_equal_turns():
    keys = ["single_shot", "next_2", "sqr_2", "hqr_2", "oracle_next_2", "oracle_sqr_2", "sqr_3"]
    assert baselines_of("sqr_2", keys) == ["single_shot", "next_2"]
    assert baselines_of("oracle_sqr_2", keys) == ["single_shot", "oracle_next_2"]
    assert baselines_of("sqr_3", keys) == ["single_shot"]  # no next_3 to compare with
    assert baselines_of("next_2", keys) == ["single_shot"]
    assert baselines_of("single_shot", keys) == []
    assert variant_title("oracle_next_3") == "Next candidate, 3 turns, oracle verifier"
    assert variant_title("hqr_1") == "Text rewrite (HQR), 1 turn"


def test_paired_bootstrap_interval_covers_the_difference_and_excludes_zero_only_when_it_should():
    from vsr_model.metrics import paired_bootstrap_ci

    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 400).astype(float) * 100
    better = np.where(rng.random(400) < 0.3, 100.0, base)  # ~15 points more hits on the same queries
    low, high = paired_bootstrap_ci(better, base, samples=2000, seed=1)
    assert 0 < low < (better - base).mean() < high
    low, high = paired_bootstrap_ci(base, base.copy(), samples=500, seed=1)
    assert low == high == 0.0
    noise = np.where(rng.random(400) < 0.5, 100.0, 0.0)
    low, high = paired_bootstrap_ci(noise, np.roll(noise, 1), samples=2000, seed=1)
    assert low < 0 < high


@pytest.mark.slow
def test_eval_runs_every_variant_with_intervals_and_a_report(tmp_path):
    root = tmp_path / "bench"
    engine, corpus = tiny_search_setup(root)
    policy = tiny_video_policy(engine.embed_dim, engine.query_input_dim)
    out = tmp_path / "eval"
    cfg = config_from_dict(
        EvalConfig,
        {
            "output_dir": str(out),
            "policy": "in-memory",
            "engine_dir": "in-memory",
            "corpus": str(root / "videos.jsonl"),
            "queries": str(root / "annotations" / "synth_test.jsonl"),
            "max_queries": 3,
            "agent": {"max_turns": 2, "batch_size": 2, "top_k": 3, "generation": {"max_new_tokens": 12}},
            "variants": [
                {"verifier": v, "refiner": r} for v in ("policy", "oracle") for r in ("sqr", "hqr", "none")
            ],
            "grounding_only": True,
            "bootstrap_samples": 200,
            "dist_backend": "gloo",
        },
    )
    summary = json.loads(run_eval(cfg, policy=policy, engine=engine, corpus=corpus).read_text())
    runs = {"single_shot", "grounding_only"} | {
        f"{prefix}{refiner}_{t}"
        for prefix in ("", "oracle_")
        for refiner in ("sqr", "hqr", "next")
        for t in (1, 2)
    }
    assert set(summary["results"]) == runs
    for key in runs:
        result = summary["results"][key]
        assert result["queries"] == 3.0
        traces = [json.loads(line) for line in (out / key / "traces.jsonl").read_text().splitlines()]
        assert len(traces) == 3 and all(t["turns"] for t in traces)
        assert (out / key / "per_turn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert all(len(pair) == 2 for pair in summary["ci"][key].values())
    # the oracle verifier stops exactly on the ground-truth video
    for line in (out / "oracle_next_2" / "traces.jsonl").read_text().splitlines():
        trace = json.loads(line)
        assert all(t["decided_matched"] == (t["shown_video"] == trace["gt_video"]) for t in trace["turns"])
    assert set(summary["paired_ci"]["sqr_2__vs__next_2"]) >= {"vr_post_refinement_r1", "vcmr_r1_iou0.5"}
    assert "oracle_hqr_1__vs__oracle_next_1" in summary["paired_ci"]
    # grounding only: every first video shown is the ground truth
    for line in (out / "grounding_only" / "traces.jsonl").read_text().splitlines():
        trace = json.loads(line)
        assert trace["turns"][0]["shown_video"] == trace["gt_video"] and len(trace["turns"]) == 1
    assert 50.0 <= summary["majority_rate"] <= 100.0
    table = (out / "results.md").read_text()
    assert table.startswith("| Method |") and "Next candidate, 2 turns, oracle verifier" in table
    assert (out / "plots" / "variants.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.html").read_text().count('<article class="card"') == 3 * len(runs)
