"""`vsr demo`: the whole VideoSearch-R1 pipeline on real decoded video, offline, resumable.

Stages (each a `vsr` subcommand run as its own process, so a crash in one leaves the others' outputs
intact): synthetic benchmark -> fit the dual-encoder search engine -> index the train and test
corpora -> Stage-1 data -> initial policy (connector alignment) -> Stage-1 SFT -> Stage-2 GRPO ->
evaluation of five agent variants (single shot, text-rewrite refinement, SQR with 1/2/3 turns) ->
results table, plots, summary.json.

Every finished stage writes ``stages/<name>.json`` with a hash of the settings it ran with; a rerun
skips stages whose record matches and redoes the first one that does not, plus everything after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vsr_train.checkpoint import write_json_atomic


@dataclass(frozen=True)
class DemoSize:
    """How big a run is. `tiny` uses randomly initialised miniature models (the CI path); the others
    use the real offline weights (MiniLM, EfficientNet-Lite0, SmolLM2-135M-Instruct)."""

    synth_preset: str
    engine_epochs: int
    stage1_per_class: int
    sft_steps: int
    grpo_steps: int
    group_size: int
    grpo_prompts_per_step: int
    eval_queries: int
    max_new_tokens: int
    eval_batch_size: int = 8
    tiny_models: bool = False
    micro_batch_size: int = 2
    num_negatives: int = 24  # InfoNCE negatives; the training corpus needs more videos than this
    # Stage-1 learning rates (vsr_train.config.OptimConfig keys). A short CPU run raises them so the
    # freshly initialised frame projector and SQR heads move within a few dozen steps.
    sft_optim: dict[str, Any] = field(default_factory=dict)
    # Connector alignment steps before Stage 1 (vsr_model.policy.connector); 0 starts from a random one.
    connector_align_steps: int = 400
    engine_overrides: dict[str, Any] = field(default_factory=dict)


SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(
        synth_preset="ci",
        engine_epochs=1,
        stage1_per_class=4,
        sft_steps=2,
        grpo_steps=1,
        group_size=2,
        grpo_prompts_per_step=1,
        eval_queries=4,
        max_new_tokens=24,
        tiny_models=True,
        num_negatives=4,
        connector_align_steps=20,
        engine_overrides={
            "engine": {
                "text": {"name": "random-bert"},
                "frames": {"weights": "random", "image_size": 32},
                "pooler": {"hidden_size": 32, "num_heads": 4},
            }
        },
    ),
    "cpu": DemoSize(
        synth_preset="small",
        engine_epochs=8,
        stage1_per_class=60,
        sft_steps=30,
        grpo_steps=6,
        group_size=4,
        grpo_prompts_per_step=2,
        eval_queries=50,
        max_new_tokens=64,
        micro_batch_size=4,
        sft_optim={"lr": 5e-5, "sqr_lr": 5e-4, "connector_lr": 5e-4},
    ),
    "gpu": DemoSize(
        synth_preset="large",
        engine_epochs=30,
        stage1_per_class=1000,
        sft_steps=1000,
        grpo_steps=500,
        group_size=8,
        grpo_prompts_per_step=8,
        eval_queries=2000,
        max_new_tokens=768,
        micro_batch_size=8,
        sft_optim={"lr": 2e-5, "sqr_lr": 5e-5, "connector_lr": 1e-4},
    ),
}


@dataclass(frozen=True)
class Variant:
    """One row of the results table. A variant with `cut_from` is not run again: greedy decoding makes
    its trajectories the first `turns` turns of that longer run's (QueryTrace.cut), so its results are
    derived from those traces."""

    key: str
    title: str
    refinement: str  # sqr | hqr | none
    turns: int
    cut_from: str | None = None


VARIANTS: list[Variant] = [
    Variant("single_shot", "Single shot (no refinement)", "none", 1, cut_from="sqr_3"),
    Variant("hqr_2", "Text rewrite (HQR), 2 turns", "hqr", 2),
    Variant("sqr_1", "SQR, 1 turn", "sqr", 1, cut_from="sqr_3"),
    Variant("sqr_2", "SQR, 2 turns", "sqr", 2, cut_from="sqr_3"),
    Variant("sqr_3", "SQR, 3 turns", "sqr", 3),
]


@dataclass
class DemoSettings:
    out: Path
    size: str = "cpu"
    seed: int = 0
    # A real dataset instead of the synthetic one: a folder laid out like `vsr data synth` output
    # (videos.jsonl + annotations/<dataset>_<split>.jsonl in any format the readers know).
    benchmark: Path | None = None
    dataset: str = "synth"
    # Per-stage config overrides, deep-merged into the generated YAML: {"sft": {...}, "grpo": {...},
    # "eval": {...}, "engine": {...}}.
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: Path, out: Path | None) -> DemoSettings:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping")
        known = {"out", "size", "seed", "benchmark", "dataset", "overrides"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected {sorted(known)}")
        if out is None and "out" not in data:
            raise ValueError(f"{path}: no `out` folder (set it in the file or with --out)")
        return cls(
            out=Path(out if out is not None else data["out"]),
            size=data.get("size", "cpu"),
            seed=int(data.get("seed", 0)),
            benchmark=Path(data["benchmark"]) if data.get("benchmark") else None,
            dataset=data.get("dataset", "synth"),
            overrides=data.get("overrides", {}) or {},
        )

    def sizing(self) -> DemoSize:
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; expected one of {sorted(SIZES)}")
        return SIZES[self.size]


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageRunner:
    """Runs stages in order, skipping those already finished with the same settings."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.records = out / "stages"
        self.records.mkdir(parents=True, exist_ok=True)
        self.invalidated = False
        self.timings: dict[str, float] = {}

    def run(self, name: str, settings: Any, fn) -> None:
        record = self.records / f"{name}.json"
        digest = _hash(settings)
        if not self.invalidated and record.is_file():
            done = json.loads(record.read_text())
            if done.get("settings_hash") == digest:
                print(f"[demo] {name}: done earlier, skipped", flush=True)
                self.timings[name] = done.get("seconds", 0.0)
                return
        # Everything after a redone stage depends on it.
        self.invalidated = True
        print(f"[demo] {name}: running", flush=True)
        start = time.monotonic()
        fn()
        seconds = time.monotonic() - start
        self.timings[name] = seconds
        write_json_atomic(record, {"stage": name, "settings_hash": digest, "seconds": seconds})
        print(f"[demo] {name}: finished in {seconds:.0f}s", flush=True)


