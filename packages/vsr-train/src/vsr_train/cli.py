"""`vsr train ...` and `vsr eval` subcommands (registered through the `vsr.commands` entry points).

Distributed runs start the same subcommands under a launcher through ``python -m vsr_train``::

    deepspeed --num_gpus 8 --module vsr_train train grpo --config grpo.yaml
    deepspeed --hostfile hosts --module vsr_train train grpo --config grpo.yaml
    torchrun --nproc_per_node 8 -m vsr_train train sft --config sft.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

_OVERRIDE_HELP = "override a config value, e.g. --set optim.lr=1e-5 (repeatable; values parsed as YAML)"


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file (unknown keys are an error)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=_OVERRIDE_HELP
    )
    # The deepspeed launcher appends --local_rank; the rank is read from the launcher's environment.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)


def _sft(args: argparse.Namespace) -> int:
    from vsr_train.config import SFTConfig, load_config
    from vsr_train.sft import run_sft

    _setup_logging()
    final = run_sft(
        load_config(SFTConfig, args.config, args.overrides), trust_checkpoint=args.trust_checkpoint
    )
    print(f"final checkpoint: {final}")
    return 0


def _grpo(args: argparse.Namespace) -> int:
    from vsr_train.config import GRPOConfig, load_config
    from vsr_train.grpo import run_grpo

    _setup_logging()
    final = run_grpo(
        load_config(GRPOConfig, args.config, args.overrides), trust_checkpoint=args.trust_checkpoint
    )
    print(f"final checkpoint: {final}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vsr_train.checkpoint import CheckpointError, verify_checkpoint

    try:
        verify_checkpoint(Path(args.checkpoint), checksums=True)
    except CheckpointError as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return 1
    print(f"OK: {args.checkpoint}")
    return 0


def _build_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vsr_model.data import read_moments
    from vsr_model.data.teacher import RationaleFile, SyntheticTeacher, TeacherChain
    from vsr_model.engine.base import SearchEngine
    from vsr_model.fileio import atomic_write_text
    from vsr_train.vsr_examples import ExampleSettings, build_examples

    _setup_logging()
    moments = read_moments(args.annotations, args.format).moments
    engine = SearchEngine.load(args.engine)
    teachers = []
    if args.rationales:
        teachers.append(RationaleFile(args.rationales))
    if args.synthetic_teacher:
        teachers.append(SyntheticTeacher(args.synthetic_teacher, args.rationale_style))
    teacher = TeacherChain(teachers)
    settings = ExampleSettings(
        num_examples=args.num_examples,
        positive_fraction=args.positive_fraction,
        hqr_fraction=args.hqr_fraction,
        candidates=args.candidates,
        num_hard_negatives=args.hard_negatives,
        seed=args.seed,
        natural=args.natural,
    )
    rows = build_examples(moments, engine, teacher, settings)
    atomic_write_text(Path(args.out), "".join(json.dumps(r) + "\n" for r in rows))
    matched = sum(r["matched"] for r in rows)
    hard = sum(r["mode"] == "hard" for r in rows)
    print(
        f"wrote {len(rows)} examples ({matched} matched, {len(rows) - matched} not matched; {hard} in the "
        f"text-rewrite protocol; teacher fallbacks {teacher.fallbacks}) to {args.out}"
    )
    return 0


def _init_policy(args: argparse.Namespace) -> int:
    import json

    from vsr_train.policy_init import init_policy

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = init_policy(
        out=args.out,
        engine_dir=args.engine,
        annotations=args.annotations,
        corpus_file=args.corpus,
        split=args.split,
        policy_dir=args.policy,
        align_epochs=args.align_epochs,
        seed=args.seed,
        synthetic_teacher=args.synthetic_teacher,
        policy_options=json.loads(args.policy_options) if args.policy_options else None,
    )
    print(json.dumps(result, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vsr_train.config import EvalConfig, load_config
    from vsr_train.evaluate import run_eval

    _setup_logging()
    summary_path = run_eval(load_config(EvalConfig, args.config, args.overrides))
    if summary_path is not None:
        print(f"summary: {summary_path}")
    return 0


_LAUNCH_EPILOG = """examples:
  vsr train {stage} --config {stage}.yaml                       one process
  deepspeed --num_gpus 8 --module vsr_train train {stage} --config {stage}.yaml
  deepspeed --hostfile hosts --module vsr_train train {stage} --config {stage}.yaml   (multi-node)
  torchrun --nproc_per_node 8 -m vsr_train train {stage} --config {stage}.yaml
