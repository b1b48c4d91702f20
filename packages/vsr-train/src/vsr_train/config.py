"""Typed training / evaluation configuration loaded strictly from YAML.

Every setting lives in a dataclass below; a YAML file is mapped onto them field by field. Unknown keys,
wrong types and out-of-range values are errors that name the offending key and file: a typo must never
silently fall back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vsr_model.agent import AgentConfig
from vsr_model.config import (  # noqa: F401  (the strict loader is vsr_model's; re-exported here)
    ConfigError,
    apply_override,
    config_from_dict,
    config_to_dict,
    load_config,
)
from vsr_model.policy.base import GenerationSettings
from vsr_model.policy.composite import CompositePolicyConfig
from vsr_model.rewards import RewardConfig
from vsr_model.sqr import InfoNCEConfig

# ----------------------------------------------------------------------------------------------------------
# Sections shared by SFT, GRPO and evaluation
# ----------------------------------------------------------------------------------------------------------


@dataclass
class FreshPolicy:
    """A fresh composite video policy: its settings (the LLM is ModelConfig.name_or_path, so `composite.llm`
    stays unset) and its SQR heads' (the widths come from the search engine)."""

    composite: CompositePolicyConfig = field(default_factory=CompositePolicyConfig)
    num_latents: int = 8
    append_mode: Literal["residual", "plain"] = "residual"

    def validate(self, where: str) -> None:
        if self.composite.llm is not None:
            raise ConfigError(f"{where}: set the LLM with model.name_or_path, not model.fresh.composite.llm")
        _positive(where, "model.fresh.num_latents", self.num_latents)


@dataclass
class ModelConfig:
    """Which policy to train.

    kind:
      hf_causal_lm   any Hugging Face causal LM (name or local path), or a randomly initialised one built
                     from ``random_init`` (a transformers config dict with ``model_type``), used by tests.
      vsr_policy     the VideoSearch-R1 policy of vsr_model.policy (HF Qwen-VL or the composite video LLM)
                     with its SQR heads.
    """

    kind: Literal["hf_causal_lm", "vsr_policy"] = "hf_causal_lm"
    name_or_path: str | None = None
    random_init: dict[str, Any] | None = None
    # A fresh vsr_policy (name_or_path an LLM or unset, not a saved policy folder, which carries its own).
    fresh: FreshPolicy = field(default_factory=lambda: FreshPolicy())
    gradient_checkpointing: bool = False
    freeze_vision_tower: bool = True
    # Load weights in this dtype before DeepSpeed takes over; "auto" follows deepspeed.precision.
    load_dtype: Literal["auto", "float32", "bfloat16"] = "auto"

    def validate(self, where: str) -> None:
        if self.name_or_path is not None and self.random_init is not None:
            raise ConfigError(f"{where}: set only one of model.name_or_path or model.random_init")
        # A vsr_policy without a path starts from the default composite LLM (SmolLM2-135M-Instruct).
        if self.kind == "hf_causal_lm" and self.name_or_path is None and self.random_init is None:
            raise ConfigError(f"{where}: set exactly one of model.name_or_path or model.random_init")
        if self.random_init is not None and "model_type" not in self.random_init:
            raise ConfigError(f"{where}: model.random_init needs a 'model_type' key (e.g. 'llama')")


@dataclass
class DeepSpeedSettings:
    """DeepSpeed engine settings. ``config`` is a shipped preset (zero1, zero2, zero3, zero3_offload) or a
    path to a DeepSpeed JSON file. Batch sizes, clipping and precision are filled in from here; a JSON file
    that sets them to different values is an error (one source of truth)."""

    config: str = "zero2"
    precision: Literal["bf16", "fp32"] = "bf16"
    micro_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    gradient_clipping: float = 1.0
    # "auto": nccl when CUDA is available, gloo otherwise.
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    # Optimizer implementation: torch AdamW, DeepSpeed's CPU Adam (for optimizer offload) or fused GPU Adam.
    optimizer: Literal["adamw_torch", "deepspeed_cpu_adam", "fused_adam"] = "adamw_torch"

    def validate(self, where: str) -> None:
        _positive(where, "deepspeed.micro_batch_size", self.micro_batch_size)
        _positive(where, "deepspeed.gradient_accumulation_steps", self.gradient_accumulation_steps)
        if self.gradient_clipping < 0:
            raise ConfigError(f"{where}: deepspeed.gradient_clipping must be >= 0 (0 disables clipping)")


