"""Where models and weights live: the policy's frozen companions (the GRPO reference, the search engine)
on the training device, and whole weights under ZeRO-3 (saving, rollouts).

`place_frozen` is the one place a frozen module is put on a device; `frozen_reference` builds the GRPO
reference on the policy's device (ZeRO-0/1/2: a whole copy there; ZeRO-3: a DeepSpeed engine that shards it
like the policy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from vsr_train.runtime import zero_stage


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def place_frozen(obj: Any, device: torch.device | str) -> Any:
    """Freeze `obj` and put it on `device`: an nn.Module, or an object holding modules (a search engine:
    its `to(device)` when it has one, and every nn.Module attribute frozen)."""
    if isinstance(obj, torch.nn.Module):
        return freeze(obj).to(device)
    if hasattr(obj, "to"):
        obj.to(device)
    for value in vars(obj).values():
        if isinstance(value, torch.nn.Module):
            freeze(value)
            if not hasattr(obj, "to"):
                value.to(device)
    return obj


def frozen_reference(model: torch.nn.Module, ds_config: dict[str, Any], device: torch.device | str):
    """A frozen copy of the policy (the GRPO reference) where the policy computes: ZeRO-0/1/2 keep it whole
    on `device`; ZeRO-3 shards it like the policy (DeepSpeed places the shards)."""
    if zero_stage(ds_config) != 3:
        return place_frozen(model, device)
    freeze(model)
    import deepspeed

    cfg = {k: v for k, v in ds_config.items() if k not in ("gradient_clipping",)}
    zero = dict(cfg["zero_optimization"])
    zero.pop("offload_optimizer", None)
    cfg["zero_optimization"] = zero
    engine, _, _, _ = deepspeed.initialize(model=model, config=cfg, dist_init_required=False)
    engine.eval()
    return engine


# ----------------------------------------------------------------------------------------------------------
# Whole weights under ZeRO-3
# ----------------------------------------------------------------------------------------------------------


def consolidated_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """Full model state dict on rank 0 (None elsewhere). ZeRO-3 gathers the shards layer by layer."""
    import torch.distributed as dist

    if engine.zero_optimization_stage() == 3:
        # Collective on every rank; needs stage3_gather_16bit_weights_on_model_save (set in the presets).
        return engine._zero3_consolidated_16bit_state_dict()
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}


@contextlib.contextmanager
def gathered_parameters(engine) -> Iterator[torch.nn.Module]:
    """The engine's module with every parameter whole on every rank (collective on entry and exit under
    ZeRO-3, where the shards are gathered with deepspeed.zero.GatheredParameters and partitioned again on
    exit; a no-op for ZeRO-0/1/2, whose module always holds full weights). Changes made inside are lost
    under ZeRO-3: use it to read weights (saving, rollouts), never to modify them."""
    if engine.zero_optimization_stage() != 3:
        yield engine.module
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        yield engine.module


def _zero3_parameter_offload(engine):
    """DeepSpeed's ZeRO-3 parameter manager of an engine (it owns the per-module fetch/release hooks)."""
    offload = getattr(engine.optimizer, "parameter_offload", engine.optimizer)
    if not hasattr(offload, "forward_hooks") or not hasattr(offload, "_register_deepspeed_module"):
        raise RuntimeError(
            f"cannot reach the ZeRO-3 parameter hooks of this DeepSpeed engine ({type(engine.optimizer).__name__}); "
            "this DeepSpeed version is not supported for rollouts on whole weights"
        )
    return offload


@contextlib.contextmanager
def whole_model(engine) -> Iterator[torch.nn.Module]:
    """The engine's module with whole weights and no ZeRO-3 collectives inside, for code that calls the
    model's own methods rather than its forward (generation, the SQR latent rollout, re-encoding).

    Under ZeRO-3 every parameter is gathered on every rank (``gathered_parameters``) and the engine's
    per-module fetch / release hooks are lifted for the duration: a module forward inside then neither
    fetches nor releases a parameter, so ranks may run different numbers of forwards (their own
    generation lengths and agent turns) without deadlocking, and the gathered weights stay whole until
    the context ends. The hooks are registered again on exit. Costs the whole model's memory on every
    rank while inside. Gradients are disabled inside. A no-op wrapper for ZeRO-0/1/2."""
    if engine.zero_optimization_stage() != 3:
        with torch.no_grad():
            yield engine.module
        return
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        # transformers' generate would then default to synced_gpus and wait for the other ranks' steps.
        raise RuntimeError(
            "whole_model: a transformers HfDeepSpeedConfig with ZeRO-3 is alive, so Hugging Face generate "
            "would synchronise every decoding step across ranks; build this model without it"
        )
    offload = _zero3_parameter_offload(engine)
    with gathered_parameters(engine) as module:
        for handle in (*offload.forward_hooks, *offload.backward_hooks):
            handle.remove()
        offload.forward_hooks.clear()
        offload.backward_hooks.clear()
        for param in module.parameters():
            param.ds_active_sub_modules.clear()
        try:
            with torch.no_grad():
                yield module
        finally:
            offload._register_deepspeed_module(offload.module)
