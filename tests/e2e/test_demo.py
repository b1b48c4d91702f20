"""`vsr demo` end to end at the tiniest size: every stage runs through the real code paths (decoded
video, engine fit, vsr_index corpus, Stage-1 data with teacher rationales, connector alignment, SFT with
its learning curve and GRPO under DeepSpeed, every agent variant in one evaluation) with randomly
initialised miniature models, and every artifact is produced and well-formed. A rerun resumes: nothing
is recomputed and the results are unchanged. A fresh run with the same seed in another folder
reproduces the results."""

import json

import pytest

from vsr_train.demo import SIZES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGES = [
    "benchmark",
    "engine",
    "corpus_train",
    "corpus_test",
    "stage1_data",
    "verify_data",
    "policy_base",
    "policy_init",
    "sft",
    "grpo",
    "eval",
]


def expected_keys(turns: int) -> set[str]:
    runs = {
        f"{p}{r}_{t}" for p in ("", "oracle_") for r in ("sqr", "hqr", "next") for t in range(1, turns + 1)
    }
    return runs | {"single_shot", "grounding_only"}


@pytest.mark.slow
def test_tiny_demo_produces_every_artifact_and_resumes(tiny_demo, run_tiny_demo, tmp_path):
    out = tiny_demo.check()
    turns = SIZES["tiny"].eval_turns

    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["seed"] == 3 and summary["settings"]["size"] == "tiny"
    assert set(summary["results"]) == expected_keys(turns)
    for key, result in summary["results"].items():
        for metric in (
            "vcmr_r1_iou0.3",
            "vcmr_r1_iou0.5",
            "vcmr_r1_iou0.7",
            "ver_strict",
            "ver_turn1",
            "vr_post_refinement_r1",
            "gt_rank_mean",
            "text_tokens_per_query",
            "latent_tokens_per_query",
        ):
            assert metric in result, f"{key} lacks {metric}"
        traces = (out / "eval" / key / "traces.jsonl").read_text().splitlines()
        assert len(traces) == 4, f"{key}: expected one trace per evaluated query"
        for line in traces:
            assert 1 <= len(json.loads(line)["turns"]) <= turns
    for key in ("sqr_2__vs__single_shot", "sqr_2__vs__next_2", "oracle_sqr_2__vs__oracle_next_2"):
        assert all(len(pair) == 2 for pair in summary["paired_ci"][key].values()), key
    assert 50 <= summary["majority_rate"] <= 100
    assert summary["learning_curve"][0]["eval/examples_seen"] == 0
    assert len(summary["learning_curve"]) >= 2
    table = (out / "results.md").read_text()
    assert "Single shot (no refinement)" in table and "Next candidate, 2 turns, oracle verifier" in table
    assert " vs " in table  # the paired intervals
    for plot in (out / "eval" / "plots" / "variants.png", out / "plots" / "learning_curve.png"):
        assert plot.read_bytes()[:8] == PNG_MAGIC
    assert (out / "report.html").read_text().count('<article class="card"') == 4 * len(expected_keys(turns))
    for stage in STAGES:
        record = json.loads((out / "stages" / f"{stage}.json").read_text())
        assert record["stage"] == stage and record["seconds"] >= 0

    second = run_tiny_demo(out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("done earlier, skipped") == len(STAGES)
    assert json.loads((out / "summary.json").read_text())["results"] == summary["results"]

    fresh = run_tiny_demo(tmp_path / "again")
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["results"] == summary["results"]
    for key in expected_keys(turns):
        traces = (tmp_path / "again" / "eval" / key / "traces.jsonl").read_text()
        assert traces == (out / "eval" / key / "traces.jsonl").read_text().replace(
            str(out), str(tmp_path / "again")
        ), f"{key}: traces differ between two runs with the same seed"