@dataclass
class OptimConfig:
    lr: float = 2e-5
    # Learning rate of the SQR heads (readout / roll-in / append projectors); None = same as lr.
    sqr_lr: float | None = 5e-5
    # Learning rate of a freshly initialised vision connector (the composite policy's frame projector);
    # None = same as lr.
    connector_lr: float | None = None
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0

    def validate(self, where: str) -> None:
        _positive(where, "optim.lr", self.lr)
        for name in ("sqr_lr", "connector_lr"):
            if getattr(self, name) is not None:
                _positive(where, f"optim.{name}", getattr(self, name))
        if self.warmup_steps < 0:
            raise ConfigError(f"{where}: optim.warmup_steps must be >= 0")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{where}: optim.betas must lie in [0, 1)")


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    # Keep this many most recent complete checkpoints (0 keeps all).
    keep_last: int = 2
    # "auto": resume from the newest complete checkpoint in the run's checkpoint folder if there is one;
    # "never": start fresh (an existing checkpoint folder is then an error); or a path to one checkpoint.
    resume: str = "auto"
    # Verify every file's sha256 against the manifest before loading (sizes are always checked).
    verify_checksums: bool = True
    # Also write the model in Hugging Face format (save_pretrained) inside each checkpoint.
    save_hf_model: bool = True

    def validate(self, where: str) -> None:
        _positive(where, "checkpoint.every_steps", self.every_steps)
        if self.keep_last < 0:
            raise ConfigError(f"{where}: checkpoint.keep_last must be >= 0")


@dataclass
class LoggingConfig:
    every_steps: int = 1
    tensorboard: bool = True
    progress_bar: bool = True

    def validate(self, where: str) -> None:
        _positive(where, "logging.every_steps", self.every_steps)


@dataclass
class DataConfig:
    """Where training examples come from.

    kind:
      vsr_jsonl         a Stage-1 / Stage-2 example file written by ``vsr train build-data`` (query, the
                        engine's top-1 video, matched label, rationale, frames reference, negatives).
      synthetic_tokens  random token prompts with a token-level reward; a self-contained task used by tests
                        and the step-time benchmark of the bare training machinery.
    """

    kind: Literal["vsr_jsonl", "synthetic_tokens"] = "vsr_jsonl"
    path: str | None = None
    engine_dir: str | None = None
    # Videos: a jsonl of {"video_id", "path"[, "split"]} rows (the format `vsr data synth` writes).
    corpus: str | None = None
    corpus_split: str | None = None
    # synthetic_tokens only
    num_examples: int = 64
    prompt_length: int = 8
    completion_length: int = 8
    vocab_size: int | None = None

    def validate(self, where: str) -> None:
        if self.kind == "vsr_jsonl":
            for key in ("path", "engine_dir", "corpus"):
                if getattr(self, key) is None:
                    raise ConfigError(f"{where}: data.{key} is required for data.kind 'vsr_jsonl'")
        _positive(where, "data.num_examples", self.num_examples)
        _positive(where, "data.prompt_length", self.prompt_length)
        _positive(where, "data.completion_length", self.completion_length)


# ----------------------------------------------------------------------------------------------------------
# Stage configs
# ----------------------------------------------------------------------------------------------------------


@dataclass
class VerifyEvalConfig:
    """A learning curve of the verdict during Stage 1: every `every_steps` optimizer steps (0: never) the
    policy answers the (query, shown video) pairs of `examples` (a `vsr train build-data --natural` file:
    each query with the engine's own top-1, as an agent's first turn) greedily, and the share of right
    verdicts is logged as eval/ver_turn1 with the examples seen so far (before training too)."""

    every_steps: int = 0
    examples: str | None = None
    # The split of data.corpus its videos are in (None: the whole corpus file).
    corpus_split: str | None = None
    max_examples: int = 64
    max_new_tokens: int = 96
    batch_size: int = 8

    def validate(self, where: str) -> None:
        if self.every_steps < 0:
            raise ConfigError(f"{where}: verify_eval.every_steps must be >= 0")
        if self.every_steps and not self.examples:
            raise ConfigError(f"{where}: verify_eval.examples is required when verify_eval.every_steps > 0")
        for key in ("max_examples", "max_new_tokens", "batch_size"):
            _positive(where, f"verify_eval.{key}", getattr(self, key))


