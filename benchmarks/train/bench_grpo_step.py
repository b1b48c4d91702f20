"""GRPO step time split into video decoding, generation, retrieval, SQR refinement, reward, frozen
log-probs (reference / old policy) and backward (policy forward + backward + optimizer step).

Runs real GRPO steps (vsr_train.grpo.run_grpo, one process) and reads the per-step timings it logs.

Workloads:
  vsr        the VideoSearch-R1 task on decoded synthetic-benchmark videos: a composite video policy
             (a tiny random Llama, or --llm PATH for a real HF LLM), a dual-encoder engine over vsr_index,
             single- or multi-turn rollouts (--mode) with live re-retrieval.
  synthetic  the bare training machinery on a plain causal LM (no retrieval).

Prints a table and a JSON record (also written to --json). Timings from the first step (warm-up) are
excluded. Example:

    python benchmarks/train/bench_grpo_step.py --workload vsr --mode multi_turn --steps 4
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

PHASES = ("video_decode", "generation", "retrieval", "refine", "reward", "frozen_logprobs", "backward")


def _vsr_config(work: Path, args: argparse.Namespace) -> dict:
    from vsr_model.corpus import Corpus
    from vsr_model.data import read_moments
    from vsr_train.tiny import tiny_search_setup, tiny_video_policy
    from vsr_train.vsr_examples import example_row

    engine, _ = tiny_search_setup(work / "bench", num_train=args.videos, num_test=2, split="train")
    train = Corpus.from_jsonl(work / "bench" / "videos.jsonl", split="train", sampling=engine.config.sampling)
    engine.save(work / "engine")
    moments = read_moments(work / "bench" / "annotations" / "synth_train.jsonl").moments
    with torch.no_grad():
        hits = engine.search([m.query for m in moments], 6)
    rows = [example_row(m, h, 4) for m, h in zip(moments, hits, strict=True)]
    (work / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if args.llm:
        policy_path = args.llm
    else:
        tiny_video_policy(engine.embed_dim, engine.query_input_dim, num_latents=8).save_pretrained(
            work / "policy"
        )
        policy_path = str(work / "policy")
    return {
        "model": {"kind": "vsr_policy", "name_or_path": policy_path},
        "data": {
            "kind": "vsr_jsonl",
            "path": str(work / "examples.jsonl"),
            "engine_dir": str(work / "engine"),
            "corpus": str(work / "bench" / "videos.jsonl"),
            "corpus_split": "train",
        },
        "rollout": {"mode": args.mode, "max_turns": 1 if args.mode == "single_turn" else args.max_turns},
        "_corpus_size": len(train),
    }


def _synthetic_config() -> dict:
    return {
        "model": {
            "random_init": {
                "model_type": "llama",
                "vocab_size": 512,
                "hidden_size": 128,
                "intermediate_size": 256,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 512,
            }
        },
        "data": {
            "kind": "synthetic_tokens",
            "num_examples": 256,
            "prompt_length": 32,
            "completion_length": 64,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=("vsr", "synthetic"), default="vsr")
    parser.add_argument("--mode", choices=("single_turn", "multi_turn"), default="multi_turn")
    parser.add_argument("--max-turns", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps (the first is warm-up)")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-completion-tokens", type=int, default=64)
    parser.add_argument("--videos", type=int, default=12, help="synthetic training videos (vsr workload)")
    parser.add_argument(
        "--llm", default=None, help="a saved vsr policy folder instead of the tiny random one"
    )
    parser.add_argument("--json", default=None, help="also write the JSON record here")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is warm-up)")

    from vsr_train.config import GRPOConfig, config_from_dict
    from vsr_train.grpo import run_grpo
    from vsr_train.run_log import read_metrics

    with tempfile.TemporaryDirectory(prefix="bench_grpo_") as tmp:
        work = Path(tmp)
        extra = _vsr_config(work, args) if args.workload == "vsr" else _synthetic_config()
        corpus_size = extra.pop("_corpus_size", None)
        cfg = config_from_dict(
            GRPOConfig,
            extra
            | {
                "output_dir": str(work / "run"),
                "max_steps": args.steps,
                "grpo": {"group_size": args.group_size, "max_completion_tokens": args.max_completion_tokens},
                "deepspeed": {
                    "config": "zero2",
                    "precision": "fp32",
                    "micro_batch_size": args.group_size,
                    "gradient_accumulation_steps": 1,
                },
                "optim": {"lr": 1e-5},
                "checkpoint": {"every_steps": 10**6, "save_hf_model": False},
                "logging": {"progress_bar": False, "tensorboard": False},
            },
            where="bench",
        )
        run_grpo(cfg)
        records = read_metrics(work / "run" / "metrics.jsonl")[1:]

    steps = len(records)
    mean = {p: sum(r.get(f"time/{p}_s", 0.0) for r in records) / steps for p in PHASES}
    step_s = sum(r["time/step_s"] for r in records) / steps
    mean["other"] = max(0.0, step_s - sum(mean.values()))
    result = {
        "benchmark": "grpo_step_time_split",
        "workload": args.workload,
        "mode": args.mode if args.workload == "vsr" else None,
        "group_size": args.group_size,
        "max_completion_tokens": args.max_completion_tokens,
        "corpus_videos": corpus_size,
        "measured_steps": steps,
        "step_seconds": step_s,
        "phase_seconds": mean,
        "phase_share": {k: v / step_s for k, v in mean.items()},
        "retrieval_share": mean["retrieval"] / step_s,
        "retrieval_under_2_percent": mean["retrieval"] / step_s < 0.02,
        "completion_tokens_mean": sum(r["completion_tokens_mean"] for r in records) / steps,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(f"GRPO step time split ({args.workload}, {steps} measured steps, group {args.group_size})")
    print(f"{'phase':<18}{'seconds':>10}{'share':>9}")
    for key, value in mean.items():
        print(f"{key:<18}{value:>10.3f}{100 * value / step_s:>8.1f}%")
    print(f"{'step':<18}{step_s:>10.3f}{100.0:>8.1f}%")
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
