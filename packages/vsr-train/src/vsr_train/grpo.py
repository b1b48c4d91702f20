"""Stage 2: GRPO on a DeepSpeed engine, one readable loop.

Per optimizer step, on every rank: draw prompts -> roll out ``group_size`` completions each (rewards from
the task) -> group advantages -> reference (and, for several iterations, old-policy) log-probabilities ->
``num_iterations`` passes of clipped-surrogate + beta * k3-KL updates over micro-batches -> log ->
checkpoint. The math lives in grpo_math; the task (prompts, rollouts, rewards) behind tasks.GRPOTask.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path

import torch

from vsr_train.checkpoint import CheckpointManager
from vsr_train.config import GRPOConfig, config_to_dict
from vsr_train.data_order import ShardedOrder
from vsr_train.grpo_math import group_advantages, grpo_loss
from vsr_train.placement import frozen_reference, whole_model
from vsr_train.policy_loader import LoadedModel, load_policy
from vsr_train.run_log import RunLogger
from vsr_train.runtime import (
    DistInfo,
    all_reduce_sum,
    build_deepspeed_config,
    init_distributed,
    learning_rates,
    seed_everything,
    training_engine,
    zero_stage,
)
from vsr_train.tasks import GRPOTask, Rollouts, synthetic_token_task


def build_grpo_task(cfg: GRPOConfig, loaded: LoadedModel, dist: DistInfo) -> GRPOTask:
    if cfg.data.kind == "synthetic_tokens":
        return synthetic_token_task(cfg.data, cfg.model.kind, loaded.model, cfg.seed)
    from vsr_train.vsr_task import VideoSearchGRPOTask

    return VideoSearchGRPOTask(cfg, loaded, dist)


def prompts_per_step(cfg: GRPOConfig) -> int:
    """Prompts each rank rolls out per optimizer step: one step consumes micro_batch_size x
    gradient_accumulation_steps sequences, group_size of them per prompt."""
    sequences = cfg.deepspeed.micro_batch_size * cfg.deepspeed.gradient_accumulation_steps
    if sequences % cfg.grpo.group_size != 0:
        raise ValueError(
            f"deepspeed.micro_batch_size x gradient_accumulation_steps = {sequences} sequences per step must be "
            f"a multiple of grpo.group_size = {cfg.grpo.group_size}"
        )
    return sequences // cfg.grpo.group_size


def frozen_logprobs(task: GRPOTask, model, rollouts: Rollouts, temperature: float) -> list[torch.Tensor]:
    """Log-probabilities of every micro-batch without gradient (reference or old policy)."""
    with torch.no_grad():
        return [task.logprobs(model, mb, temperature).detach() for mb in rollouts.micro_batches]


def build_reference(
    cfg: GRPOConfig, ds_config: dict, loaded: LoadedModel, init_rng: torch.Tensor, device: torch.device
):
    """The frozen reference policy with the starting weights, where the policy computes (`device`; the
    policy is there once DeepSpeed has wrapped it). ZeRO-3 cannot copy a partitioned model, so it loads
    the model again (partitioned too), replaying the RNG state of the policy's construction so that a
    randomly initialised policy and its reference start identical. None without a KL term."""
    if cfg.grpo.beta == 0:
        return None
    if zero_stage(ds_config) == 3:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(init_rng)
            reference = load_policy(cfg.model, ds_config, cfg.deepspeed.precision, cfg.data.engine_dir)
        return frozen_reference(reference.model, ds_config, device), reference
    return frozen_reference(copy.deepcopy(loaded.model), ds_config, device), None


def run_grpo(cfg: GRPOConfig, trust_checkpoint: bool = False) -> Path:
    """Train; return the folder of the final checkpoint. ``trust_checkpoint`` resumes from a checkpoint
    with DeepSpeed's own (unrestricted) unpickler: only for checkpoints you trust."""
    dist = init_distributed(cfg.deepspeed)
    seed_everything(cfg.seed, dist.rank)
    ds_config = build_deepspeed_config(cfg.deepspeed, dist.world_size)
    init_rng = torch.get_rng_state()
    loaded = load_policy(cfg.model, ds_config, cfg.deepspeed.precision, cfg.data.engine_dir)
    reference = build_reference(cfg, ds_config, loaded, init_rng, dist.device)
    task = build_grpo_task(cfg, loaded, dist)
    n_prompts = prompts_per_step(cfg)
    order = ShardedOrder(task.num_prompts, n_prompts, dist.rank, dist.world_size, cfg.seed)
    total_updates = cfg.max_steps * cfg.grpo.num_iterations
    engine = training_engine(loaded, cfg.optim, cfg.deepspeed, ds_config, total_updates)
    ref_model = reference[0] if reference is not None else None
    # Under ZeRO-3 a rollout either joins every rank's generation forward (synced, Hugging Face generate's
    # synced_gpus) or, for a task that calls the policy's own methods, runs on whole weights gathered on
    # every rank, without collectives (placement.whole_model).
    zero3 = zero_stage(ds_config) == 3
    whole = zero3 and getattr(task, "rollout_on_whole_model", False)

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
        output_dir, dist, cfg.max_steps, cfg.logging.tensorboard, cfg.logging.progress_bar, "grpo"
    )
    logger.start(step)
    save_hf = loaded.save_hf if cfg.checkpoint.save_hf_model else None
    trainer_state = {"stage": "grpo", "config": config_to_dict(cfg)}
    settings, grad_accum = cfg.grpo, cfg.deepspeed.gradient_accumulation_steps
    # A task may add its own differentiable objective to the GRPO loss (the SQR retrieval objective).
    has_auxiliary = hasattr(task, "auxiliary_loss")
    last_saved = step if resume_from is not None else -1

    while step < cfg.max_steps:
        step_start = time.perf_counter()
        # 1. Rollouts with the current policy.
        engine.eval()
        with whole_model(engine) if whole else contextlib.nullcontext(engine.module) as module:
            rollouts = task.rollout(
                module, order.next_batch(), settings, grad_accum, dist.device, zero3 and not whole
            )
        advantages = group_advantages(
            rollouts.rewards, settings.group_size, settings.scale_rewards, settings.advantage_eps
        )
        # Every row (one turn of one trajectory) carries its trajectory's advantage.
        row_advantages = advantages[rollouts.row_trajectory].to(dist.device)
        # 2. Frozen log-probabilities: reference, and old policy when several updates reuse the rollouts.
        logprob_start = time.perf_counter()
        ref_logprobs = frozen_logprobs(task, ref_model, rollouts, settings.temperature) if ref_model else None
        old_logprobs = (
            frozen_logprobs(task, engine, rollouts, settings.temperature)
            if settings.num_iterations > 1
            else None
        )
        loss_masks = [m.to(dist.device) for m in rollouts.loss_masks]
        if len(loss_masks) != cfg.deepspeed.gradient_accumulation_steps:
            raise RuntimeError(
                f"the rollout produced {len(loss_masks)} micro-batches; DeepSpeed accumulates "
                f"{cfg.deepspeed.gradient_accumulation_steps} per optimizer step"
            )
        # DAPO normalises by the tokens of the whole step on all ranks; DeepSpeed averages gradients over
        # ranks and accumulation steps, so each micro-batch scales its token sum by world x accumulation.
        total_tokens = None
        if settings.loss_type == "dapo":
            global_tokens = all_reduce_sum(float(sum(m.sum() for m in loss_masks)), dist.device)
            total_tokens = global_tokens / (dist.world_size * cfg.deepspeed.gradient_accumulation_steps)
        frozen_seconds = time.perf_counter() - logprob_start

        # 3. Policy updates.
        backward_start = time.perf_counter()
        engine.train()
        sums: dict[str, float] = {}
        num_micro = 0
        for _ in range(settings.num_iterations):
            for i, rows in enumerate(rollouts.row_slices()):
                logprobs = task.logprobs(engine, rollouts.micro_batches[i], settings.temperature)
                out = grpo_loss(
                    logprobs,
                    old_logprobs[i] if old_logprobs is not None else logprobs.detach(),
                    ref_logprobs[i] if ref_logprobs is not None else None,
                    row_advantages[rows],
                    loss_masks[i],
                    beta=settings.beta,
                    clip_eps_low=settings.clip_eps_low,
                    clip_eps_high=settings.clip_eps_high,
                    loss_type=settings.loss_type,
                    max_completion_tokens=settings.dr_grpo_max_tokens or settings.max_completion_tokens,
                    total_tokens=total_tokens,
                )
                loss = out.loss
                auxiliary = task.auxiliary_loss(engine, rollouts.micro_batches[i]) if has_auxiliary else None
                if auxiliary is not None:
                    extra_loss, extra_metrics = auxiliary
                    loss = loss + extra_loss
                    for key, value in extra_metrics.items():
                        sums[key] = sums.get(key, 0.0) + value
                engine.backward(loss)
                engine.step()
                num_micro += 1
                for key, value in (
                    ("loss", loss),
                    ("policy_loss", out.policy_loss),
                    ("kl", out.kl),
                    ("clip_fraction", out.clip_fraction),
                    ("ratio", out.ratio_mean),
                ):
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
        backward_seconds = time.perf_counter() - backward_start
        step += 1

        # 4. Log.
        if step % cfg.logging.every_steps == 0 or step == cfg.max_steps:
            seconds = time.perf_counter() - step_start
            metrics = {k: v / num_micro for k, v in sums.items()}
            metrics.update(_reward_metrics(rollouts, advantages))
            generated = float(sum(m.sum() for m in rollouts.loss_masks))
            metrics["completion_tokens_mean"] = generated / rollouts.num_rows
            metrics["tokens_per_s"] = all_reduce_sum(generated, dist.device) / max(seconds, 1e-9)
            metrics.update(learning_rates(engine.optimizer))
            grad_norm = engine.get_global_grad_norm()
            metrics["grad_norm"] = math.nan if grad_norm is None else float(grad_norm)
            timings = dict(rollouts.seconds, frozen_logprobs=frozen_seconds, backward=backward_seconds)
            for key, value in timings.items():
                metrics[f"time/{key}_s"] = value
            metrics["time/step_s"] = seconds
            metrics["time/retrieval_share"] = timings.get("retrieval", 0.0) / max(seconds, 1e-9)
            logger.log(step, metrics)
        logger.advance()
        # 5. Checkpoint.
        if step % cfg.checkpoint.every_steps == 0 or step == cfg.max_steps:
            checkpoints.save(engine, step, trainer_state | {"data_order": order.state_dict()}, save_hf)
            last_saved = step
    if last_saved != step:
        checkpoints.save(engine, step, trainer_state | {"data_order": order.state_dict()}, save_hf)
    logger.close()
    return checkpoints.root / f"step-{step:08d}"


def _reward_metrics(rollouts: Rollouts, advantages: torch.Tensor) -> dict[str, float]:
    metrics = {
        "reward/total": float(rollouts.rewards.mean()),
        "reward/total_std": float(rollouts.rewards.std()) if rollouts.rewards.numel() > 1 else 0.0,
        "advantage/mean": float(advantages.mean()),
        "advantage/std": float(advantages.std()) if advantages.numel() > 1 else 0.0,
        "advantage/abs_max": float(advantages.abs().max()),
    }
    for name, values in rollouts.reward_components.items():
        metrics[f"reward/{name}"] = float(values.float().mean())
    return metrics
