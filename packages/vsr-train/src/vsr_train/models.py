"""Building the policy (and the frozen GRPO reference) so that ZeRO-3 partitions it at construction.

Under ZeRO-3 a transformers ``HfDeepSpeedConfig`` must exist (and stay referenced) before the model is
built: transformers then constructs it inside DeepSpeed's partitioning context and loads weights shard by
shard. The returned ``LoadedModel`` keeps that reference alive for the model's lifetime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vsr_train.config import ModelConfig
from vsr_train.runtime import consolidated_state_dict


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
    from vsr_train.vsr_adapter import load_vsr_policy

    return load_vsr_policy(cfg, ds_config, precision, engine_dir)
