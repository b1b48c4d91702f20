"""Real multi-process runs under the deepspeed launcher (gloo on CPU): ZeRO-2 and ZeRO-3 SFT and GRPO
steps, a simulated two-node run from a hostfile, and kill-and-resume equality."""

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
from train_helpers import clean_env, deepspeed_cmd, free_port, run_checked, tiny_config, write_config

from vsr_train.checkpoint import verify_checkpoint
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
        f"rank-{r:05d}.pt" for r in range(world_size)
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
        assert records[0]["grad_norm"] > 0 and records[0]["lr"] == pytest.approx(1e-3)
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
