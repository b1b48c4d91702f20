"""Loading the policy a training run trains (and the frozen GRPO reference): a plain Hugging Face causal
LM, or the VideoSearch-R1 video policy (vsr_model.policy) with its SQR heads.

Under ZeRO-3 a transformers ``HfDeepSpeedConfig`` must exist (and stay referenced) before a plain causal LM
is built: transformers then constructs it inside DeepSpeed's partitioning context and loads weights shard
by shard. The returned ``LoadedModel`` keeps that reference alive for the model's lifetime.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vsr_train.config import ModelConfig
from vsr_train.placement import consolidated_state_dict, gathered_parameters

SQR_PREFIXES = ("sqr.",)
# The composite policy's frame connector starts from random weights (the Qwen families' mergers do not).
CONNECTOR_PREFIXES = ("projector.",)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any | None
    # Parameter-name prefixes of the SQR heads (their own learning rate); empty for a plain LM.
    sqr_prefixes: tuple[str, ...] = ()
    # Parameter-name prefixes of a freshly initialised vision connector (``optim.connector_lr``).
    connector_prefixes: tuple[str, ...] = ()
    # Custom export (engine, folder, is_main), called on every rank; default: transformers' save_pretrained.
    save_fn: Callable[[Any, Path, bool], None] | None = None
    _keepalive: list[Any] = field(default_factory=list)

    def save_hf(self, engine, folder: Path, is_main: bool) -> None:
        """Hugging Face folder: config + safetensors weights (+ tokenizer when there is one). Collective:
        every rank calls it (ZeRO-3 gathers the shards); rank 0 writes ``folder``."""
        if self.save_fn is not None:
            self.save_fn(engine, folder, is_main)
            return
        state_dict = consolidated_state_dict(engine)
        if not is_main:
            return
        self.model.save_pretrained(str(folder), state_dict=state_dict, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))


def torch_dtype(cfg: ModelConfig, precision: str) -> torch.dtype:
    name = cfg.load_dtype if cfg.load_dtype != "auto" else ("bfloat16" if precision == "bf16" else "float32")
    return getattr(torch, name)


def load_causal_lm(cfg: ModelConfig, ds_config: dict[str, Any], precision: str) -> LoadedModel:
    """A Hugging Face causal LM from a name / path, or randomly initialised from ``cfg.random_init``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig

    keepalive: list[Any] = []
    if ds_config.get("zero_optimization", {}).get("stage") == 3:
        keepalive.append(HfDeepSpeedConfig(ds_config))
    dtype = torch_dtype(cfg, precision)
    if cfg.random_init is not None:
        options = dict(cfg.random_init)
        config = AutoConfig.for_model(options.pop("model_type"), **options)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        tokenizer = None
    else:
        model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return LoadedModel(model=model, tokenizer=tokenizer, _keepalive=keepalive)


def load_policy(
    cfg: ModelConfig, ds_config: dict[str, Any], precision: str, engine_dir: str | None = None
) -> LoadedModel:
    if cfg.kind == "hf_causal_lm":
        return load_causal_lm(cfg, ds_config, precision)
    return load_vsr_policy(cfg, ds_config, precision, engine_dir)


# ----------------------------------------------------------------------------------------------------------
# The VideoSearch-R1 policy
# ----------------------------------------------------------------------------------------------------------


def _engine_dims(engine_dir: str) -> tuple[int, int]:
    meta = json.loads((Path(engine_dir) / "engine.json").read_text())
    return int(meta["embed_dim"]), int(meta["query_input_dim"])


def load_vsr_policy(
    cfg: ModelConfig, ds_config: dict[str, Any], precision: str, engine_dir: str | None = None
) -> LoadedModel:
    """A saved vsr policy (a folder with vsr_policy.json), or a fresh composite policy over an HF LLM
    (``name_or_path``; the default SmolLM2 when unset) with SQR heads sized for the engine.

    Every rank builds the whole policy; under ZeRO-3 ``deepspeed.initialize`` then partitions it. No
    transformers ``HfDeepSpeedConfig`` is created: the rollout runs on whole weights without collectives
    (placement.whole_model), which Hugging Face generate's ZeRO-3 default (synced_gpus) would contradict."""
    from vsr_model.policy import load_policy
    from vsr_model.policy.base import POLICY_CONFIG_FILE
    from vsr_model.policy.composite import CompositeVideoPolicy
    from vsr_model.sqr import SQRConfig

    path = Path(cfg.name_or_path) if cfg.name_or_path else None
    if path is not None and (path / POLICY_CONFIG_FILE).is_file():
        policy = load_policy(path)
    else:
        if engine_dir is None:
            raise ValueError("a fresh vsr_policy needs data.engine_dir to size its SQR heads")
        embed_dim, query_input_dim = _engine_dims(engine_dir)
        fresh = cfg.fresh
        composite = dataclasses.replace(
            fresh.composite, llm=cfg.name_or_path, freeze_frame_encoder=cfg.freeze_vision_tower
        )
        sqr = SQRConfig(embed_dim, query_input_dim, fresh.num_latents, fresh.append_mode)
        policy = CompositeVideoPolicy.build(composite, sqr)
    if cfg.freeze_vision_tower:
        for name, param in policy.named_parameters():
            if name.startswith("frame_encoder.") or ".visual." in name or name.startswith("visual."):
                param.requires_grad_(False)
        # A frozen tower must also stay in inference mode (BatchNorm statistics, dropout) while the
        # training loop switches the rest of the policy to train mode.
        for name, module in policy.named_modules():
            if name in ("frame_encoder", "visual") or name.endswith(".visual"):
                module.register_forward_pre_hook(_force_eval)
    if cfg.gradient_checkpointing:
        backbone = getattr(policy, "lm", None) or getattr(policy, "model", None)
        if backbone is None or not hasattr(backbone, "gradient_checkpointing_enable"):
            raise ValueError(f"{type(policy).__name__} exposes no HF backbone for gradient checkpointing")
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return LoadedModel(
        model=policy,
        tokenizer=None,
        sqr_prefixes=SQR_PREFIXES,
        connector_prefixes=CONNECTOR_PREFIXES,
        save_fn=_save_policy,
    )


def _force_eval(module: torch.nn.Module, _inputs) -> None:
    if module.training:
        module.eval()


def _save_policy(engine, folder: Path, is_main: bool) -> None:
    """The policy folder (vsr_model.policy.load_policy reads it) on rank 0. Collective: under ZeRO-3 every
    rank gathers the whole weights, then the policy's own atomic save writes them."""
    with gathered_parameters(engine) as policy:
        if is_main:
            policy.save_pretrained(folder)
