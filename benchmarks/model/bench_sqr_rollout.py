"""SQR latent rollout: KV-cached (one single-position step per latent) vs full re-forward per latent.

Both run the same composite policy on the same batch; the cached rollout is also checked to give the
same latents. Reps are interleaved (cached, re-forward, cached, ...) so drift in machine load hits
both alike; the table reports medians and the speedup ratio, then one JSON line.

    python benchmarks/model/bench_sqr_rollout.py --latents 8 --reps 5
    python benchmarks/model/bench_sqr_rollout.py --weights smollm2   # real SmolLM2-135M weights (slower load)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from vsr_model.backbones import tiny_frame_encoder
from vsr_model.policy.base import VerifyInput
from vsr_model.policy.composite import CompositePolicyConfig, CompositeVideoPolicy, default_llm_location
from vsr_model.protocol import format_response
from vsr_model.sqr import SQRConfig, latent_rollout, latent_rollout_reforward


@dataclass
class Clip:
    frames: np.ndarray
    timestamps: np.ndarray
    duration: float


def build_policy(weights: str, embed_dim: int, query_input_dim: int, frame_size: int) -> CompositeVideoPolicy:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    location, gguf = default_llm_location()
    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf)
    if weights == "smollm2":
        lm = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf, dtype=torch.float32)
    else:
        # SmolLM2-135M's architecture with random weights: same compute, no de-quantisation wait.
        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(location, gguf_file=gguf))
    config = CompositePolicyConfig(llm=location, gguf_file=gguf, frame_encoder="tiny", frame_size=frame_size)
    sqr = SQRConfig(embed_dim=embed_dim, query_input_dim=query_input_dim)
    policy = CompositeVideoPolicy(
        lm, tokenizer, tiny_frame_encoder(image_size=frame_size), config, sqr
    ).eval()
    with torch.no_grad():  # a trained readout: random last layer instead of the zero init
        policy.sqr.readout.out.weight.normal_(0, 0.05)
    return policy


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", choices=["random", "smollm2"], default="random")
    parser.add_argument("--latents", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=32, help="frames per video (one prompt token each)")
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--embed-dim", type=int, default=384)
    parser.add_argument("--query-input-dim", type=int, default=384)
    args = parser.parse_args()
    if args.reps < 5:
        parser.error("--reps must be >= 5 for a meaningful median")
    if args.threads:
        torch.set_num_threads(args.threads)

    policy = build_policy(args.weights, args.embed_dim, args.query_input_dim, args.frame_size)
    rng = np.random.default_rng(0)
    items, completions = [], []
    for i in range(args.batch):
        frames = rng.integers(0, 256, (args.frames, 96, 128, 3), dtype=np.uint8)
        times = np.linspace(0.0, 60.0 + 10 * i, args.frames)
        items.append(
            VerifyInput(
                f"a person opens the door and walks to the kitchen {i}", Clip(frames, times, 61.0 + 10 * i)
            )
        )
        completions.append(format_response("The person in the video is cooking, not opening a door.", False))
    batch = policy.encode(items, completions)
    prompt_tokens = int(batch.attention_mask.sum(1).float().mean())

    with torch.no_grad():
        cached = latent_rollout(policy, batch, args.latents).latents
        reference = latent_rollout_reforward(policy, batch, args.latents).latents
        max_diff = float((cached - reference).abs().max())
        times: dict[str, list[float]] = {"cached": [], "reforward": []}
        for _ in range(args.reps):
            for name, fn in (("cached", latent_rollout), ("reforward", latent_rollout_reforward)):
                start = time.perf_counter()
                fn(policy, batch, args.latents)
                times[name].append(time.perf_counter() - start)

    cached_ms = statistics.median(times["cached"]) * 1e3
    reforward_ms = statistics.median(times["reforward"]) * 1e3
    result = {
        "benchmark": "sqr_rollout",
        "weights": args.weights,
        "latents": args.latents,
        "batch": args.batch,
        "prompt_tokens": prompt_tokens,
        "reps": args.reps,
        "threads": torch.get_num_threads(),
        "cached_ms_median": round(cached_ms, 2),
        "reforward_ms_median": round(reforward_ms, 2),
        "speedup": round(reforward_ms / cached_ms, 2),
        "max_abs_latent_diff": max_diff,
    }
    print(
        f"SQR rollout, N={args.latents} latents, batch {args.batch}, ~{prompt_tokens} prompt tokens, "
        f"{args.weights} SmolLM2-135M, {result['threads']} threads, median of {args.reps} interleaved reps"
    )
    print("| rollout | median ms | vs cached |\n| --- | --- | --- |")
    print(f"| KV-cached | {cached_ms:.1f} | 1.00x |")
    print(f"| full re-forward | {reforward_ms:.1f} | {reforward_ms / cached_ms:.2f}x |")
    print(f"max |cached - reforward| latent difference: {max_diff:.2e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
