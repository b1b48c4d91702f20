"""Stage 1: supervised cold start (next-token loss on the assistant turn + lambda * InfoNCE of the refined
query for the VideoSearch-R1 task), one readable loop on a DeepSpeed engine."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch

from vsr_train.checkpoint import CheckpointManager
from vsr_train.config import SFTConfig, config_to_dict
from vsr_train.data_order import ShardedOrder
from vsr_train.placement import whole_model
from vsr_train.policy_loader import LoadedModel, load_policy
from vsr_train.run_log import RunLogger
from vsr_train.runtime import (
    DistInfo,
    build_deepspeed_config,
    init_distributed,
    learning_rates,
    seed_everything,
    training_engine,
    zero_stage,
)
from vsr_train.tasks import SFTTask, synthetic_token_task


def build_sft_task(cfg: SFTConfig, loaded: LoadedModel, dist: DistInfo) -> SFTTask:
    if cfg.data.kind == "synthetic_tokens":
        return synthetic_token_task(cfg.data, cfg.model.kind, loaded.model, cfg.seed)
    from vsr_train.vsr_task import VideoSearchSFTTask

    return VideoSearchSFTTask(cfg, loaded, dist)


def total_sft_steps(cfg: SFTConfig, order: ShardedOrder) -> int:
    micro_batches = order.batches_per_epoch * cfg.epochs
    steps = micro_batches // cfg.deepspeed.gradient_accumulation_steps
    if steps == 0:
        raise ValueError(
            f"{order.batches_per_epoch} micro-batches per epoch x {cfg.epochs} epochs is less than one "
            f"optimizer step of {cfg.deepspeed.gradient_accumulation_steps} accumulated micro-batches"
        )
    return min(steps, cfg.max_steps) if cfg.max_steps is not None else steps


def run_sft(cfg: SFTConfig, trust_checkpoint: bool = False) -> Path:
    """Train; return the folder of the final checkpoint. ``trust_checkpoint`` resumes from a checkpoint
    with DeepSpeed's own (unrestricted) unpickler: only for checkpoints you trust."""
    dist = init_distributed(cfg.deepspeed)
    seed_everything(cfg.seed, dist.rank)
    ds_config = build_deepspeed_config(cfg.deepspeed, dist.world_size)
    loaded = load_policy(cfg.model, ds_config, cfg.deepspeed.precision, cfg.data.engine_dir)
    task = build_sft_task(cfg, loaded, dist)
    order = ShardedOrder(
        task.num_examples, cfg.deepspeed.micro_batch_size, dist.rank, dist.world_size, cfg.seed
    )
    total_steps = total_sft_steps(cfg, order)
    engine = training_engine(loaded, cfg.optim, cfg.deepspeed, ds_config, total_steps)

    output_dir = Path(cfg.output_dir)
    checkpoints = CheckpointManager(
        output_dir / "checkpoints",
        dist,
        cfg.checkpoint.keep_last,
        cfg.checkpoint.verify_checksums,
        trust=trust_checkpoint,
    )
    step, resume_from = checkpoints.resume(engine, order, cfg.checkpoint.resume)
    logger = RunLogger(
        output_dir, dist, total_steps, cfg.logging.tensorboard, cfg.logging.progress_bar, "sft"
    )
    logger.start(step)
    save_hf = loaded.save_hf if cfg.checkpoint.save_hf_model else None
    trainer_state = {"stage": "sft", "config": config_to_dict(cfg)}
    grad_accum = cfg.deepspeed.gradient_accumulation_steps

    every = cfg.verify_eval.every_steps if hasattr(task, "verify_accuracy") else 0
    per_step = cfg.deepspeed.micro_batch_size * grad_accum * dist.world_size

    def verify(at: int) -> None:
        """The learning curve: turn-1 verdict accuracy on the verify set, with the examples seen so far."""
        engine.eval()
        with (
            whole_model(engine) if zero_stage(ds_config) == 3 else contextlib.nullcontext(engine.module) as m
        ):
            metrics = task.verify_accuracy(m, dist)
        engine.train()
        logger.log(at, {**metrics, "eval/examples_seen": float(at * per_step)})

    if every and step == 0:
        verify(0)
    engine.train()
    last_saved = step if resume_from is not None else -1
    while step < total_steps:
        start = time.perf_counter()
        sums: dict[str, float] = {}
        tokens = 0
        for _ in range(grad_accum):
            batch = task.batch(order.next_batch(), dist.device)
            loss, parts = task.loss(engine, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"SFT loss is {loss.item()} at step {step} (parts: {parts})")
            engine.backward(loss)
            engine.step()
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
            tokens += int(batch["input_ids"].numel())
        step += 1
        if step % cfg.logging.every_steps == 0 or step == total_steps:
            seconds = time.perf_counter() - start
            metrics = {k: v / grad_accum for k, v in sums.items()}
            metrics.update(learning_rates(engine.optimizer))
            metrics["grad_norm"] = _finite_or_nan(engine.get_global_grad_norm())
            metrics["tokens_per_s"] = tokens * dist.world_size / max(seconds, 1e-9)
            logger.log(step, metrics)
        if every and (step % every == 0 or step == total_steps):
            verify(step)
        logger.advance()
        if step % cfg.checkpoint.every_steps == 0 or step == total_steps:
            checkpoints.save(engine, step, trainer_state | {"data_order": order.state_dict()}, save_hf)
            last_saved = step
    if last_saved != step:
        checkpoints.save(engine, step, trainer_state | {"data_order": order.state_dict()}, save_hf)
    logger.close()
    return checkpoints.root / f"step-{step:08d}"


def _finite_or_nan(value) -> float:
    if value is None:
        return math.nan
    return float(value)
