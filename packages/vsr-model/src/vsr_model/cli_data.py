"""`vsr data ...`: generate the synthetic benchmark, inspect annotation files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vsr_model.config import config_from_dict


def _synth(args: argparse.Namespace) -> int:
    import yaml

    from vsr_model.data.synth import PRESETS, SynthConfig, generate

    values: dict = dict(PRESETS[args.preset])
    if args.config:
        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise SystemExit(f"{args.config}: expected a mapping of SynthConfig fields")
        values.update(loaded)
    for name in ("num_train", "num_val", "num_test", "seed", "height", "width", "fps"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    config = config_from_dict(SynthConfig, values, args.config or "synth settings")
    meta = generate(config, args.out, workers=args.workers, overwrite=args.overwrite)
    print(json.dumps({"out": str(args.out), "splits": meta["splits"]}, indent=2))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from vsr_model.data import AnnotationError, read_moments

    try:
        result = read_moments(args.path, args.format, skip_malformed=args.skip_malformed)
    except (AnnotationError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    moments = result.moments
    lengths = [m.end - m.start for m in moments]
    summary = {
        "file": str(result.source),
        "moments": len(moments),
        "videos": len({m.video_id for m in moments}),
        "skipped": len(result.skipped),
        "clipped_to_duration": result.clipped,
        "mean_moment_seconds": sum(lengths) / len(lengths) if lengths else 0.0,
    }
    print(json.dumps(summary, indent=2))
    for row in result.skipped[: args.show_skipped]:
        print(f"skipped {row.location}: {row.reason}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from vsr_model.data.readers import FORMATS
    from vsr_model.data.synth import PRESETS

    parser = subparsers.add_parser("data", help="datasets: synthetic benchmark, annotation files")
    sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")

    synth = sub.add_parser(
        "synth", help="generate the deterministic synthetic VCMR benchmark (mp4 + TVR jsonl)"
    )
    synth.add_argument("out", type=Path, help="output folder")
    synth.add_argument(
        "--preset", choices=sorted(PRESETS), default="small", help="split sizes (default: small)"
    )
    synth.add_argument("--config", help="YAML file of SynthConfig fields (applied over the preset)")
    for name in ("num_train", "num_val", "num_test", "seed", "height", "width", "fps"):
        synth.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None)
    synth.add_argument("--workers", type=int, default=1, help="processes rendering videos")
    synth.add_argument(
        "--overwrite", action="store_true", help="replace a benchmark generated with another config"
    )
    synth.set_defaults(func=_synth)

    inspect = sub.add_parser(
        "inspect", help="read an annotation file and print a summary (errors name file and line)"
    )
    inspect.add_argument("path", type=Path)
    inspect.add_argument("--format", choices=FORMATS, default=None, help="inferred when omitted")
    inspect.add_argument(
        "--skip-malformed", action="store_true", help="skip and count malformed rows instead of failing"
    )
    inspect.add_argument("--show-skipped", type=int, default=20, help="how many skipped rows to list")
    inspect.set_defaults(func=_inspect)
    parser.set_defaults(func=lambda a: parser.print_help() or 2)