@dataclass
class SFTConfig:
    output_dir: str = "runs/sft"
    seed: int = 0
    epochs: int = 1
    # Stop after this many optimizer steps (None = run all epochs).
    max_steps: int | None = None
    # CE + infonce.weight * InfoNCE of the refined query (paper: lambda 0.3, tau 0.1, 24 negatives).
    infonce: InfoNCEConfig = field(default_factory=InfoNCEConfig)
    verify_eval: VerifyEvalConfig = field(default_factory=VerifyEvalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self, where: str) -> None:
        _positive(where, "epochs", self.epochs)
        if self.max_steps is not None:
            _positive(where, "max_steps", self.max_steps)


@dataclass
class GRPOSettings:
    group_size: int = 8
    beta: float = 0.01
    clip_eps_low: float = 0.2
    # None = symmetric clipping (clip_eps_low); DAPO's clip-higher sets this above clip_eps_low.
    clip_eps_high: float | None = None
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = "grpo"
    # Divide advantages by the group std (GRPO); Dr. GRPO turns this off.
    scale_rewards: bool = True
    advantage_eps: float = 1e-4
    # Policy-gradient iterations over one batch of rollouts (mu); 1 = purely on-policy.
    num_iterations: int = 1
    max_completion_tokens: int = 768
    temperature: float = 1.0
    top_p: float = 1.0
    # Normaliser of the dr_grpo loss (tokens); None = max_completion_tokens.
    dr_grpo_max_tokens: int | None = None

    def validate(self, where: str) -> None:
        if self.group_size < 2:
            raise ConfigError(
                f"{where}: grpo.group_size must be >= 2 (advantages compare samples of a group)"
            )
        if self.beta < 0:
            raise ConfigError(f"{where}: grpo.beta must be >= 0")
        if not 0 < self.clip_eps_low < 1:
            raise ConfigError(f"{where}: grpo.clip_eps_low must lie in (0, 1)")
        if self.clip_eps_high is not None and self.clip_eps_high <= 0:
            raise ConfigError(f"{where}: grpo.clip_eps_high must be > 0")
        _positive(where, "grpo.num_iterations", self.num_iterations)
        _positive(where, "grpo.max_completion_tokens", self.max_completion_tokens)
        _positive(where, "grpo.temperature", self.temperature)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{where}: grpo.top_p must lie in (0, 1]")


@dataclass
class RolloutConfig:
    """How a GRPO rollout talks to the search engine.

    single_turn   the paper's released setting: one verify turn on a pre-retrieved top-1 video.
    multi_turn    true agent rollouts: refine with SQR and re-retrieve (one engine.refine_group call per
                  GRPO group, each trajectory's shown videos excluded) for up to max_turns turns.
    """

    mode: Literal["single_turn", "multi_turn"] = "single_turn"
    max_turns: int = 2
    exclude_seen_videos: bool = True
    accumulate_soft_tokens: bool = False
    # Keep training the SQR heads with the retrieval objective (GRPOConfig.infonce) during GRPO.
    train_sqr_heads: bool = False

    def validate(self, where: str) -> None:
        _positive(where, "rollout.max_turns", self.max_turns)
        if self.mode == "single_turn" and self.max_turns != 1:
            # Single-turn mode has exactly one turn; a different value is a misunderstanding worth flagging.
            raise ConfigError(f"{where}: rollout.max_turns must be 1 when rollout.mode is 'single_turn'")


