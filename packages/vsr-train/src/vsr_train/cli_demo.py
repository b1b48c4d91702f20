"""`vsr demo`: the whole pipeline, end to end, on the offline default stack."""

from __future__ import annotations

import argparse
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from vsr_train.demo import SIZES, DemoSettings, run_demo

    if args.config is not None:
        settings = DemoSettings.from_yaml(args.config, args.out)
    else:
        settings = DemoSettings(out=args.out or Path("runs/demo"))
    if args.size is not None:
        settings.size = args.size
    if args.seed is not None:
        settings.seed = args.seed
    if settings.size not in SIZES:
        raise SystemExit(f"unknown --size {settings.size!r}; expected one of {sorted(SIZES)}")
    run_demo(settings)
    return 0


def register_demo(subparsers: argparse._SubParsersAction) -> None:
    from vsr_train.demo import SIZES

    parser = subparsers.add_parser(
        "demo",
        help="the whole pipeline end to end: benchmark, engine, corpus, SFT, GRPO, evaluation, report",
        description=(
            "Generate the synthetic benchmark (seeded), fit the search engine (MiniLM + EfficientNet-Lite0), "
            "index the corpus, run Stage-1 SFT and a short Stage-2 GRPO on the composite SmolLM2 policy, "
            "evaluate five agent variants and write results.md, summary.json and plots/ to the output "
            "folder. Rerunning with the same settings resumes: finished stages are skipped."
        ),
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/demo)")
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default=None,
        help="tiny (random miniature models, a few minutes: the CI path), cpu (default: real offline weights), gpu",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of every stage (default 0)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML: out, size, seed, benchmark (a real dataset folder), dataset, overrides",
    )
    parser.set_defaults(func=_demo)
