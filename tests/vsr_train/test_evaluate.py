"""`vsr eval` end to end on a tiny synthetic benchmark: traces, summary, results table and plot."""

from __future__ import annotations

import json

import pytest

from vsr_train.config import EvalConfig
from vsr_train.evaluate import PAPER_COLUMNS, derive_shorter_run, paper_table, run_eval
from vsr_train.tiny import tiny_search_setup, tiny_video_policy


def test_paper_table_layout():
    summary = {key: 10.0 + i for i, (key, _) in enumerate(PAPER_COLUMNS)}
    table = paper_table([("SQR", summary), ("HQR", {"miou": 3.0})])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Method | VCMR R@1 IoU=0.3 | IoU=0.5 | IoU=0.7 |")
    assert lines[2] == "| SQR | " + " | ".join(f"{10.0 + i:.1f}" for i in range(len(PAPER_COLUMNS))) + " |"
    assert lines[3].count("n/a") == len(PAPER_COLUMNS) - 1


@pytest.mark.slow
def test_eval_writes_every_artifact(tmp_path):
    root = tmp_path / "bench"
    engine, corpus = tiny_search_setup(root)
    policy = tiny_video_policy(engine.embed_dim, engine.query_input_dim)
    out = tmp_path / "eval"
    cfg = EvalConfig(
        output_dir=str(out),
        policy="in-memory",
        engine_dir="in-memory",
        corpus=str(root / "videos.jsonl"),
        queries=str(root / "annotations" / "synth_test.jsonl"),
        max_queries=3,
        batch_size=2,
        max_turns=2,
        max_new_tokens=12,
        top_k=3,
        dist_backend="gloo",
    )
    summary_path = run_eval(cfg, policy=policy, engine=engine, corpus=corpus)
    summary = json.loads(summary_path.read_text())
    assert summary["summary"]["queries"] == 3.0
    assert [row["turn"] for row in summary["per_turn"]] == [1.0, 2.0]
    traces = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 3 and all(t["turns"] for t in traces)
    assert summary["summary"]["generated_tokens_per_query"] > 0
    assert (out / "results.md").read_text().startswith("| Method |")
    assert (out / "per_turn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.html").read_text().count('<article class="card"') == 3

    # Shorter runs cut from this one's traces: the single-shot agent and SQR with one turn.
    single = json.loads(
        derive_shorter_run(out, tmp_path / "single", "single", 1, final_refine=False).read_text()
    )
    one = json.loads(derive_shorter_run(out, tmp_path / "one", "one", 1).read_text())
    assert single["config"]["refinement"] == "none" and one["config"]["max_turns"] == 1
    assert single["summary"]["mean_turns"] == one["summary"]["mean_turns"] == 1.0
    assert single["summary"]["vr_post_refinement_r1"] == single["summary"]["vr_verified_r1"]
    full_tokens = summary["summary"]["generated_tokens_per_query"]
    assert single["summary"]["generated_tokens_per_query"] <= one["summary"]["generated_tokens_per_query"]
    assert one["summary"]["generated_tokens_per_query"] <= full_tokens
    with pytest.raises(ValueError, match="cannot cut 3 turns"):
        derive_shorter_run(out, tmp_path / "three", "three", 3)
