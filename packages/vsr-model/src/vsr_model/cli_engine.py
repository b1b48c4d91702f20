"""`vsr engine ...`: create an engine from settings, fit the dual encoder on a benchmark's train split,
evaluate an indexed engine."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from vsr_model.config import config_from_dict


def load_yaml(path: str | None) -> dict[str, Any]:
    import yaml

    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping")
    return data


def _fit(args: argparse.Namespace) -> int:
    import torch

    from vsr_model.corpus import Corpus
    from vsr_model.data import read_moments
    from vsr_model.engine.dual import DualEncoderConfig, DualEncoderEngine
    from vsr_model.engine.fit import FitConfig, extract_features, fit_pooler
    from vsr_model.fileio import atomic_write_json
    from vsr_model.video import FrameCache

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_yaml(args.config)
    unknown = set(cfg) - {"engine", "fit"}
    if unknown:
        raise SystemExit(f"{args.config}: unknown sections {sorted(unknown)} (expected engine, fit)")
    fit_values = dict(cfg.get("fit", {}))
    for name in ("epochs", "batch_size", "lr", "seed"):
        if getattr(args, name) is not None:
            fit_values[name] = getattr(args, name)
    fit_cfg = config_from_dict(FitConfig, fit_values, f"{args.config or 'fit settings'}: fit")
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = DualEncoderEngine(
        config_from_dict(DualEncoderConfig, cfg.get("engine", {}), args.config or "engine settings")
    )
    bench = Path(args.benchmark)
    cache = FrameCache(Path(args.frame_cache)) if args.frame_cache else None
    corpus = Corpus.from_jsonl(bench / "videos.jsonl", cache=cache, sampling=engine.sampling)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = read_moments(bench / "annotations" / f"{args.dataset}_train.jsonl").moments
    val_path = bench / "annotations" / f"{args.dataset}_val.jsonl"
    val = read_moments(val_path).moments if val_path.is_file() else []
    train_feats = extract_features(
        engine, corpus, sorted({m.video_id for m in train}), out / "features_train.pt"
    )
    val_feats = (
        extract_features(engine, corpus, sorted({m.video_id for m in val}), out / "features_val.pt")
        if val
        else None
    )
    history = fit_pooler(engine, train, train_feats, fit_cfg, val or None, val_feats)
    engine.save(out / "engine")
    atomic_write_json(
        out / "fit_history.json",
        {"fit": vars(fit_cfg), "engine": engine.config.to_dict(), "history": history},
    )
    print(json.dumps({"engine": str(out / "engine"), "last": history[-1]}, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vsr_model.data import read_moments
    from vsr_model.engine.base import SearchEngine
    from vsr_model.engine.evaluate import evaluate_retrieval
    from vsr_model.fileio import atomic_write_json

    engine = SearchEngine.load(args.engine)
    moments = read_moments(args.annotations).moments
    report: dict[str, Any] = {"engine": str(args.engine), "annotations": str(args.annotations),
                              "all": evaluate_retrieval(engine, moments)}  # fmt: skip
    if args.group_by:
        groups: dict[str, list] = {}
        for m in moments:
            if args.group_by not in m.extra:
                raise SystemExit(f"{args.annotations}: query {m.query_id} has no field {args.group_by!r}")
            groups.setdefault(str(m.extra[args.group_by]), []).append(m)
        report[args.group_by] = {k: evaluate_retrieval(engine, v) for k, v in sorted(groups.items())}
    if args.out:
        atomic_write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


def _init(args: argparse.Namespace) -> int:
    from vsr_model.engine.base import build_engine

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_yaml(args.config)
    unknown = set(cfg) - {"family", "engine"}
    if unknown or "family" not in cfg:
        raise SystemExit(f"{args.config}: expected keys `family` and `engine`, got {sorted(cfg)}")
    engine = build_engine(str(cfg["family"]), dict(cfg.get("engine") or {}))
    out = engine.save(args.out)
    print(json.dumps({"engine": str(out), "family": engine.family, "embed_dim": engine.embed_dim}, indent=2))
    return 0


def _info(args: argparse.Namespace) -> int:
    print((Path(args.engine) / "engine.json").read_text())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("engine", help="search engine: create, fit, evaluate, inspect")
    sub = parser.add_subparsers(dest="engine_command", metavar="ENGINE_COMMAND")

    init = sub.add_parser(
        "init", help="write a new engine (empty index) from a YAML of `family` and `engine` settings"
    )
    init.add_argument(
        "--config",
        required=True,
        help="YAML: family (vlm_embedding | dual_encoder) and engine (VLMEmbeddingConfig / DualEncoderConfig)",
    )
    init.add_argument(
        "--out", required=True, help="engine folder to write (then `vsr corpus build --engine`)"
    )
    init.set_defaults(func=_init)

    fit = sub.add_parser(
        "fit", help="train the dual encoder's temporal pooler + projector on a benchmark's train split"
    )
    fit.add_argument(
        "--benchmark", required=True, help="folder written by `vsr data synth` (videos.jsonl, annotations/)"
    )
    fit.add_argument(
        "--dataset", default="synth", help="annotation file prefix: annotations/<dataset>_<split>.jsonl"
    )
    fit.add_argument("--config", help="YAML with sections `engine` (DualEncoderConfig) and `fit` (FitConfig)")
    fit.add_argument("--out", required=True, help="output folder: engine/, fit_history.json, feature caches")
    fit.add_argument("--frame-cache", help="folder for decoded frames (reused across runs)")
    fit.add_argument("--epochs", type=int)
    fit.add_argument("--batch-size", type=int)
    fit.add_argument("--lr", type=float)
    fit.add_argument("--seed", type=int)
    fit.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    fit.set_defaults(func=_fit)

    ev = sub.add_parser("eval", help="video retrieval R@1/5/10, MRR vs chance for an indexed engine")
    ev.add_argument("--engine", required=True, help="saved engine with its index (from `vsr corpus build`)")
    ev.add_argument(
        "--annotations", required=True, help="annotation file of the queries (any supported format)"
    )
    ev.add_argument("--group-by", help="also report per value of this annotation field (e.g. held_out_combo)")
    ev.add_argument("--out", help="write the report as JSON here")
    ev.set_defaults(func=_eval)

    info = sub.add_parser("info", help="print a saved engine's metadata")
    info.add_argument("engine")
    info.set_defaults(func=_info)
    parser.set_defaults(func=lambda a: parser.print_help() or 2)
