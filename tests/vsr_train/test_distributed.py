"""Real multi-process runs under the deepspeed launcher (gloo on CPU): ZeRO-2, ZeRO-3 and ZeRO-3-offload
SFT and GRPO steps (plain causal LM and the VideoSearch-R1 policy), bf16 runs, a simulated two-node run
from a hostfile, and kill-and-resume equality."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import (
    TINY_LLAMA,
    build_vsr_setup,
    clean_env,
    deepspeed_cmd,
    free_port,
    run_checked,
    tiny_config,
    vsr_config,
    write_config,
)

from vsr_train.checkpoint import verify_checkpoint
from vsr_train.data_order import ShardedOrder
from vsr_train.run_log import read_metrics

pytestmark = pytest.mark.slow


def _check_run(out: Path, steps: int, world_size: int) -> list[dict]:
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert all(math.isfinite(r["loss"]) for r in records)
    final = out / "checkpoints" / f"step-{steps:08d}"
    verify_checkpoint(final)
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["world_size"] == world_size
    assert sorted(p.name for p in (final / "rng").iterdir()) == [
        f"rank-{r:05d}.npz" for r in range(world_size)
    ]
    assert (final / "hf" / "model.safetensors").stat().st_size > 10_000  # whole weights, not empty shards
    return records


# 2-process ZeRO-2 SFT is the simulated two-node test below (same launcher, same stage).
@pytest.mark.parametrize(("stage", "zero"), [("sft", "zero3"), ("grpo", "zero2"), ("grpo", "zero3")])
def test_two_process_step(tmp_path, stage, zero):
    out = tmp_path / "run"
    cfg = tiny_config(out, stage, deepspeed={"config": zero}, max_steps=2)
    config = write_config(tmp_path / "c.yaml", cfg)
    run_checked(deepspeed_cmd(2, "train", stage, "--config", str(config)))
    records = _check_run(out, 2, world_size=2)
    if stage == "sft":
        assert records[0]["grad_norm"] > 0 and records[0]["lr/main"] == pytest.approx(1e-3)
    else:
        assert all(0.0 <= r["reward/total"] <= 1.0 for r in records)
        # One optimizer step per GRPO step: every micro-batch of step 1 sees the starting weights, so the
        # policy equals the reference (KL 0) and the old policy (ratio 1) there.
        assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)
        assert records[0]["ratio"] == pytest.approx(1.0, abs=1e-6)
        assert records[1]["kl"] > 0.0
        assert "time/generation_s" in records[0]


def test_simulated_two_node_hostfile(tmp_path):
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_config(out, "sft", max_steps=2))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    port = str(free_port())
    procs = []
    for node_rank in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--hostfile",
            str(hostfile),
            "--no_ssh",
            "--node_rank",
            str(node_rank),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            "--module",
            "vsr_train",
            "train",
            "sft",
            "--config",
            str(config),
        ]
        procs.append(
            subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env()
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-5000:]
    _check_run(out, 2, world_size=2)


def _launch(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vsr_train", "train", "grpo", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        start_new_session=True,
    )


def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    steps = 6
    reference_out, resumed_out = tmp_path / "reference", tmp_path / "resumed"
    common = {
        "max_steps": steps,
        "grpo": {"group_size": 4, "beta": 0.05, "max_completion_tokens": 6, "num_iterations": 2},
    }
    ref_cfg = write_config(tmp_path / "ref.yaml", tiny_config(reference_out, "grpo", **common))
    res_cfg = write_config(tmp_path / "res.yaml", tiny_config(resumed_out, "grpo", **common))
    run_checked([sys.executable, "-m", "vsr_train", "train", "grpo", "--config", str(ref_cfg)])

    # Kill the second run hard once it has finished step 3 (a checkpoint exists at step 2, and the kill
    # may land anywhere in step 4, including inside the step-4 save).
    proc = _launch(res_cfg)
    metrics = resumed_out / "metrics.jsonl"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any(r["step"] >= 3 for r in read_metrics(metrics)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed_out / "checkpoints" / f"step-{steps:08d}").exists()

    run_checked([sys.executable, "-m", "vsr_train", "train", "grpo", "--config", str(res_cfg)])
    reference = read_metrics(reference_out / "metrics.jsonl")
    resumed = read_metrics(resumed_out / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, steps + 1))
    for a, b in zip(reference, resumed, strict=True):
        for key in ("loss", "kl", "reward/total", "grad_norm", "completion_tokens_mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)


# ----------------------------------------------------------------------------------------------------------
# Precision and ZeRO-3-offload on the plain causal LM
# ----------------------------------------------------------------------------------------------------------


def _one_process(stage: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "vsr_train", "train", stage, "--config", str(config)]


def _sane_start(loss: float) -> bool:
    # A randomly initialised LM starts near the uniform cross-entropy ln(vocab).
    return abs(loss - math.log(TINY_LLAMA["vocab_size"])) < 0.5


def test_bf16_sft_learns_and_saves_bf16_weights(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(
        out,
        "sft",
        deepspeed={"precision": "bf16", "micro_batch_size": 8, "gradient_accumulation_steps": 1},
        optim={"lr": 3e-3, "sqr_lr": None},
        epochs=8,
        max_steps=8,
        checkpoint={"every_steps": 8, "keep_last": 0},
    )
    run_checked(_one_process("sft", write_config(tmp_path / "c.yaml", cfg)))
    records = _check_run(out, 8, world_size=1)
    losses = [r["loss"] for r in records]
    assert _sane_start(losses[0])
    assert max(losses[-2:]) < losses[0] - 0.1, losses  # it learns in bf16
    from safetensors.torch import load_file

    weights = load_file(out / "checkpoints" / f"step-{8:08d}" / "hf" / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}


def test_bf16_grpo_step(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(out, "grpo", deepspeed={"precision": "bf16"}, max_steps=2)
    run_checked(_one_process("grpo", write_config(tmp_path / "c.yaml", cfg)))
    records = _check_run(out, 2, world_size=1)
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6) and records[1]["kl"] > 0.0
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in records)


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_zero3_offload_two_processes(tmp_path, stage):
    out = tmp_path / "run"
    cfg = tiny_config(out, stage, deepspeed={"config": "zero3_offload"}, max_steps=2)
    run_checked(deepspeed_cmd(2, "train", stage, "--config", str(write_config(tmp_path / "c.yaml", cfg))))
    records = _check_run(out, 2, world_size=2)
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in records)
    if stage == "sft":
        assert all(_sane_start(r["loss"]) for r in records)
    else:
        assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6) and records[1]["kl"] > 0.0


# ----------------------------------------------------------------------------------------------------------
# The VideoSearch-R1 policy under ZeRO-3
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vsr_root(tmp_path_factory):
    return build_vsr_setup(tmp_path_factory.mktemp("vsr"))


def _vsr_stage(root: Path, out: Path, stage: str, zero: str) -> dict:
    cfg = vsr_config(root, out) | {"max_steps": 1}
    cfg["deepspeed"]["config"] = zero
    if stage == "sft":
        return cfg | {"infonce": {"num_negatives": 4}, "optim": {"lr": 1e-3}}
    return cfg | {
        "rollout": {"mode": "multi_turn", "max_turns": 2},
        "grpo": {"group_size": 2, "max_completion_tokens": 8},
        "optim": {"lr": 1e-4},
    }


def _saved_policy_equals_the_zero3_state(final: Path):
    """The policy folder loads with vsr_model.policy.load_policy and holds exactly the weights of the
    DeepSpeed checkpoint's shards consolidated offline."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from vsr_model.policy import load_policy

    verify_checkpoint(final)
    saved = load_policy(final / "hf").state_dict()
    shards = get_fp32_state_dict_from_zero_checkpoint(str(final / "ds"), tag="state")
    assert sorted(saved) == sorted(shards)
    for name, value in shards.items():
        assert torch.equal(saved[name].float(), value.float()), name
    return saved


