"""`vsr demo`: the whole VideoSearch-R1 pipeline on real decoded video, offline, resumable.

Stages (each a `vsr` subcommand run as its own process, so a crash in one leaves the others' outputs
intact): synthetic benchmark -> fit the dual-encoder search engine -> index the train and test corpora
-> Stage-1 examples with teacher rationales -> initial policy (connector alignment) -> Stage-1 SFT ->
Stage-2 GRPO -> evaluation of every agent variant (policy / oracle verifier x SQR / HQR / next
candidate, 1-3 turns, single shot, grounding with the right video given) -> results table with paired
bootstrap intervals, plots, summary.json, report.html.

Every stage's settings are typed configs (vsr_train.config), written to `configs/` as YAML and read back
by the stage through the same strict loader. Every finished stage writes ``stages/<name>.json`` with a
hash of its settings; a rerun skips stages whose record matches and redoes the first one that does not,
plus everything after it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vsr_train.checkpoint import write_json_atomic
from vsr_train.config import (
    CheckpointConfig,
    DataConfig,
    DeepSpeedSettings,
    EvalConfig,
    EvalVariant,
    GRPOConfig,
    GRPOSettings,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    SFTConfig,
    VerifyEvalConfig,
    config_from_dict,
    config_to_dict,
)


@dataclass(frozen=True)
class DemoSize:
    """How big a run is. `tiny` uses randomly initialised miniature models (the CI path); the others
    use the real offline weights (MiniLM, EfficientNet-Lite0, SmolLM2-135M-Instruct)."""

    synth: dict[str, int]  # SynthConfig split sizes
    engine_epochs: int
    num_examples: int  # Stage-1 examples (half matched), SQR and HQR protocols
    hqr_fraction: float
    sft_steps: int
    grpo_steps: int
    group_size: int
    grpo_prompts_per_step: int
    eval_queries: int
    max_new_tokens: int
    eval_turns: int = 3
    eval_batch_size: int = 8
    # The learning curve: turn-1 verdicts on this many test queries at this many points of Stage 1.
    verify_examples: int = 48
    curve_points: int = 2
    tiny_models: bool = False
    micro_batch_size: int = 2
    num_negatives: int = 24  # InfoNCE negatives; the training corpus needs more videos than this
    sft_optim: dict[str, Any] = field(default_factory=dict)
    # Connector alignment epochs before Stage 1 (vsr_model.policy.connector); 0 starts from a random one.
    connector_align_epochs: int = 30
    # Composite policy settings (vsr_model.policy.composite.CompositePolicyConfig) of the initial policy.
    policy: dict[str, Any] = field(default_factory=dict)
    engine_overrides: dict[str, Any] = field(default_factory=dict)


# The default composite policy of the demo: multiscale frame features with the change between neighbouring
# frames, read as five soft words per frame (size, colour, object, action, background on the synthetic
# benchmark; the most specific caption words elsewhere) through the vocabulary connector, with the
# full instruction prompt.
WORD_TOKENS = {
    "frame_pooling": "multiscale",
    "tokens_per_frame": 5,
    "temporal_context": True,
    "connector": "vocabulary",
}

SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(
        synth={"num_train": 8, "num_val": 2, "num_test": 6},
        policy=dict(WORD_TOKENS),
        engine_epochs=1,
        num_examples=8,
        hqr_fraction=0.5,
        sft_steps=2,
        grpo_steps=1,
        group_size=2,
        grpo_prompts_per_step=1,
        eval_queries=4,
        max_new_tokens=24,
        eval_turns=2,
        tiny_models=True,
        num_negatives=4,
        connector_align_epochs=2,
        engine_overrides={
            "engine": {
                "text": {"name": "random-bert"},
                "frames": {"weights": "random", "image_size": 32},
                "pooler": {"hidden_size": 32, "num_heads": 4},
            }
        },
    ),
    "cpu": DemoSize(
        synth={"num_train": 400, "num_val": 20, "num_test": 60},
        engine_epochs=8,
        num_examples=480,
        hqr_fraction=0.25,
        sft_steps=120,
        grpo_steps=4,
        group_size=4,
        grpo_prompts_per_step=2,
        eval_queries=150,
        max_new_tokens=80,
        verify_examples=32,
        micro_batch_size=4,
        sft_optim={"lr": 5e-5, "sqr_lr": 5e-4, "connector_lr": 1e-3},
        policy=dict(WORD_TOKENS),
    ),
    "gpu": DemoSize(
        synth={"num_train": 3000, "num_val": 300, "num_test": 1000},
        engine_epochs=30,
        num_examples=4000,
        hqr_fraction=0.25,
        sft_steps=1000,
        grpo_steps=500,
        group_size=8,
        grpo_prompts_per_step=8,
        eval_queries=2000,
        max_new_tokens=160,
        micro_batch_size=8,
        sft_optim={"lr": 2e-5, "sqr_lr": 5e-5, "connector_lr": 1e-4},
        policy=dict(WORD_TOKENS),
    ),
}


@dataclass
class DemoSettings:
    out: Path
    size: str = "cpu"
    seed: int = 0
    # A real dataset instead of the synthetic one: a folder laid out like `vsr data synth` output
    # (videos.jsonl + annotations/<dataset>_<split>.jsonl in any format the readers know).
    benchmark: Path | None = None
    dataset: str = "synth"
    # Per-stage config overrides, deep-merged into the typed stage configs: {"sft": {...}, "grpo": {...},
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
        overrides = data.get("overrides", {}) or {}
        bad = set(overrides) - {"sft", "grpo", "eval", "engine"}
        if bad:
            raise ValueError(
                f"{path}: unknown override sections {sorted(bad)}; expected sft, grpo, eval, engine"
            )
        return cls(
            out=Path(out if out is not None else data["out"]),
            size=data.get("size", "cpu"),
            seed=int(data.get("seed", 0)),
            benchmark=Path(data["benchmark"]) if data.get("benchmark") else None,
            dataset=data.get("dataset", "synth"),
            overrides=overrides,
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

    def run(self, name: str, settings: Any, fn: Callable[[], None]) -> None:
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
    from vsr_model.fileio import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def typed(cls, base: Any, override: dict[str, Any], where: str) -> Any:
    """`base` (a config object) with `override` deep-merged in, checked by the strict loader."""
    return config_from_dict(cls, deep_merge(config_to_dict(base), override), where)


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
        self.verify = o / "data" / "verify_test.jsonl"
        self.policy_base = o / "policy_base"
        self.policy_init = o / "policy_init"
        self.sft = o / "sft"
        self.grpo = o / "grpo"
        self.evals = o / "eval"
        self.configs = o / "configs"


def _final_policy(run_dir: Path) -> Path:
    """The policy (Hugging Face folder) of the newest checkpoint a finished training run saved."""
    from vsr_train.evaluate import policy_directory

    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    if not checkpoints:
        raise SystemExit(f"[demo] {run_dir} holds no checkpoint; did the training stage finish?")
    return policy_directory(str(checkpoints[-1]))


class Demo:
    """The demo's stages, in order; `run` executes them through a StageRunner."""

    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self.size = settings.sizing()
        self.p = DemoPaths(settings.out)
        self.seed = str(settings.seed)
        self.bench = settings.benchmark if settings.benchmark is not None else self.p.benchmark
        self.annotations = self.bench / "annotations"
        self.videos = self.bench / "videos.jsonl"
        settings.out.mkdir(parents=True, exist_ok=True)
        self.runner = StageRunner(settings.out)

    def annotation_file(self, split: str) -> str:
        return str(self.annotations / f"{self.settings.dataset}_{split}.jsonl")

    def run(self) -> Path:
        self.benchmark()
        self.engine()
        self.corpora()
        self.stage1_data()
        self.initial_policy()
        self.sft()
        self.grpo()
        self.evaluate()
        return write_report(self.settings, self.p, self.runner.timings, self.bench)

    def benchmark(self) -> None:
        if self.settings.benchmark is not None:
            return
        synth = {**self.size.synth, "seed": self.settings.seed}
        config = write_yaml(self.p.configs / "synth.yaml", synth)
        self.runner.run(
            "benchmark",
            synth,
            lambda: vsr(
                "data",
                "synth",
                str(self.p.benchmark),
                "--config",
                str(config),
                "--workers",
                "2",
                "--overwrite",
            ),
        )

    def engine(self) -> None:
        settings = deep_merge(self.size.engine_overrides, self.settings.overrides.get("engine", {}))
        config = write_yaml(self.p.configs / "engine.yaml", settings)
        self.runner.run(
            "engine",
            {"config": settings, "epochs": self.size.engine_epochs, "seed": self.seed},
            lambda: vsr(
                "engine",
                "fit",
                "--benchmark",
                str(self.bench),
                "--dataset",
                self.settings.dataset,
                "--config",
                str(config),
                "--out",
                str(self.p.engine_fit),
                "--frame-cache",
                str(self.p.frames),
                "--epochs",
                str(self.size.engine_epochs),
                "--seed",
                self.seed,
            ),
        )

    def corpora(self) -> None:
        for split, folder in (("train", self.p.corpus_train), ("test", self.p.corpus_test)):
            self.runner.run(
                f"corpus_{split}",
                {"split": split},
                lambda split=split, folder=folder: vsr(
                    "corpus",
                    "build",
                    "--engine",
                    str(self.p.engine_fit / "engine"),
                    "--videos",
                    str(self.videos),
                    "--split",
                    split,
                    "--out",
                    str(folder),
                    "--frame-cache",
                    str(self.p.frames),
                ),
            )

    def stage1_data(self) -> None:
        args = [
            "--annotations", self.annotation_file("train"), "--engine", str(self.p.corpus_train / "engine"),
            "--out", str(self.p.stage1), "--num-examples", str(self.size.num_examples),
            "--hqr-fraction", str(self.size.hqr_fraction), "--seed", self.seed,
        ]  # fmt: skip
        if self.settings.benchmark is None:
            args += ["--synthetic-teacher", str(self.p.benchmark)]
        self.runner.run("stage1_data", args, lambda: vsr("train", "build-data", *args))
        # The learning curve's verify set: test queries with the test engine's own top-1 (turn 1).
        verify = [
            "--annotations", self.annotation_file("test"), "--engine", str(self.p.corpus_test / "engine"),
            "--out", str(self.p.verify), "--num-examples", str(self.size.verify_examples), "--natural",
        ]  # fmt: skip
        self.runner.run("verify_data", verify, lambda: vsr("train", "build-data", *verify))

    def initial_policy(self) -> None:
        args = [
            "--engine", str(self.p.corpus_train / "engine"), "--out", str(self.p.policy_init),
            "--annotations", self.annotation_file("train"), "--corpus", str(self.videos), "--split", "train",
            "--align-epochs", str(self.size.connector_align_epochs), "--seed", self.seed,
        ]  # fmt: skip
        if self.settings.benchmark is None:
            args += ["--synthetic-teacher", str(self.p.benchmark)]
        if self.size.tiny_models:
            self.runner.run(
                "policy_base",
                {"seed": self.seed, "policy": self.size.policy},
                lambda: _save_tiny_policy(self.p, self.settings.seed, self.size.policy),
            )
            args += ["--policy", str(self.p.policy_base)]
        elif self.size.policy:
            args += ["--policy-options", json.dumps(self.size.policy)]
        self.runner.run("policy_init", args, lambda: vsr("train", "init-policy", *args))

    def common(self) -> dict[str, Any]:
        return {
            "seed": self.settings.seed,
            "data": DataConfig(
                kind="vsr_jsonl",
                path=str(self.p.stage1),
                engine_dir=str(self.p.corpus_train / "engine"),
                corpus=str(self.videos),
                corpus_split="train",
            ),
            "logging": LoggingConfig(every_steps=1, tensorboard=True, progress_bar=True),
        }

    def sft_config(self) -> SFTConfig:
        size = self.size
        cfg = SFTConfig(
            output_dir=str(self.p.sft),
            max_steps=size.sft_steps,
            model=ModelConfig(kind="vsr_policy", name_or_path=str(self.p.policy_init)),
            deepspeed=DeepSpeedSettings(
                config="zero1", precision="fp32", micro_batch_size=size.micro_batch_size
            ),
            optim=OptimConfig(**size.sft_optim),
            checkpoint=CheckpointConfig(every_steps=max(1, size.sft_steps), keep_last=1),
            verify_eval=VerifyEvalConfig(
                every_steps=max(1, size.sft_steps // size.curve_points),
                examples=str(self.p.verify),
                corpus_split="test",
                max_examples=size.verify_examples,
                max_new_tokens=size.max_new_tokens,
            ),
            **self.common(),
        )
        cfg.infonce.num_negatives = size.num_negatives
        return typed(SFTConfig, cfg, self.settings.overrides.get("sft", {}), "demo sft")

    def grpo_config(self) -> GRPOConfig:
        """Stage 2 settings (the policy path is filled in once Stage 1 has saved it)."""
        cfg = grpo_stage_config(self.size, self.common(), str(self.p.grpo), "SFT_POLICY")
        return typed(GRPOConfig, cfg, self.settings.overrides.get("grpo", {}), "demo grpo")

    def eval_config(self) -> EvalConfig:
        """Evaluation settings (the policy path is filled in once Stage 2 has saved it)."""
        cfg = eval_stage_config(
            self.size, self.settings.seed, self.p, self.annotation_file("test"), self.videos
        )
        return typed(EvalConfig, cfg, self.settings.overrides.get("eval", {}), "demo eval")

    def sft(self) -> None:
        cfg = self.sft_config()
        path = write_yaml(self.p.configs / "sft.yaml", config_to_dict(cfg))
        self.runner.run("sft", config_to_dict(cfg), lambda: vsr("train", "sft", "--config", str(path)))

    def grpo(self) -> None:
        cfg = self.grpo_config()
        record = config_to_dict(cfg)

        def run() -> None:
            cfg.model.name_or_path = str(_final_policy(self.p.sft))
            path = write_yaml(self.p.configs / "grpo.yaml", config_to_dict(cfg))
            vsr("train", "grpo", "--config", str(path))

        self.runner.run("grpo", record, run)

    def evaluate(self) -> None:
        cfg = eval_stage_config(
            self.size, self.settings.seed, self.p, self.annotation_file("test"), self.videos
        )
        cfg = typed(EvalConfig, cfg, self.settings.overrides.get("eval", {}), "demo eval")
        record = config_to_dict(cfg)

        def run() -> None:
            cfg.policy = str(_final_policy(self.p.grpo))
            path = write_yaml(self.p.configs / "eval.yaml", config_to_dict(cfg))
            vsr("eval", "--config", str(path))

        self.runner.run("eval", record, run)


def grpo_stage_config(size: DemoSize, common: dict[str, Any], output_dir: str, policy: str) -> GRPOConfig:
    """Stage 2 settings: a step holds `grpo_prompts_per_step` prompts of `group_size` sampled
    completions each, one prompt's group per micro-batch."""
    cfg = GRPOConfig(
        output_dir=output_dir,
        max_steps=size.grpo_steps,
        grpo=GRPOSettings(group_size=size.group_size, max_completion_tokens=size.max_new_tokens),
        rollout=RolloutConfig(mode="single_turn", max_turns=1),
        model=ModelConfig(kind="vsr_policy", name_or_path=policy),
        deepspeed=DeepSpeedSettings(
            config="zero1",
            precision="fp32",
            micro_batch_size=size.group_size,
            gradient_accumulation_steps=size.grpo_prompts_per_step,
        ),
        checkpoint=CheckpointConfig(every_steps=max(1, size.grpo_steps), keep_last=1),
        **common,
    )
    cfg.infonce.num_negatives = size.num_negatives
    return cfg


def eval_variants(turns: int) -> list[EvalVariant]:
    """Every verifier x refiner combination, `turns` verify turns each (shorter runs are cut from them)."""
    return [
        EvalVariant(verifier=verifier, refiner=refiner, max_turns=turns)
        for verifier in ("policy", "oracle")
        for refiner in ("sqr", "hqr", "none")
    ]


def eval_stage_config(size: DemoSize, seed: int, p: DemoPaths, queries: str, videos: Path) -> EvalConfig:
    from vsr_model.agent import AgentConfig
    from vsr_model.policy import GenerationSettings

    return EvalConfig(
        output_dir=str(p.evals),
        seed=seed,
        policy="GRPO_POLICY",
        engine_dir=str(p.corpus_test / "engine"),
        corpus=str(videos),
        corpus_split="test",
        queries=queries,
        max_queries=size.eval_queries,
        agent=AgentConfig(
            max_turns=size.eval_turns,
            batch_size=size.eval_batch_size,
            generation=GenerationSettings(max_new_tokens=size.max_new_tokens),
        ),
        variants=eval_variants(size.eval_turns),
        grounding_only=True,
        report_cards=0,  # the demo writes one report.html for the whole run
    )


def run_demo(settings: DemoSettings) -> Path:
    return Demo(settings).run()


def _save_tiny_policy(p: DemoPaths, seed: int, options: dict[str, Any]) -> None:
    from vsr_model.engine import DualEncoderEngine
    from vsr_train.tiny import tiny_video_policy

    engine = DualEncoderEngine.load(p.corpus_train / "engine")
    policy = tiny_video_policy(engine.embed_dim, engine.query_input_dim, seed=seed, options=options)
    policy.save_pretrained(p.policy_base)


def learning_curve(sft_dir: Path) -> list[dict[str, float]]:
    """Stage 1's turn-1 verdict accuracy against the examples seen (the records its verify_eval logged)."""
    from vsr_train.run_log import read_metrics

    path = sft_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [
        {
            k: r[k]
            for k in ("step", "eval/examples_seen", "eval/ver_turn1", "eval/said_matched", "eval/unparsed")
        }
        for r in read_metrics(path)
        if "eval/ver_turn1" in r
    ]


def plot_learning_curve(curve: list[dict[str, float]], majority: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vsr_train.evaluate import _save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    seen = [r["eval/examples_seen"] for r in curve]
    ax.plot(seen, [r["eval/ver_turn1"] for r in curve], marker="o", label="turn-1 VER")
    ax.plot(seen, [r["eval/said_matched"] for r in curve], marker=".", ls=":", label="answers 'matched'")
    ax.axhline(majority, color="grey", ls="--", label=f"majority label ({majority:.0f})")
    ax.set_xlabel("Stage-1 examples seen")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Verdict accuracy during Stage 1 (test queries, engine top-1)")
    _save_figure(fig, path)


def write_report(settings: DemoSettings, p: DemoPaths, timings: dict[str, float], bench: Path) -> Path:
    """The demo's summary.json (the evaluation's, plus the learning curve, chance, settings and stage
    times), results.md, plots/ and report.html."""
    from vsr_model.fileio import atomic_write_text
    from vsr_train.evaluate import write_report_page

    evaluation = json.loads((p.evals / "summary.json").read_text())
    chance = _chance(bench)
    curve = learning_curve(p.sft)
    if curve:
        plot_learning_curve(curve, evaluation["majority_rate"], settings.out / "plots" / "learning_curve.png")
    report = {
        **evaluation,
        "learning_curve": curve,
        "chance": chance,
        "settings": {**asdict(settings), "out": str(settings.out), "benchmark": str(bench)},
        "size": asdict(settings.sizing()),
        "stage_seconds": timings,
    }
    write_json_atomic(settings.out / "summary.json", report)
    write_report_page(settings.out, p.evals, evaluation["order"], report, 30)
    lines = [(p.evals / "results.md").read_text()]
    if chance:
        lines.append(
            f"Chance: VR R@1 {chance.get('vr_r@1', float('nan')) * 100:.1f}, VCMR R@1 IoU=0.5 "
            f"{chance.get('vcmr_r@1_iou>=0.5', float('nan')) * 100:.2f}; majority verdict rate "
            f"{evaluation['majority_rate']:.1f}.\n"
        )
    atomic_write_text(settings.out / "results.md", "\n".join(lines))
    print("\n" + "\n".join(lines), flush=True)
    print(f"\n[demo] results: {settings.out / 'results.md'}, {settings.out / 'summary.json'}, "
          f"{settings.out / 'report.html'}")  # fmt: skip
    return settings.out / "summary.json"


def _chance(bench: Path) -> dict[str, float]:
    meta = bench / "meta.json"
    if not meta.is_file():
        return {}
    return json.loads(meta.read_text()).get("splits", {}).get("test", {}).get("chance", {})
