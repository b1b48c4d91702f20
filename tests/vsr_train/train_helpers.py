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


def tiny_video_policy(
    embed_dim: int, query_input_dim: int, num_latents: int = 3, seed: int = 0, num_negatives: int = 24
):
    """A randomly initialised composite video policy (tiny Llama + tiny frame encoder + SQR heads)
    with a byte-level BPE tokenizer trained on the protocol's own words."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from vsr_model.backbones import tiny_frame_encoder
    from vsr_model.policy.composite import CHATML_TEMPLATE, CompositePolicyConfig, CompositeVideoPolicy
    from vsr_model.protocol import build_verify_prompt, format_response
    from vsr_model.sqr import SQRConfig

    corpus = [
        build_verify_prompt("a red circle moves left", 30.0).system,
        build_verify_prompt("a red circle moves left", 30.0, "hard").system,
        format_response("the circle moves at the start", True, (1.5, 12.25)),
        format_response("this video shows a square", False),
        "0123456789 . s < > system user assistant red blue green circle square moves grows appears",
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer) + 2,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
        )
    )
    sqr = SQRConfig(
        embed_dim=embed_dim,
        query_input_dim=query_input_dim,
        num_latents=num_latents,
        num_negatives=num_negatives,
    )
    # The EfficientNet-Lite0 architecture (random weights) under its real name, so a saved policy reloads.
    config = CompositePolicyConfig(llm="tiny", frame_size=32)
    return CompositeVideoPolicy(
        lm, tokenizer, tiny_frame_encoder(image_size=32, seed=seed), config, sqr
    ).eval()


def tiny_search_setup(root: Path):
    """A tiny synthetic benchmark, a randomly initialised dual-encoder engine indexing its test videos."""
    import torch

    from vsr_model.backbones import FrameEncoderConfig
    from vsr_model.corpus import Corpus
    from vsr_model.data.synth import SynthConfig, generate
    from vsr_model.engine.dual import DualEncoderConfig, DualEncoderEngine, PoolerConfig, TextEncoderConfig
    from vsr_model.video import FrameSampling

    generate(SynthConfig(num_train=6, num_val=2, num_test=4, seed=3, height=64, width=80), root)
    sampling = FrameSampling(fps=1.0, max_frames=4)
    engine = DualEncoderEngine(
        DualEncoderConfig(
            text=TextEncoderConfig(name="random-bert", hidden_size=32),
            frames=FrameEncoderConfig(weights="random", image_size=32),
            sampling=sampling,
            pooler=PoolerConfig(hidden_size=32, num_heads=2, num_queries=2),
        )
    )
    corpus = Corpus.from_jsonl(root / "videos.jsonl", split="test", sampling=sampling)
    with torch.no_grad():
        engine.add_videos(corpus.ids, engine.encode_videos([corpus.clip(v) for v in corpus.ids]))
    return engine, corpus
