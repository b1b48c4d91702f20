"""The GRPO objective as small pure functions: group advantages, the k3 KL estimator, the clipped
surrogate, the three loss normalisations, and the masks that keep environment tokens out of the loss.

Shapes: rewards are ``[num_prompts * group_size]`` with the completions of one prompt contiguous;
per-token tensors are ``[num_sequences, num_tokens]`` with a 0/1 ``mask`` of the same shape that is 1 only
on tokens the policy generated (prompt, padding and environment tokens such as a retrieved video block
are 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossType = Literal["grpo", "dr_grpo", "dapo"]


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_rewards: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """A_i = (r_i - mean_group) / (std_group + eps), or r_i - mean_group when ``scale_rewards`` is off
    (Dr. GRPO). The std is the sample std (Bessel-corrected) of the group. Returns the same shape."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [num_prompts * group_size], got shape {tuple(rewards.shape)}")
    if group_size < 2 or rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size} (need >= 2)")
    if not torch.isfinite(rewards).all():
        raise FloatingPointError(f"non-finite reward(s): {rewards.tolist()}")
    # float64: rewards are few, and exact centring keeps each group's advantages summing to zero.
    grouped = rewards.to(torch.float64).view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_rewards:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): exp(d) - d - 1 with d = log pi_ref - log pi.
    Non-negative, zero with zero gradient where the policy equals the reference."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps_low: float,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-style per-token loss -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A), rho = pi/pi_old.

    ``advantages`` is per sequence ``[num_sequences]``. Returns (per-token loss, per-token 0/1 float that is
    1 where the clipped branch is the active one, i.e. the token contributes no gradient)."""
    eps_high = clip_eps_low if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    is_clipped = ((ratio < 1.0 - clip_eps_low) & (adv < 0)) | ((ratio > 1.0 + eps_high) & (adv > 0))
    return loss, is_clipped.to(loss.dtype)


def aggregate_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: LossType,
    max_completion_tokens: int | None = None,
    total_tokens: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar.

    grpo     mean over sequences of each sequence's token mean (the paper's "grpo" loss).
    dr_grpo  sum over tokens / (num_sequences * max_completion_tokens): a constant normaliser, so long
             and short completions weigh per token alike (Dr. GRPO).
    dapo     sum over tokens / total number of generated tokens (token-level mean, DAPO). ``total_tokens``
             lets a trainer pass the token count of the whole step across micro-batches and ranks; by
             default the count of this micro-batch is used.
    """
    if per_token_loss.shape != mask.shape:
        raise ValueError(f"loss shape {tuple(per_token_loss.shape)} != mask shape {tuple(mask.shape)}")
    mask = mask.to(per_token_loss.dtype)
    masked = per_token_loss * mask
    if loss_type == "grpo":
        per_seq = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return per_seq.mean()
    if loss_type == "dr_grpo":
        if max_completion_tokens is None or max_completion_tokens <= 0:
            raise ValueError("dr_grpo needs max_completion_tokens > 0")
        return masked.sum() / (per_token_loss.shape[0] * max_completion_tokens)
    if loss_type == "dapo":
        denom = mask.sum() if total_tokens is None else torch.as_tensor(total_tokens, dtype=masked.dtype)
        return masked.sum() / torch.clamp(denom, min=1.0)
    raise ValueError(f"unknown loss_type {loss_type!r}; expected grpo, dr_grpo or dapo")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


@dataclass
class GRPOLossOutput:
    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    clip_fraction: torch.Tensor
    ratio_mean: torch.Tensor


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    clip_eps_low: float,
    clip_eps_high: float | None,
    loss_type: LossType,
    max_completion_tokens: int | None = None,
    total_tokens: float | None = None,
) -> GRPOLossOutput:
    """The full per-micro-batch objective: clipped surrogate + beta * k3 KL, aggregated per ``loss_type``.
    Diagnostics (KL, clip fraction, ratio) are token means over the mask, detached."""
    surrogate, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, clip_eps_low, clip_eps_high)
    per_token = surrogate
    if beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs reference log-probabilities")
        kl = k3_kl(logprobs, ref_logprobs)
        per_token = surrogate + beta * kl
    else:
        kl = torch.zeros_like(surrogate)
    loss = aggregate_loss(per_token, mask, loss_type, max_completion_tokens, total_tokens)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"GRPO loss is {loss.item()} (policy log-probs finite: {bool(torch.isfinite(logprobs).all())}, "
            f"advantages finite: {bool(torch.isfinite(advantages).all())})"
        )
    with torch.no_grad():
        return GRPOLossOutput(
            loss=loss,
            policy_loss=aggregate_loss(
                surrogate.detach(), mask, loss_type, max_completion_tokens, total_tokens
            ),
            kl=masked_mean(kl.detach(), mask),
            clip_fraction=masked_mean(clipped, mask),
            ratio_mean=masked_mean(torch.exp(logprobs.detach() - old_logprobs), mask),
        )


# ----------------------------------------------------------------------------------------------------------
# Log-probabilities and masks
# ----------------------------------------------------------------------------------------------------------


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(target_t) under softmax(logits_t / temperature), row by row so a large vocabulary never
    materialises a second [batch, tokens, vocab] tensor. ``logits`` [B, T, V], ``targets`` [B, T]."""
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree")
    rows = []
    for row_logits, row_targets in zip(logits, targets, strict=True):
        row = row_logits.float()
        if temperature != 1.0:
            row = row / temperature
        logp = torch.log_softmax(row, dim=-1)
        rows.append(logp.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1))
    return torch.stack(rows)


def mask_after_eos(completion_ids: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it (padding generated after EOS)."""
    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    for eos in eos_token_ids:
        is_eos |= completion_ids == eos
    # Number of EOS tokens strictly before each position; a token is kept while that count is zero.
    eos_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    return (eos_before == 0).to(torch.int64)


def segments_mask(segment_lengths: list[int], segment_is_policy: list[bool]) -> torch.Tensor:
    """0/1 mask over a multi-turn sequence made of segments: 1 on tokens the policy generated, 0 on
    environment segments (prompts, the retrieved video block, engine feedback)."""
    if len(segment_lengths) != len(segment_is_policy):
        raise ValueError("segment_lengths and segment_is_policy must have the same length")
    parts = [
        torch.full((n,), int(p), dtype=torch.int64)
        for n, p in zip(segment_lengths, segment_is_policy, strict=True)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