@dataclass
class GRPOConfig:
    output_dir: str = "runs/grpo"
    seed: int = 0
    max_steps: int = 1000
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(max_turns=1))
    # The reward weights and retrieval-reward variant are vsr_model.rewards.RewardConfig itself.
    rewards: RewardConfig = field(default_factory=RewardConfig)
    # The retrieval objective: the retrieval reward's temperature and negatives, and with
    # rollout.train_sqr_heads the weight of the SQR heads' InfoNCE loss.
    infonce: InfoNCEConfig = field(default_factory=InfoNCEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-7, sqr_lr=None))
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self, where: str) -> None:
        _positive(where, "max_steps", self.max_steps)
        if self.grpo.loss_type == "dr_grpo" and self.grpo.scale_rewards:
            raise ConfigError(
                f"{where}: grpo.loss_type 'dr_grpo' removes the std normalisation; set grpo.scale_rewards: false"
            )


@dataclass
class EvalVariant:
    """One agent run of an evaluation: which verifier and refiner (vsr_model.agent), with how many verify
    turns (None: agent.max_turns). Its results are keyed `{refiner}_{turns}` (`next` for refiner none),
    prefixed `oracle_` for the oracle verifier: sqr_3, next_2, oracle_hqr_3..."""

    verifier: Literal["policy", "oracle"] = "policy"
    refiner: Literal["sqr", "hqr", "none"] = "sqr"
    max_turns: int | None = None
    title: str | None = None

    def validate(self, where: str) -> None:
        if self.max_turns is not None:
            _positive(where, "variants[].max_turns", self.max_turns)


@dataclass
class EvalConfig:
    output_dir: str = "runs/eval"
    seed: int = 0
    # Policy: a saved vsr policy folder, or a training checkpoint folder (its hf/ sub-folder is used).
    policy: str = ""
    engine_dir: str = ""
    # Videos of the search corpus: a jsonl of {"video_id", "path"[, "split"]} rows (vsr corpus format).
    corpus: str = ""
    corpus_split: str | None = None
    # Annotation file of the split to evaluate (read with vsr_model.data.read_moments).
    queries: str = ""
    queries_format: str | None = None
    max_queries: int | None = None
    # The agent every variant runs (turns, exclusion, soft-token accumulation, ranking depth, batch,
    # generation, frame sampling, search mode); a variant sets only its verifier, refiner and turns.
    agent: AgentConfig = field(
        default_factory=lambda: AgentConfig(generation=GenerationSettings(max_new_tokens=768))
    )
    # Empty: one run of `agent` as configured.
    variants: list[EvalVariant] = field(default_factory=list)
    # Also report every run cut to its first t < T turns (QueryTrace.cut; greedy decoding makes them the
    # runs with fewer turns), and `single_shot` (the first policy-verifier run's turn 1, no refinement).
    cut_turns: bool = True
    # Also run the policy on the ground-truth video of every query (`grounding_only`): verification and
    # grounding with retrieval taken out.
    grounding_only: bool = False
    # Resamples of the 95% paired bootstrap intervals (0: no intervals).
    bootstrap_samples: int = 2000
    # Query cards in report.html per variant (0: no report).
    report_cards: int = 30
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"

    def validate(self, where: str) -> None:
        for key in ("policy", "engine_dir", "corpus", "queries"):
            if not getattr(self, key):
                raise ConfigError(f"{where}: '{key}' is required")
        if self.max_queries is not None:
            _positive(where, "max_queries", self.max_queries)
        if self.bootstrap_samples < 0 or self.report_cards < 0:
            raise ConfigError(f"{where}: bootstrap_samples and report_cards must be >= 0")
        if self.agent.generation.do_sample:
            raise ConfigError(f"{where}: evaluation decodes greedily; set agent.generation.do_sample: false")
        keys = [variant_key(v, self.agent) for v in self.variants]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ConfigError(f"{where}: variants repeat {repeated}")


def variant_key(variant: EvalVariant, agent: AgentConfig) -> str:
    """The results key of a variant run: {refiner}_{turns}, `next` for refiner none, `oracle_` prefix."""
    refiner = "next" if variant.refiner == "none" else variant.refiner
    prefix = "oracle_" if variant.verifier == "oracle" else ""
    return f"{prefix}{refiner}_{variant.max_turns or agent.max_turns}"


def _positive(where: str, key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{where}: {key} must be > 0, got {value!r}")
