"""Helpers for vsr_train tests: tiny random causal-LM configs and launcher invocations."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

TINY_LLAMA = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def tiny_config(output_dir: Path, stage: str, **sections) -> dict:
    """A complete YAML mapping for a tiny SFT or GRPO run on the synthetic token task."""
    cfg = {
        "output_dir": str(output_dir),
        "seed": 7,
        "model": {"random_init": dict(TINY_LLAMA)},
        "data": {"kind": "synthetic_tokens", "num_examples": 32, "prompt_length": 6, "completion_length": 6},
        "deepspeed": {
            "config": "zero2",
            "precision": "fp32",
            "micro_batch_size": 4,
            "gradient_accumulation_steps": 2,
        },
        "optim": {"lr": 1e-3, "sqr_lr": None},
        "checkpoint": {"every_steps": 2, "keep_last": 0},
        "logging": {"progress_bar": False},
    }
    if stage == "sft":
        cfg["max_steps"] = 4
    else:
        cfg["max_steps"] = 4
        cfg["grpo"] = {"group_size": 4, "beta": 0.05, "max_completion_tokens": 6}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    return env


def run_checked(cmd: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(), **kwargs)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def deepspeed_cmd(num_procs: int, *args: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The deepspeed launcher run with this interpreter (so it spawns the same environment)."""
    return [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(num_procs),
        "--master_port",
        str(free_port()),
        *extra,
        "--module",
        "vsr_train",
        *args,
    ]
