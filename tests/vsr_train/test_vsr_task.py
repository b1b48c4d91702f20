"""Stage 1 and Stage 2 on the real VideoSearch-R1 task: a tiny composite policy, a random dual-encoder
engine over decoded synthetic-benchmark videos, examples from the engine's top-1 (in one process)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from train_helpers import build_vsr_setup, vsr_config

from vsr_train.config import GRPOConfig, SFTConfig, config_from_dict
from vsr_train.grpo import run_grpo
from vsr_train.run_log import read_metrics
from vsr_train.sft import run_sft
from vsr_train.vsr_examples import read_examples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return build_vsr_setup(tmp_path_factory.mktemp("vsr"))


def test_examples_are_balanced_labelled_and_carry_teacher_rationales(setup):
    examples = read_examples(setup / "examples.jsonl")
    assert sum(e.matched for e in examples) == 2 and sum(not e.matched for e in examples) == 2
    assert sorted(e.mode for e in examples) == ["hard", "hard", "soft", "soft"]
    for e in examples:
        assert e.matched == (e.retrieved == e.video_id)
        assert e.video_id not in e.hard_negatives
        assert e.rationale.startswith("Query: ") and ("Match." if e.matched else "Differs: ") in e.rationale
        assert (e.rewrite is not None) == (e.mode == "hard")


def test_sft_then_single_and_multi_turn_grpo(setup, tmp_path):
    sft = config_from_dict(
        SFTConfig,
        vsr_config(setup, tmp_path / "sft") | {"max_steps": 2, "optim": {"lr": 1e-3}},
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
        cfg = vsr_config(setup, out)
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
    from vsr_train.policy_loader import LoadedModel
    from vsr_train.runtime import DistInfo
    from vsr_train.vsr_task import VideoSearchGRPOTask, _MicroBatch, _Turn

    cfg = vsr_config(setup, tmp_path / "aux")
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


def test_multi_turn_rollout_re_retrieves_each_group_through_refine_group(setup, tmp_path, monkeypatch):
    from vsr_model.policy import load_policy
    from vsr_model.protocol import format_response
    from vsr_train.policy_loader import LoadedModel
    from vsr_train.runtime import DistInfo
    from vsr_train.vsr_task import VideoSearchGRPOTask

    group, turns = 3, 3
    cfg = vsr_config(setup, tmp_path / "rollout")
    cfg |= {
        "rollout": {"mode": "multi_turn", "max_turns": turns},
        "grpo": {"group_size": group},
    }
    cfg = config_from_dict(GRPOConfig, cfg)
    policy = load_policy(setup / "policy")
    task = VideoSearchGRPOTask(cfg, LoadedModel(policy, None), DistInfo(0, 0, 1, torch.device("cpu")))
    engine = task.ctx.engine
    # Every sampled answer rejects the video and refines, so every trajectory takes all turns.
    from vsr_model.policy.base import Generation

    rejection = format_response("the video shows something else", False)
    rejection_ids = policy.tokenizer.encode(rejection, add_special_tokens=False)
    assert rejection_ids[-1] == policy.refine_token_id
    monkeypatch.setattr(
        policy,
        "generate",
        lambda batch, settings: Generation(
            [list(rejection_ids)] * batch.batch_size, [rejection] * batch.batch_size
        ),
    )
    calls = []
    real_refine_group = engine.refine_group

    def spy(original, refined, k, exclude=()):
        calls.append((refined.clone(), k, set(exclude)))
        return real_refine_group(original, refined, k, exclude)

    def no_sessions(*args, **kwargs):
        raise AssertionError("the group rollout must not open one session per trajectory")

    monkeypatch.setattr(engine, "refine_group", spy)
    monkeypatch.setattr(engine, "session", no_sessions)
    prompts = [0, 1]
    rollouts = task.rollout(policy, prompts, cfg.grpo, 1, torch.device("cpu"), False)

    assert rollouts.reward_components["turns"].tolist() == [float(turns)] * (group * len(prompts))
    # One refine_group call per group and re-retrieval turn, with the group's G refined queries.
    assert len(calls) == len(prompts) * (turns - 1)
    assert all(refined.shape[0] == group for refined, _, _ in calls)
    shown: dict[int, list[str]] = {}
    for turn in rollouts.micro_batches[0].turns:
        shown.setdefault(turn.trajectory, []).append(turn.shown)
    for t, videos in shown.items():
        assert len(videos) == turns and len(set(videos)) == turns, (t, videos)  # never shown twice
    # Calls run turn by turn, prompt by prompt; each row's video is the exhaustive best of its refined
    # query among the videos that trajectory has not seen yet.
    for c, (refined, _, _) in enumerate(calls):
        turn, prompt = 1 + c // len(prompts), c % len(prompts)
        for row in range(group):
            t = prompt * group + row
            best = engine.search(refined[row : row + 1], 1, exclude=[set(shown[t][:turn])])[0][0].video_id
            assert shown[t][turn] == best


@pytest.mark.parametrize("name", ["sft.yaml", "grpo.yaml", "eval.yaml"])
def test_every_shipped_config_starts_through_the_real_start_up_path(setup, tmp_path, name):
    """The shipped YAML as a user copies it (bf16 and ZeRO as shipped), only its paths pointed at the tiny
    stack and its sizes cut to one step, runs the real stage."""
    from importlib import resources

    import yaml

    from vsr_train.config import EvalConfig, load_config
    from vsr_train.evaluate import run_eval

    data = yaml.safe_load(resources.files("vsr_train").joinpath("configs", name).read_text())
    data["output_dir"] = str(tmp_path / "out")
    tiny = vsr_config(setup, tmp_path / "out")
    if name == "eval.yaml":
        data.update(policy=tiny["model"]["name_or_path"], engine_dir=tiny["data"]["engine_dir"],
                    corpus=tiny["data"]["corpus"], corpus_split=None, max_queries=2,
                    queries=str(setup / "bench" / "annotations" / "synth_test.jsonl"), bootstrap_samples=50)  # fmt: skip
        data["agent"]["generation"]["max_new_tokens"] = 6
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        summary = json.loads(run_eval(load_config(EvalConfig, path)).read_text())
        assert summary["queries"] == 2 and "sqr_2__vs__next_2" in summary["paired_ci"]
        return
    data["model"]["name_or_path"] = tiny["model"]["name_or_path"]
    data["data"] = tiny["data"]
    data["max_steps"] = 1
    data["checkpoint"] = {"every_steps": 1, "keep_last": 1}
    data["deepspeed"].update(micro_batch_size=2, gradient_accumulation_steps=1, dist_backend="gloo")
    data["infonce"]["num_negatives"] = 4
    assert data["deepspeed"]["precision"] == "bf16"  # the composite policy trains in bf16 as shipped
    if name == "grpo.yaml":
        data["grpo"].update(group_size=2, max_completion_tokens=6)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    if name == "sft.yaml":
        final = run_sft(load_config(SFTConfig, path))
    else:
        final = run_grpo(load_config(GRPOConfig, path))
    assert (final / "hf" / "vsr_policy.json").is_file()
    record = read_metrics(tmp_path / "out" / "metrics.jsonl")[0]
    assert math.isfinite(record["loss"])


def test_rollout_and_evaluation_run_the_same_agent(setup, tmp_path, monkeypatch):
    """The GRPO rollout (group search) and the evaluation's agent give the same turns, verdicts and
    retrieved videos for the same policy and queries when decoding is the same (greedy: both members of
    a group then follow the evaluation's trajectory)."""
    import dataclasses
    import hashlib

    from vsr_model.agent import AgentConfig, run_agent
    from vsr_model.data.records import Moment
    from vsr_model.policy import GenerationSettings, load_policy
    from vsr_model.policy.base import Generation
    from vsr_model.protocol import format_response
    from vsr_train.policy_loader import LoadedModel
    from vsr_train.runtime import DistInfo
    from vsr_train.vsr_task import VideoSearchGRPOTask

    turns = 3
    cfg = vsr_config(setup, tmp_path / "same")
    cfg |= {"rollout": {"mode": "multi_turn", "max_turns": turns}, "grpo": {"group_size": 2}}
    cfg = config_from_dict(GRPOConfig, cfg)
    policy = load_policy(setup / "policy")
    task = VideoSearchGRPOTask(cfg, LoadedModel(policy, None), DistInfo(0, 0, 1, torch.device("cpu")))
    # A scripted verifier whose answer depends on the prompt it is given: rejections refine through the
    # real SQR heads and the real engine.
    accept = format_response("the moment is there", True, (0.0, 1.0))
    reject = format_response("the video shows something else", False)

    def scripted(batch, settings):
        assert not settings.do_sample
        # The prompt (query and frame tokens) without padding, which depends on the batch's make-up.
        prompts = [row[mask.bool()] for row, mask in zip(batch.input_ids, batch.attention_mask, strict=True)]
        texts = [accept if hashlib.blake2b(p.numpy().tobytes()).digest()[0] % 2 else reject for p in prompts]
        return Generation([policy.tokenizer.encode(t, add_special_tokens=False) for t in texts], texts)

    monkeypatch.setattr(policy, "generate", scripted)
    greedy = GenerationSettings(max_new_tokens=32, do_sample=False)
    rollout_agent = task.agent_config
    monkeypatch.setattr(
        task, "agent_config", lambda n: dataclasses.replace(rollout_agent(n), generation=greedy)
    )
    prompts = list(range(len(task.ctx.examples)))
    rollouts = task.rollout(policy, prompts, cfg.grpo, 1, torch.device("cpu"), False)
    by_rollout: dict[int, list[tuple[str, list[int]]]] = {}
    for turn in rollouts.micro_batches[0].turns:
        by_rollout.setdefault(turn.trajectory, []).append((turn.shown, turn.token_ids))

    eval_agent = dataclasses.replace(
        AgentConfig(), max_turns=turns, final_refine=False, generation=greedy, batch_size=3
    )
    moments = [
        Moment("synth", "train", e.query_id, e.query, e.video_id, e.start, e.end) for e in task.ctx.examples
    ]
    traces = run_agent(policy, task.ctx.engine, task.ctx.corpus, moments, eval_agent)
    by_eval = {
        i: [(t.shown_video, list(t.completion_ids)) for t in trace.turns] for i, trace in enumerate(traces)
    }
    assert by_rollout == {t: by_eval[t // 2] for t in range(2 * len(by_eval))}
    # Accepting and refining trajectories both occur, so the comparison covers refinement and exclusion.
    lengths = sorted(len(v) for v in by_eval.values())
    assert lengths[0] < turns and lengths[-1] > 1, lengths