annotated example configs ship in vsr_train/configs/ (sft.yaml, grpo.yaml, eval.yaml and the
DeepSpeed presets zero1/zero2/zero3/zero3_offload.json). A run resumes from its newest complete
checkpoint by default (checkpoint.resume: auto)."""


def _add_trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="resume with DeepSpeed's own loader, which unpickles anything and so can run code from a "
        "tampered checkpoint; needed only for checkpoints holding types outside the built-in allow-list. "
        "Use it only for checkpoints you wrote or otherwise trust",
    )


def register_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="Stage-1 SFT and Stage-2 GRPO on DeepSpeed",
        description="Train the VideoSearch-R1 policy. Run directly for one process, or under the deepspeed "
        "launcher / torchrun for many processes and nodes.",
    )
    sub = parser.add_subparsers(dest="train_command", metavar="TRAIN_COMMAND")
    sft = sub.add_parser(
        "sft",
        help="Stage 1: supervised cold start (CE + lambda * InfoNCE)",
        description="Stage 1: next-token loss on the assistant turn + lambda * InfoNCE of the refined query.",
        epilog=_LAUNCH_EPILOG.format(stage="sft"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(sft)
    _add_trust(sft)
    sft.set_defaults(func=_sft)
    grpo = sub.add_parser(
        "grpo",
        help="Stage 2: GRPO with rewards from vsr_model.rewards",
        description="Stage 2: G samples per prompt, group advantages, clipped surrogate + beta * k3 KL; "
        "single-turn on a pre-retrieved top-1 or multi-turn with re-retrieval (rollout.mode).",
        epilog=_LAUNCH_EPILOG.format(stage="grpo"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(grpo)
    _add_trust(grpo)
    grpo.set_defaults(func=_grpo)
    data = sub.add_parser(
        "build-data",
        help="Stage-1/2 examples: queries with their ground-truth video or a wrong one the engine ranks "
        "high, with teacher rationales",
    )
    data.add_argument("--annotations", required=True, help="annotation file of the training split")
    data.add_argument("--format", default=None, help="annotation format (default: inferred)")
    data.add_argument("--engine", required=True, help="saved search engine folder (with its index)")
    data.add_argument("--out", required=True, help="output jsonl")
    data.add_argument("--num-examples", type=int, default=2000, help="examples in all (paper: 2000)")
    data.add_argument("--positive-fraction", type=float, default=0.5, help="share of matched examples")
    data.add_argument(
        "--hqr-fraction", type=float, default=0.0, help="share in the text-rewrite protocol (HQR baseline)"
    )
    data.add_argument("--candidates", type=int, default=5, help="engine top-k that negatives come from")
    data.add_argument("--hard-negatives", type=int, default=24, help="engine-ranked negatives kept per query")
    data.add_argument(
        "--rationales",
        default=None,
        help="jsonl of teacher rationales {query_id, video_id, rationale[, rewrite]}",
    )
    data.add_argument(
        "--synthetic-teacher",
        default=None,
        help="synthetic benchmark folder: rationales from its ground truth",
    )
    data.add_argument("--rationale-style", default="compact", choices=("compact", "full"))
    data.add_argument(
        "--natural",
        action="store_true",
        help="each query with the engine's own top-1 (no balancing): a turn-1 verification set",
    )
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(func=_build_data)
    init = sub.add_parser(
        "init-policy",
        help="the policy Stage 1 starts from: SQR heads sized for the engine, connector aligned on annotations",
    )
    init.add_argument("--engine", required=True, help="saved search engine folder (sizes the SQR heads)")
    init.add_argument("--out", required=True, help="policy folder to write")
    init.add_argument(
        "--policy", default=None, help="start from this saved policy (default: fresh composite)"
    )
    init.add_argument("--annotations", default=None, help="training annotations (for connector alignment)")
    init.add_argument("--corpus", default=None, help="videos.jsonl of the training videos")
    init.add_argument("--split", default=None, help="corpus split to read (default: all rows)")
    init.add_argument("--align-epochs", type=int, default=30, help="connector alignment epochs (0: none)")
    init.add_argument(
        "--synthetic-teacher",
        default=None,
        help="synthetic benchmark folder: each frame's words from its ground truth",
    )
    init.add_argument(
        "--policy-options",
        default=None,
        help="JSON of composite policy settings for a fresh policy, e.g. "
        '\'{"frame_pooling": "multiscale", "tokens_per_frame": 5, "connector": "vocabulary"}\'',
    )
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(func=_init_policy)
    verify = sub.add_parser("verify-checkpoint", help="check a checkpoint folder against its manifest")
    verify.add_argument("checkpoint", help="a checkpoints/step-XXXXXXXX folder")
    verify.set_defaults(func=_verify)
    parser.set_defaults(func=lambda a: parser.print_help() or 2)


def register_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="multi-turn evaluation: traces, summary, results table, per-turn plot",
        description="Evaluate a policy with the multi-turn agent loop; shard over ranks with torchrun or the "
        "deepspeed launcher.",
    )
    _add_common(parser)
    parser.set_defaults(func=_eval)


def main(argv: list[str] | None = None) -> int:
    """``python -m vsr_train`` entry (the same subcommands as ``vsr``), handy under launchers."""
    parser = argparse.ArgumentParser(prog="python -m vsr_train")
    # `deepspeed --module vsr_train ...` puts --local_rank before the subcommand.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_train(subparsers)
    register_eval(subparsers)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)
