"""Process-group set-up, DeepSpeed config assembly, optimizer / schedule construction and
``deepspeed.initialize``: the plumbing SFT, GRPO and evaluation share.

Runs under the ``deepspeed`` launcher (one or many nodes), torchrun, or plain ``python`` (one process).
On a machine without CUDA the gloo backend and DeepSpeed's CPU accelerator are used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vsr_train.config import ConfigError, DeepSpeedSettings, OptimConfig

log = logging.getLogger(__name__)

PRESETS = ("zero1", "zero2", "zero3", "zero3_offload")
# Keys the YAML owns; a DeepSpeed JSON that sets them differently is an error.
_OWNED_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_distributed(settings: DeepSpeedSettings) -> DistInfo:
    """Join the process group the launcher describes (RANK / WORLD_SIZE / MASTER_ADDR are launcher
    plumbing), or form a one-process group when started with plain python."""
    import deepspeed
    import torch.distributed as dist

    backend = settings.dist_backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("deepspeed.dist_backend is 'nccl' but CUDA is not available; use 'gloo' or 'auto'")
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            # Plain `python` start: describe a one-process group the way a launcher would.
            os.environ.update(
                {
                    "RANK": "0",
                    "WORLD_SIZE": "1",
                    "LOCAL_RANK": "0",
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(_free_port()),
                }
            )
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    import torch.distributed as dist

    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(value: float, device: torch.device) -> float:
    import torch.distributed as dist

    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return float(tensor.item())


def seed_everything(seed: int, rank: int) -> None:
    """Different streams per rank (sampling must differ across ranks), reproducible per (seed, rank)."""
    stream = seed * 1000 + rank
    random.seed(stream)
    np.random.seed(stream % (2**32))
    torch.manual_seed(stream)


# ----------------------------------------------------------------------------------------------------------
# DeepSpeed config
# ----------------------------------------------------------------------------------------------------------


def load_deepspeed_json(name_or_path: str) -> dict[str, Any]:
    if name_or_path in PRESETS:
        text = resources.files("vsr_train").joinpath("configs", f"{name_or_path}.json").read_text()
        where = f"preset {name_or_path}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(
                f"deepspeed.config {name_or_path!r} is neither a preset {list(PRESETS)} nor an existing JSON file"
            )
        text, where = path.read_text(), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"DeepSpeed config {where}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"DeepSpeed config {where}: the top level must be an object")
    return data


def build_deepspeed_config(settings: DeepSpeedSettings, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict: the JSON's ZeRO settings + batch sizes, clipping and precision from YAML."""
    ds = load_deepspeed_json(settings.config)
    wanted = {
        "train_micro_batch_size_per_gpu": settings.micro_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "gradient_clipping": settings.gradient_clipping,
    }
    for key in _OWNED_KEYS:
        if key in ds and ds[key] != wanted[key]:
            raise ConfigError(
                f"DeepSpeed config {settings.config!r} sets {key}={ds[key]!r} but the YAML says {wanted[key]!r}; "
                "remove it from the JSON (the YAML is the one source)"
            )
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(
            f"DeepSpeed config {settings.config!r} declares an optimizer/scheduler; vsr_train builds them from "
            "the YAML optim section (deepspeed.optimizer selects the implementation)"
        )
    if ds.get("fp16", {}).get("enabled", False):
        raise ConfigError(
            "fp16 is not supported (GRPO ratios and KL are unstable in fp16); use precision bf16 or fp32"
        )
    if "train_batch_size" in ds:
        raise ConfigError("remove train_batch_size from the DeepSpeed JSON; it is derived from the YAML")
    ds.update(wanted)
    ds["train_batch_size"] = settings.micro_batch_size * settings.gradient_accumulation_steps * world_size
    ds["bf16"] = {"enabled": settings.precision == "bf16"}
    ds.pop("fp16", None)
    return ds


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


# ----------------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ----------------------------------------------------------------------------------------------------------


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    return param.dim() < 2 or "norm" in name.lower() or name.endswith(".bias")


def param_groups(
    model: torch.nn.Module,
    optim: OptimConfig,
    sqr_prefixes: tuple[str, ...] = (),
    connector_prefixes: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """AdamW groups: (main | connector | SQR heads) x (decay | no decay). SQR heads get ``optim.sqr_lr``,
    the vision connector (a freshly initialised frame projector) ``optim.connector_lr``; None = ``lr``."""
    rates = {"main": optim.lr, "connector": optim.connector_lr, "sqr": optim.sqr_lr}
    buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        kind = "main"
        if any(name.startswith(p) for p in sqr_prefixes):
            kind = "sqr"
        elif any(name.startswith(p) for p in connector_prefixes):
            kind = "connector"
        buckets.setdefault((kind, _no_decay(name, param)), []).append(param)
    if not buckets:
        raise ValueError("the model has no trainable parameters")
    groups = []
    for (kind, no_decay), params in sorted(buckets.items()):
        lr = rates[kind] if rates[kind] is not None else optim.lr
        groups.append(
            {
                "params": params,
                "lr": lr,
                "initial_lr": lr,
                "weight_decay": 0.0 if no_decay else optim.weight_decay,
                "name": f"{kind}_{'no_decay' if no_decay else 'decay'}",
                "kind": kind,
            }
        )
    return groups


def learning_rates(optimizer) -> dict[str, float]:
    """Current rate of each parameter kind (main / connector / sqr), as ``lr/<kind>`` log scalars."""
    rates: dict[str, float] = {}
    for group in optimizer.param_groups:
        rates.setdefault(f"lr/{group.get('kind', 'main')}", float(group["lr"]))
    return rates


def build_optimizer(groups: list[dict[str, Any]], settings: DeepSpeedSettings, optim: OptimConfig):
    if settings.optimizer == "adamw_torch":
        # The fused kernel makes one pass over each tensor (about 6x faster than the per-op path on
        # CPU); it needs every parameter on a device it supports.
        devices = {p.device.type for group in groups for p in group["params"]}
        fused = devices <= {"cpu", "cuda"}
        return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=fused or None)
    if settings.optimizer == "deepspeed_cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, adamw_mode=True)
    from deepspeed.ops.adam import FusedAdam

    return FusedAdam(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, adam_w_mode=True)


def lr_multiplier(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Warmup (linear from 0) then constant, cosine or linear decay to 0 at ``total_steps``."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.scheduler == "constant":
        return 1.0
    span = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    if optim.scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(optimizer, optim: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, optim, total_steps))


def deepspeed_engine(model: torch.nn.Module, optimizer, scheduler, ds_config: dict[str, Any]):
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False
    )
    return engine


def training_engine(
    loaded, optim: OptimConfig, settings: DeepSpeedSettings, ds_config: dict[str, Any], total_updates: int
):
    """The DeepSpeed engine of a training stage: parameter groups (SQR heads at their own learning
    rate), optimizer and schedule over `total_updates` optimizer steps."""
    optimizer = build_optimizer(
        param_groups(loaded.model, optim, loaded.sqr_prefixes, loaded.connector_prefixes), settings, optim
    )
    return deepspeed_engine(
        loaded.model, optimizer, build_scheduler(optimizer, optim, total_updates), ds_config
    )