def vsr(*args: str) -> None:
    """Runs one `vsr` subcommand in its own process; a failure stops the demo with its exit code."""
    cmd = [sys.executable, "-m", "vsr_index.cli", *args]
    print("[demo] $ vsr " + " ".join(args), flush=True)
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise SystemExit(f"[demo] `vsr {' '.join(args)}` failed with exit code {result.returncode}")


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    return path


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class DemoPaths:
    out: Path

    def __post_init__(self) -> None:
        o = self.out
        self.benchmark = o / "benchmark"
        self.frames = o / "frame_cache"
        self.engine_fit = o / "engine_fit"
        self.corpus_train = o / "corpus_train"
        self.corpus_test = o / "corpus_test"
        self.stage1 = o / "data" / "stage1.jsonl"
        self.policy_base = o / "policy_base"
        self.policy_init = o / "policy_init"
        self.sft = o / "sft"
        self.grpo = o / "grpo"
        self.evals = o / "eval"
        self.configs = o / "configs"
        self.plots = o / "plots"


def _final_policy(run_dir: Path) -> Path:
    """The policy (Hugging Face folder) of the newest checkpoint a finished training run saved."""
    from vsr_train.evaluate import policy_directory

    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    if not checkpoints:
        raise SystemExit(f"[demo] {run_dir} holds no checkpoint; did the training stage finish?")
    return policy_directory(str(checkpoints[-1]))


