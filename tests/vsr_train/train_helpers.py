"""Helpers for vsr_train tests: tiny random causal-LM configs, launcher invocations, and the tiny
VideoSearch-R1 stack (engine, examples, policy) the vsr_policy runs train on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
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


def build_vsr_setup(root: Path) -> Path:
    """A tiny VideoSearch-R1 stack under ``root``: synthetic benchmark, random dual-encoder engine over
    its train and test videos, balanced Stage-1 examples (engine top-1 scripted so both labels occur),
    and a saved tiny composite policy."""
    import torch

    from vsr_model.corpus import Corpus
    from vsr_model.data import read_moments
    from vsr_model.data.teacher import SyntheticTeacher, TeacherChain
    from vsr_train.tiny import tiny_search_setup, tiny_video_policy
    from vsr_train.vsr_examples import ExampleSettings, build_examples

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
    teacher = TeacherChain([SyntheticTeacher(root / "bench")])
    settings = ExampleSettings(num_examples=4, hqr_fraction=0.5, num_hard_negatives=3, candidates=3)
    rows = build_examples(moments, scripted, teacher, settings)
    (root / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    policy = tiny_video_policy(engine.embed_dim, engine.query_input_dim, num_latents=2)
    policy.save_pretrained(root / "policy")
    return root


def vsr_config(root: Path, out: Path) -> dict:
    """Config mapping of a tiny vsr_policy run on ``build_vsr_setup(root)`` writing to ``out``."""
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
        # The tiny benchmark has 10 videos: room for 4 InfoNCE negatives per query.
        "infonce": {"num_negatives": 4},
    }
