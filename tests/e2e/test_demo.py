"""`vsr demo` end to end at the tiniest size: every stage runs through the real code paths (decoded
video, engine fit, vsr_index corpus, Stage-1 data, SFT and GRPO under DeepSpeed, five evaluations)
with randomly initialised miniature models, and every artifact is produced and well-formed. A rerun
resumes: nothing is recomputed and the results are unchanged. A fresh run with the same seed in
another folder reproduces the results."""

import json

import pytest

from vsr_train.demo import VARIANTS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGES = [
    "benchmark",
    "engine",
    "corpus_train",
    "corpus_test",
    "stage1_data",
    "policy_base",
    "policy_init",
    "sft",
    "grpo",
]


@pytest.mark.slow
def test_tiny_demo_produces_every_artifact_and_resumes(tiny_demo, run_tiny_demo, tmp_path):
    out = tiny_demo.check()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["seed"] == 3 and summary["settings"]["size"] == "tiny"
    assert set(summary["results"]) == {v.key for v in VARIANTS}
    for key, result in summary["results"].items():
        for metric in (
            "vcmr_r1_iou0.3",
            "vcmr_r1_iou0.5",
            "vcmr_r1_iou0.7",
            "ver_strict",
            "vr_post_refinement_r1",
            "generated_tokens_per_query",
        ):
            assert metric in result, f"{key} lacks {metric}"
        traces = (out / "eval" / key / "traces.jsonl").read_text().splitlines()
        assert len(traces) == 4, f"{key}: expected one trace per evaluated query"
        for line in traces:
            turns = json.loads(line)["turns"]
            assert 1 <= len(turns) <= {v.key: v.turns for v in VARIANTS}[key]
    table = (out / "results.md").read_text()
    for variant in VARIANTS:
        assert variant.title in table
    for plot in ("variants.png", "sqr_per_turn.png"):
        assert (out / "plots" / plot).read_bytes()[:8] == PNG_MAGIC
    assert (out / "report.html").read_text().count('<article class="card"') == 4 * len(VARIANTS)
    for stage in STAGES + [f"eval_{v.key}" for v in VARIANTS]:
        record = json.loads((out / "stages" / f"{stage}.json").read_text())
        assert record["stage"] == stage and record["seconds"] >= 0

    second = run_tiny_demo(out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("done earlier, skipped") == len(STAGES) + len(VARIANTS)
    assert json.loads((out / "summary.json").read_text())["results"] == summary["results"]

    fresh = run_tiny_demo(tmp_path / "again")
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["results"] == summary["results"]
    for variant in VARIANTS:
        traces = (tmp_path / "again" / "eval" / variant.key / "traces.jsonl").read_text()
        assert traces == (out / "eval" / variant.key / "traces.jsonl").read_text().replace(
            str(out), str(tmp_path / "again")
        ), f"{variant.key}: traces differ between two runs with the same seed"