def run_demo(settings: DemoSettings) -> Path:
    size = settings.sizing()
    p = DemoPaths(settings.out)
    settings.out.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(settings.out)
    seed = str(settings.seed)
    over = settings.overrides
    bench = settings.benchmark if settings.benchmark is not None else p.benchmark
    videos = bench / "videos.jsonl"
    annotations = bench / "annotations"

    if settings.benchmark is None:
        runner.run(
            "benchmark",
            {"preset": size.synth_preset, "seed": settings.seed},
            lambda: vsr(
                "data",
                "synth",
                str(p.benchmark),
                "--preset",
                size.synth_preset,
                "--seed",
                seed,
                "--overwrite",
            ),
        )

    engine_settings = deep_merge(size.engine_overrides, over.get("engine", {}))
    engine_cfg = write_yaml(p.configs / "engine.yaml", engine_settings)
    runner.run(
        "engine",
        {"config": engine_settings, "epochs": size.engine_epochs, "seed": seed},
        lambda: vsr(
            "engine",
            "fit",
            "--benchmark",
            str(bench),
            "--dataset",
            settings.dataset,
            "--config",
            str(engine_cfg),
            "--out",
            str(p.engine_fit),
            "--frame-cache",
            str(p.frames),
            "--epochs",
            str(size.engine_epochs),
            "--seed",
            seed,
        ),
    )
    for split, folder in (("train", p.corpus_train), ("test", p.corpus_test)):
        runner.run(
            f"corpus_{split}",
            {"split": split},
            lambda split=split, folder=folder: vsr(
                "corpus",
                "build",
                "--engine",
                str(p.engine_fit / "engine"),
                "--videos",
                str(videos),
                "--split",
                split,
                "--out",
                str(folder),
                "--frame-cache",
                str(p.frames),
            ),
        )
    runner.run(
        "stage1_data",
        {"per_class": size.stage1_per_class, "seed": seed},
        lambda: vsr(
            "train",
            "build-data",
            "--annotations",
            str(annotations / f"{settings.dataset}_train.jsonl"),
            "--engine",
            str(p.corpus_train / "engine"),
            "--out",
            str(p.stage1),
            "--per-class",
            str(size.stage1_per_class),
            "--seed",
            seed,
        ),
    )
    init_args = [
        "--engine",
        str(p.corpus_train / "engine"),
        "--out",
        str(p.policy_init),
        "--annotations",
        str(annotations / f"{settings.dataset}_train.jsonl"),
        "--corpus",
        str(videos),
        "--split",
        "train",
        "--align-steps",
        str(size.connector_align_steps),
        "--seed",
        seed,
    ]
    if size.tiny_models:
        runner.run("policy_base", {"seed": seed}, lambda: _save_tiny_policy(p, settings.seed))
        init_args += ["--policy", str(p.policy_base)]
    runner.run(
        "policy_init",
        {"align_steps": size.connector_align_steps, "seed": seed},
        lambda: vsr("train", "init-policy", *init_args),
    )
    initial_policy = str(p.policy_init)

    common = {
        "seed": settings.seed,
        "deepspeed": {
            "config": "zero1",
            "precision": "fp32",
            "micro_batch_size": size.micro_batch_size,
            "gradient_accumulation_steps": 1,
            "dist_backend": "auto",
        },
        "logging": {"every_steps": 1, "tensorboard": True, "progress_bar": True},
    }
    data = {
        "kind": "vsr_jsonl",
        "path": str(p.stage1),
        "engine_dir": str(p.corpus_train / "engine"),
        "corpus": str(videos),
        "corpus_split": "train",
    }
    sft_cfg = deep_merge(
        {
            **common,
            "output_dir": str(p.sft),
            "max_steps": size.sft_steps,
            "num_negatives": size.num_negatives,
            "optim": dict(size.sft_optim),
            "model": {"kind": "vsr_policy", "name_or_path": initial_policy},
            "data": data,
            "checkpoint": {"every_steps": max(1, size.sft_steps), "keep_last": 1, "resume": "auto"},
        },
        over.get("sft", {}),
    )
    sft_yaml = write_yaml(p.configs / "sft.yaml", sft_cfg)
    runner.run("sft", sft_cfg, lambda: vsr("train", "sft", "--config", str(sft_yaml)))

    grpo_cfg = deep_merge(
        grpo_stage_config(size, common, str(p.grpo), str(_final_policy(p.sft)), data), over.get("grpo", {})
    )
    grpo_yaml = write_yaml(p.configs / "grpo.yaml", grpo_cfg)
    runner.run("grpo", grpo_cfg, lambda: vsr("train", "grpo", "--config", str(grpo_yaml)))

    policy = str(_final_policy(p.grpo))
    evaluated = {}
    for variant in [v for v in VARIANTS if v.cut_from is None]:
        eval_cfg = deep_merge(
            {
                "output_dir": str(p.evals / variant.key),
                "seed": settings.seed,
                "policy": policy,
                "engine_dir": str(p.corpus_test / "engine"),
                "corpus": str(videos),
                "corpus_split": "test",
                "queries": str(annotations / f"{settings.dataset}_test.jsonl"),
                "max_queries": size.eval_queries,
                "max_turns": variant.turns,
                "refinement": variant.refinement,
                "exclude_seen_videos": True,
                "max_new_tokens": size.max_new_tokens,
                "batch_size": size.eval_batch_size,
                "name": variant.title,
            },
            over.get("eval", {}),
        )
        evaluated[variant.key] = eval_cfg
        eval_yaml = write_yaml(p.configs / f"eval_{variant.key}.yaml", eval_cfg)
        runner.run(
            f"eval_{variant.key}",
            eval_cfg,
            lambda eval_yaml=eval_yaml: vsr("eval", "--config", str(eval_yaml)),
        )
    for variant in [v for v in VARIANTS if v.cut_from is not None]:
        runner.run(
            f"eval_{variant.key}",
            {"source": evaluated[variant.cut_from], "turns": variant.turns, "refinement": variant.refinement},
            lambda variant=variant: _derive_variant(p, variant),
        )

    return write_report(settings, p, runner.timings)


