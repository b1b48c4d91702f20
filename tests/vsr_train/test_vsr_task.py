"""Stage 1 and Stage 2 on the real VideoSearch-R1 task: a tiny composite policy, a random dual-encoder
engine over decoded synthetic-benchmark videos, examples from the engine's top-1 (in one process)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from vsr_train.config import GRPOConfig, SFTConfig, config_from_dict
from vsr_train.grpo import run_grpo
from vsr_train.run_log import read_metrics
from vsr_train.sft import run_sft
from vsr_train.tiny import tiny_search_setup, tiny_video_policy
from vsr_train.vsr_adapter import build_examples, read_examples

pytestmark = pytest.mark.slow


@dataclass
class Hit:
    video_id: str
    score: float


class ScriptedEngine:
    """Returns a chosen top-1 per query text, then the other videos."""

    def __init__(self, top1: dict[str, str], ids: list[str]) -> None:
        self.top1, self.ids = top1, ids

    def search(self, texts, k):
        return [
            [Hit(self.top1[t], 1.0), *[Hit(v, 0.0) for v in self.ids if v != self.top1[t]][: k - 1]]
            for t in texts
        ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vsr_model.corpus import Corpus
    from vsr_model.data import read_moments

    root = tmp_path_factory.mktemp("vsr")
    engine, _ = tiny_search_setup(root / "bench")
    # Index the training videos too: training queries retrieve from the train split.
    train = Corpus.from_jsonl(root / "bench" / "videos.jsonl", split="train", sampling=engine.config.sampling)
    with torch.no_grad():
        engine.add_videos(train.ids, engine.encode_videos([train.clip(v) for v in train.ids]))
    engine.save(root / "engine")
    moments = read_moments(root / "bench" / "annotations" / "synth_train.jsonl").moments
    # A random engine rarely retrieves the right video; script its top-1 so both labels occur.
    scripted = ScriptedEngine(
        {
            m.query: (
                m.video_id if i % 2 == 0 else train.ids[(train.ids.index(m.video_id) + 1) % len(train.ids)]
            )
            for i, m in enumerate(moments)
        },
        train.ids,
    )
    rows = build_examples(moments, scripted, per_class=2, seed=0, num_hard_negatives=3)
    (root / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    policy = tiny_video_policy(engine.embed_dim, engine.query_input_dim, num_latents=2, num_negatives=4)
    policy.save_pretrained(root / "policy")
    return root


def test_examples_are_balanced_and_labelled_by_the_engine(setup):
    examples = read_examples(setup / "examples.jsonl")
    assert sum(e.matched for e in examples) == 2 and sum(not e.matched for e in examples) == 2
    for e in examples:
        assert e.matched == (e.retrieved == e.video_id)
        assert e.video_id not in e.hard_negatives and e.rationale


def _common(root, out):
    return {
        "output_dir": str(out),
        "model": {"kind": "vsr_policy", "name_or_path": str(root / "policy")},
        "data": {
            "kind": "vsr_jsonl",
            "path": str(root / "examples.jsonl"),
            "engine_dir": str(root / "engine"),
            "corpus": str(root / "bench" / "videos.jsonl"),
        },
        "deepspeed": {
            "config": "zero2",
            "precision": "fp32",
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "dist_backend": "gloo",
        },
        "checkpoint": {"every_steps": 100},
        "logging": {"progress_bar": False, "tensorboard": False},
    }


def test_sft_then_single_and_multi_turn_grpo(setup, tmp_path):
    sft = config_from_dict(
        SFTConfig,
        _common(setup, tmp_path / "sft") | {"max_steps": 2, "num_negatives": 4, "optim": {"lr": 1e-3}},
    )
    final = run_sft(sft)
    records = read_metrics(tmp_path / "sft" / "metrics.jsonl")
    assert len(records) == 2
    assert all(r["loss/infonce"] > 0 and r["loss/ce"] > 0 for r in records)
    # CE + 0.3 * InfoNCE, exactly as logged.
    assert records[0]["loss"] == pytest.approx(
        records[0]["loss/ce"] + 0.3 * records[0]["loss/infonce"], rel=1e-5
    )
    assert (final / "hf" / "vsr_policy.json").is_file() and (final / "hf" / "sqr_heads.safetensors").is_file()

    for mode, turns, train_heads in (("single_turn", 1, False), ("multi_turn", 2, True)):
        out = tmp_path / f"grpo-{mode}"
        cfg = _common(setup, out)
        cfg["model"]["name_or_path"] = str(final / "hf")
        cfg["deepspeed"]["micro_batch_size"] = 2
        cfg |= {
            "max_steps": 1,
            "rollout": {"mode": mode, "max_turns": turns, "train_sqr_heads": train_heads},
            "grpo": {"group_size": 2, "max_completion_tokens": 8},
            "optim": {"lr": 1e-4},
        }
        run_grpo(config_from_dict(GRPOConfig, cfg))
        record = read_metrics(out / "metrics.jsonl")[0]
        assert record["kl"] == pytest.approx(0.0, abs=1e-6) and record["ratio"] == pytest.approx(
            1.0, abs=1e-6
        )
        for name in (
            "verification",
            "think_format",
            "time_format",
            "temporal_iou",
            "refine_presence",
            "retrieval",
        ):
            assert f"reward/{name}" in record
        assert 1.0 <= record["reward/turns"] <= turns


def test_sqr_heads_train_on_the_retrieval_objective_during_grpo(setup, tmp_path):
    from vsr_model.policy import VerifyInput, load_policy
    from vsr_model.protocol import format_response
    from vsr_train.models import LoadedModel
    from vsr_train.runtime import DistInfo
    from vsr_train.vsr_adapter import VideoSearchGRPOTask, _MicroBatch, _Turn

    cfg = _common(setup, tmp_path / "aux")
    cfg |= {
        "rollout": {"mode": "multi_turn", "max_turns": 2, "train_sqr_heads": True},
        "grpo": {"group_size": 2},
    }
    cfg = config_from_dict(GRPOConfig, cfg)
    policy = load_policy(setup / "policy")
    task = VideoSearchGRPOTask(cfg, LoadedModel(policy, None), DistInfo(0, 0, 1, torch.device("cpu")))
    assert all(p.requires_grad for p in policy.sqr.parameters())
    example = next(e for e in task.ctx.examples if not e.matched)
    item = VerifyInput(example.query, task.ctx.corpus.clip(example.retrieved))
    with_refine = policy.tokenizer.encode(format_response("no", False), add_special_tokens=False)
    without = with_refine[: with_refine.index(policy.refine_token_id)]
    turns = [_Turn(0, item, with_refine, example.retrieved), _Turn(1, item, without, example.retrieved)]
    micro = _MicroBatch(
        policy.encode([t.item for t in turns], [t.token_ids for t in turns]),
        turns,
        [example, example],
        [example.retrieved] * 2,
    )
    loss, metrics = task.auxiliary_loss(policy, micro)
    assert loss.item() == pytest.approx(0.3 * metrics["loss/sqr_infonce"], rel=1e-5)
    loss.backward()
    assert policy.sqr.readout.out.weight.grad.abs().sum() > 0
    # Without any <REFINE> there is nothing to train the heads on.
    assert (
        task.auxiliary_loss(policy, _MicroBatch(micro.encoded, turns[1:], [example], [example.retrieved]))
        is None
    )