def test_zero3_vsr_policy_sft_step_matches_one_process(vsr_root, tmp_path):
    from vsr_model.policy import load_policy
    from vsr_train.config import SFTConfig, config_from_dict
    from vsr_train.policy_loader import LoadedModel
    from vsr_train.runtime import DistInfo
    from vsr_train.vsr_task import VideoSearchSFTTask

    out = tmp_path / "run"
    cfg = _vsr_stage(vsr_root, out, "sft", "zero3")
    run_checked(deepspeed_cmd(2, "train", "sft", "--config", str(write_config(tmp_path / "c.yaml", cfg))))
    record = read_metrics(out / "metrics.jsonl")[0]
    saved = _saved_policy_equals_the_zero3_state(out / "checkpoints" / f"step-{1:08d}")

    # The same step in this one process on the unsharded policy: rank 0's micro-batch, same weights.
    policy = load_policy(vsr_root / "policy").train()
    initial = policy.state_dict()
    assert any(not torch.equal(saved[k], initial[k]) for k in saved)  # the step trained the policy
    task = VideoSearchSFTTask(
        config_from_dict(SFTConfig, cfg), LoadedModel(policy, None), DistInfo(0, 0, 1, torch.device("cpu"))
    )
    indices = ShardedOrder(task.num_examples, 2, 0, 2, cfg.get("seed", 0)).next_batch()
    loss, parts = task.loss(policy, task.batch(indices, torch.device("cpu")))
    assert record["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert record["loss/infonce"] == pytest.approx(parts["loss/infonce"], rel=1e-5)


def test_zero3_vsr_policy_multi_turn_grpo_step_matches_one_process(vsr_root, tmp_path):
    sharded, single = tmp_path / "zero3", tmp_path / "single"
    cfg = write_config(tmp_path / "z3.yaml", _vsr_stage(vsr_root, sharded, "grpo", "zero3"))
    run_checked(deepspeed_cmd(2, "train", "grpo", "--config", str(cfg)))
    _saved_policy_equals_the_zero3_state(sharded / "checkpoints" / f"step-{1:08d}")
    cfg = write_config(tmp_path / "one.yaml", _vsr_stage(vsr_root, single, "grpo", "zero2"))
    run_checked(_one_process("grpo", cfg))
    # Rank 0 draws the same prompt with the same sampling stream as the single process: its rollout on
    # gathered weights, rewards and losses on sharded weights equal the unsharded run's.
    a, b = read_metrics(sharded / "metrics.jsonl")[0], read_metrics(single / "metrics.jsonl")[0]
    compared = [
        k for k in a if k.startswith("reward/") or k in ("loss", "kl", "ratio", "completion_tokens_mean")
    ]
    assert len(compared) > 8
    for key in compared:
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