def grpo_stage_config(
    size: DemoSize, common: dict[str, Any], output_dir: str, policy: str, data: dict[str, Any]
) -> dict[str, Any]:
    """Stage 2 settings: a step holds `grpo_prompts_per_step` prompts of `group_size` sampled
    completions each, one prompt's group per micro-batch."""
    deepspeed = {
        **common["deepspeed"],
        "micro_batch_size": size.group_size,
        "gradient_accumulation_steps": size.grpo_prompts_per_step,
    }
    return {
        **common,
        "deepspeed": deepspeed,
        "output_dir": output_dir,
        "max_steps": size.grpo_steps,
        "grpo": {"group_size": size.group_size, "max_completion_tokens": size.max_new_tokens},
        "rollout": {"mode": "single_turn", "max_turns": 1},
        "model": {"kind": "vsr_policy", "name_or_path": policy},
        "data": data,
        "checkpoint": {"every_steps": max(1, size.grpo_steps), "keep_last": 1, "resume": "auto"},
    }


def _derive_variant(p: DemoPaths, variant: Variant) -> None:
    from vsr_train.evaluate import derive_shorter_run

    derive_shorter_run(
        p.evals / variant.cut_from,
        p.evals / variant.key,
        variant.title,
        variant.turns,
        final_refine=variant.refinement != "none",
    )


def _save_tiny_policy(p: DemoPaths, seed: int) -> None:
    from vsr_model.engine import DualEncoderEngine
    from vsr_train.tiny import tiny_video_policy

    engine = DualEncoderEngine.load(p.corpus_train / "engine")
    policy = tiny_video_policy(engine.embed_dim, engine.query_input_dim, seed=seed)
    policy.save_pretrained(p.policy_base)


def write_report(settings: DemoSettings, p: DemoPaths, timings: dict[str, float]) -> Path:
    from vsr_train.evaluate import paper_table, plot_per_turn

    rows, per_turn = [], {}
    for variant in VARIANTS:
        summary_path = p.evals / variant.key / "summary.json"
        if not summary_path.is_file():
            raise SystemExit(f"[demo] evaluation {variant.key} left no {summary_path}")
        result = json.loads(summary_path.read_text())
        rows.append((variant.title, result["summary"]))
        per_turn[variant.key] = result.get("per_turn", [])
    table = paper_table(rows)
    p.plots.mkdir(parents=True, exist_ok=True)
    if per_turn.get("sqr_3"):
        plot_per_turn(
            per_turn["sqr_3"], p.plots / "sqr_per_turn.png", "SQR, 3 turns: metrics after each turn"
        )
    _plot_variants(rows, p.plots / "variants.png")
    report = {
        "settings": {**asdict(settings), "out": str(settings.out)},
        "size": asdict(settings.sizing()),
        "results": {v.key: summary for v, (_, summary) in zip(VARIANTS, rows, strict=True)},
        "stage_seconds": timings,
        "table_markdown": table,
    }
    write_json_atomic(settings.out / "summary.json", report)
    (settings.out / "results.md").write_text(table + "\n")
    from vsr_train.report_html import report_eval_runs

    page = report_eval_runs(
        settings.out, [p.evals / v.key for v in VARIANTS], sorted(p.plots.glob("*.png")), summary=report
    )
    print(f"[demo] what the agent did, query by query: {page}", flush=True)
    print("\n" + table, flush=True)
    print(
        f"\n[demo] results: {settings.out / 'results.md'}, {settings.out / 'summary.json'}, plots in {p.plots}"
    )
    return settings.out / "summary.json"


def _plot_variants(rows: list[tuple[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["vcmr_r1_iou0.3", "vcmr_r1_iou0.5", "vcmr_r1_iou0.7", "ver_strict", "vr_post_refinement_r1"]
    missing = [k for k in metrics if k not in rows[0][1]]
    if missing:
        raise SystemExit(f"[demo] evaluation summaries lack {missing}")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(rows)
    for i, (title, summary) in enumerate(rows):
        ax.bar(
            [m + i * width for m in range(len(metrics))],
            [summary.get(k, 0.0) for k in metrics],
            width,
            label=title,
        )
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics)
    ax.set_ylabel("value")
    ax.legend(fontsize=8)
    ax.set_title("Agent variants on the test split")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
